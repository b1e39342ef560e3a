//! The client subcommands (`submit`, `status`, `stats`, `cancel`, `retry`): their flags, and
//! how each turns into one or two API calls whose JSON answer is printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use ragpool_queue::TaskKind;
use serde_json::Value;

use crate::client::{ApiClient, ClientError, Reply, task_has_ended};

/// Exit status when `--wait` passed before the task ended.
pub const EXIT_STILL_RUNNING: u8 = 3;
/// Exit status when the awaited task failed or was canceled.
pub const EXIT_TASK_FAILED: u8 = 4;

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the ragpool API.
    #[arg(
        long,
        env = "RAGPOOL_API_URL",
        default_value = "http://127.0.0.1:8080",
        hide_env_values = true
    )]
    pub api_url: String,

    /// API key, sent as `Authorization: Bearer <key>` (needed when the API has keys).
    #[arg(long, env = "RAGPOOL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl ApiArgs {
    pub fn client(&self) -> Result<ApiClient, ClientError> {
        ApiClient::new(&self.api_url, self.api_key.clone())
    }
}

/// Flags every `submit` form shares.
#[derive(Debug, Clone, Args)]
pub struct SubmitOptions {
    #[command(flatten)]
    pub api: ApiArgs,

    /// After submitting, wait up to this many seconds for the task to end and print it
    /// instead of the submission answer. Exit status 3 if it is still running then, 4 if it
    /// failed or was canceled.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,

    /// After submitting, print the answer's text as it is generated, until the task ends
    /// (or `--wait` seconds pass). Ends like `--wait`: exit status 3 if the task is still
    /// running then, 4 if it failed or was canceled; when no text came (a backend that does
    /// not stream), the task is printed as JSON instead.
    #[arg(long)]
    pub stream: bool,

    /// Makes a retried submission return the task of the first one.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `ragpool submit`: one task (a subcommand) or many (`--batch FILE`).
#[derive(Debug, Clone, Args)]
#[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct SubmitArgs {
    #[command(subcommand)]
    pub command: Option<SubmitCommand>,

    /// Submit the tasks of a JSON Lines file (`-` for stdin): one task per line, shaped as
    /// an item of `POST /api/async/batch` (`kind` plus that kind's fields, optionally
    /// `idempotency_key`). Sent in batches of at most the API's limit; prints one task id per
    /// line, in input order.
    #[arg(long, value_name = "FILE", required = true)]
    pub batch: Option<PathBuf>,

    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ragpool submit …`: what to submit.
#[derive(Debug, Clone, Subcommand)]
pub enum SubmitCommand {
    /// Analyse an image (PNG, JPEG, WebP or GIF): queue `image_analysis`.
    Image {
        /// The image file.
        file: PathBuf,
        /// What to look for in the image.
        #[arg(long)]
        prompt: Option<String>,
        #[command(flatten)]
        options: SubmitOptions,
    },
    /// Answer a question from the documents: queue `answer_generation`.
    Answer {
        /// The question.
        question: String,
        /// Extra context: text, or the id of a finished image-analysis task.
        #[arg(long, value_name = "TEXT|TASK_ID")]
        context: Option<String>,
        /// How many passages to retrieve.
        #[arg(long, value_name = "N")]
        top_k: Option<u32>,
        #[command(flatten)]
        options: SubmitOptions,
    },
    /// Run a full query (image analysis when an image is given, retrieval, answer): queue
    /// `full_query`.
    Query {
        /// The question.
        question: String,
        /// An image file to analyse first.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// How many passages to retrieve.
        #[arg(long, value_name = "N")]
        top_k: Option<u32>,
        #[command(flatten)]
        options: SubmitOptions,
    },
}

/// `ragpool status ID`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The task id.
    pub id: String,
    /// Wait up to this many seconds for the task to end. Exit status 3 if it is still
    /// running then, 4 if it failed or was canceled.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ragpool cancel ID` / `ragpool retry ID`.
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// The task id.
    pub id: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// `ragpool stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Why a client subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Client(#[from] ClientError),

    /// A file named on the command line could not be read.
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The command line is not usable as given.
    #[error("{0}")]
    Usage(String),

    /// A line of a `--batch` file is not a task; nothing was sent.
    #[error("{path} line {line}: {reason}; nothing was sent")]
    BadLine {
        path: String,
        line: usize,
        reason: String,
    },

    /// The API refused tasks of a `--batch` file. Batches sent before were queued.
    #[error("{0}")]
    BatchRefused(String),

    /// The submission answer had no task id to wait for.
    #[error("the API's answer has no task_id: {0}")]
    NoTaskId(String),

    /// Printing the answer failed (stdout closed).
    #[error("writing the answer: {0}")]
    Output(#[source] std::io::Error),
}

/// Runs `ragpool submit …`.
pub async fn submit(args: SubmitArgs) -> Result<ExitCode, CommandError> {
    match (args.command, args.batch) {
        (Some(command), None) => submit_one(command).await,
        (None, Some(file)) => submit_batch(&file, &args.api).await,
        // clap requires one of the two; a subcommand after --batch is refused here.
        _ => Err(CommandError::Usage(
            "give either --batch FILE or one of the subcommands image, answer, query".into(),
        )),
    }
}

/// Runs `ragpool submit image|answer|query …`.
async fn submit_one(command: SubmitCommand) -> Result<ExitCode, CommandError> {
    let (answer, options) = match command {
        SubmitCommand::Image {
            file,
            prompt,
            options,
        } => {
            let image = read_file("the image file", &file)?;
            let client = options.api.client()?;
            let answer = client
                .analyze_image(
                    &image,
                    prompt.as_deref(),
                    options.idempotency_key.as_deref(),
                )
                .await?;
            (answer, options)
        }
        SubmitCommand::Answer {
            question,
            context,
            top_k,
            options,
        } => {
            let client = options.api.client()?;
            let answer = client
                .complete_answer(
                    &question,
                    context.as_deref(),
                    top_k,
                    options.idempotency_key.as_deref(),
                )
                .await?;
            (answer, options)
        }
        SubmitCommand::Query {
            question,
            image,
            top_k,
            options,
        } => {
            let image = image.map(|path| read_file("--image", &path)).transpose()?;
            let client = options.api.client()?;
            let answer = client
                .query(
                    &question,
                    image.as_deref(),
                    top_k,
                    options.idempotency_key.as_deref(),
                )
                .await?;
            (answer, options)
        }
    };
    if options.stream {
        return stream_answer(&answer, &options).await;
    }
    let Some(wait) = options.wait else {
        print_json(&answer)?;
        return Ok(ExitCode::SUCCESS);
    };
    let id = submitted(&answer, &format!("waiting up to {wait}s"))?;
    let task = options.api.client()?.wait_for_task(id, wait).await?;
    report_task(&task)
}

/// The submitted task's id, read from the API's reply, after saying on stderr where it went
/// and what comes `next`.
fn submitted<'a>(answer: &'a Reply, next: &str) -> Result<&'a str, CommandError> {
    let id = answer
        .json
        .get("task_id")
        .and_then(Value::as_str)
        .ok_or_else(|| CommandError::NoTaskId(answer.json.to_string()))?;
    let queue = answer.json.get("queue").and_then(Value::as_str);
    eprintln!(
        "submitted task {id} to queue {}; {next}",
        queue.unwrap_or("?")
    );
    Ok(id)
}

/// Follows a submitted task with `--stream`: its answer text on stdout as it comes, then, if
/// no text came or it did not finish, the task as `--wait` prints it.
async fn stream_answer(answer: &Reply, options: &SubmitOptions) -> Result<ExitCode, CommandError> {
    let id = submitted(answer, "streaming its answer")?;
    let client = options.api.client()?;
    let deadline = options
        .wait
        .map(|w| tokio::time::Instant::now() + std::time::Duration::from_secs(w));
    let mut stdout = std::io::stdout();
    let followed = crate::stream::follow(&client, id, deadline, &mut stdout).await?;
    if followed.printed {
        println!();
    }
    let task = client.task(id, None).await?;
    let finished = task.json.get("status").and_then(Value::as_str) == Some("finished");
    if followed.printed && finished {
        return Ok(ExitCode::SUCCESS);
    }
    report_task(&task)
}

/// Runs `ragpool status ID [--wait N]`.
pub async fn status(args: StatusArgs) -> Result<ExitCode, CommandError> {
    let client = args.api.client()?;
    match args.wait {
        None => {
            let task = client.task(&args.id, None).await?;
            print_json(&task)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(wait) => {
            let task = client.wait_for_task(&args.id, wait).await?;
            report_task(&task)
        }
    }
}

/// Runs `ragpool stats`.
pub async fn stats(args: StatsArgs) -> Result<ExitCode, CommandError> {
    print_json(&args.api.client()?.stats().await?)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `ragpool cancel ID`.
pub async fn cancel(args: TaskArgs) -> Result<ExitCode, CommandError> {
    print_json(&args.api.client()?.cancel(&args.id).await?)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `ragpool retry ID`.
pub async fn retry(args: TaskArgs) -> Result<ExitCode, CommandError> {
    print_json(&args.api.client()?.retry(&args.id).await?)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints an awaited task; the exit status says whether it finished.
fn report_task(reply: &Reply) -> Result<ExitCode, CommandError> {
    print_json(reply)?;
    let task = &reply.json;
    let status = task.get("status").and_then(Value::as_str).unwrap_or("?");
    if !task_has_ended(task) {
        eprintln!("task is still {status}");
        return Ok(ExitCode::from(EXIT_STILL_RUNNING));
    }
    if status != "finished" {
        let reason = task
            .get("error")
            .map(|e| {
                format!(
                    ": {}: {}",
                    e.get("kind").and_then(Value::as_str).unwrap_or("?"),
                    e.get("message").and_then(Value::as_str).unwrap_or("")
                )
            })
            .unwrap_or_default();
        eprintln!("task {status}{reason}");
        return Ok(ExitCode::from(EXIT_TASK_FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `file` (`-`: stdin) as JSON Lines tasks, checks every line, then sends them in
/// batches of at most the API's limit and prints each task id as its batch is queued.
async fn submit_batch(file: &Path, api: &ApiArgs) -> Result<ExitCode, CommandError> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
            CommandError::File {
                what: "--batch",
                path: file.to_path_buf(),
                source,
            }
        })?;
        text
    } else {
        let bytes = read_file("--batch", file)?;
        String::from_utf8(bytes).map_err(|_| CommandError::File {
            what: "--batch",
            path: file.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
        })?
    };
    let name = if file == Path::new("-") {
        "stdin".to_string()
    } else {
        file.display().to_string()
    };
    let tasks = parse_batch(&text).map_err(|(line, reason)| CommandError::BadLine {
        path: name.clone(),
        line,
        reason,
    })?;
    let client = api.client()?;
    let limit = client
        .max_batch_tasks()
        .await?
        .unwrap_or(DEFAULT_BATCH_LIMIT)
        .max(1);
    let mut sent = 0;
    for chunk in tasks.chunks(limit) {
        let items: Vec<Value> = chunk.iter().map(|(_, task)| task.clone()).collect();
        let answer = match client.batch(&items).await {
            Ok(answer) => answer,
            Err(ClientError::InvalidBatch { message, items }) => {
                let lines: Vec<String> = items
                    .iter()
                    .filter_map(|(index, code, message)| {
                        chunk
                            .get(*index)
                            .map(|(line, _)| format!("{name} line {line}: {code}: {message}"))
                    })
                    .collect();
                let queued = if sent == 0 {
                    "nothing was queued".to_string()
                } else {
                    format!(
                        "the {sent} tasks before line {} were queued (their ids are printed)",
                        chunk[0].0
                    )
                };
                return Err(CommandError::BatchRefused(format!(
                    "{message}\n{}\n{queued}",
                    lines.join("\n")
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let ids: Vec<&str> = answer
            .json
            .get("tasks")
            .and_then(Value::as_array)
            .map(|tasks| {
                tasks
                    .iter()
                    .filter_map(|t| t.get("task_id").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() != chunk.len() {
            return Err(CommandError::NoTaskId(answer.json.to_string()));
        }
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for id in ids {
            writeln!(out, "{id}").map_err(CommandError::Output)?;
        }
        sent += chunk.len();
    }
    Ok(ExitCode::SUCCESS)
}

/// Used when the API's document does not state its batch limit (an older API).
const DEFAULT_BATCH_LIMIT: usize = 100;

/// The tasks of a JSON Lines text with their line numbers (from 1); blank lines are skipped.
/// A line that is not a JSON object with a known `kind` is an error naming it.
pub fn parse_batch(text: &str) -> Result<Vec<(usize, Value)>, (usize, String)> {
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let task: Value =
            serde_json::from_str(line).map_err(|e| (number, format!("not valid JSON: {e}")))?;
        let kind = match task.get("kind") {
            _ if !task.is_object() => return Err((number, "not a JSON object".into())),
            None => return Err((number, "no \"kind\"".into())),
            Some(k) => k.as_str().unwrap_or_default(),
        };
        if kind.parse::<TaskKind>().is_err() {
            let kinds: Vec<&str> = TaskKind::ALL.iter().map(|k| k.as_str()).collect();
            return Err((number, format!("kind must be one of {}", kinds.join(", "))));
        }
        tasks.push((number, task));
    }
    Ok(tasks)
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, CommandError> {
    std::fs::read(path).map_err(|source| CommandError::File {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn print_json(reply: &Reply) -> Result<(), CommandError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", reply.pretty()).map_err(CommandError::Output)
}
