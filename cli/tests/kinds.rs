//! Every place outside the code that lists the task kinds or their queues (the chart, the
//! examples, the CRD, the docs), and the places in the code that cannot be derived from the
//! kind table (routes, `ragpool submit` subcommands, per-kind flags), checked against the
//! table (`TaskKind::descriptor`). A failure names the file and each missing or extra kind.

use std::collections::BTreeSet;
use std::path::Path;

use clap::{Args, CommandFactory};
use ragpool_queue::TaskKind;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&read(path)).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn queues() -> Vec<String> {
    TaskKind::ALL
        .iter()
        .map(|k| k.queue().to_string())
        .collect()
}

fn column(of: fn(TaskKind) -> String) -> Vec<String> {
    TaskKind::ALL.iter().map(|&k| of(k)).collect()
}

/// The text between backticks on `line`.
fn backticked(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Collects what disagrees with the table, to report every problem at once.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// `listed` (what `file` shows as `what`) against `want`: missing and extra entries.
    fn same_set(&mut self, file: &str, what: &str, listed: &[String], want: &[String]) {
        let listed: BTreeSet<&String> = listed.iter().collect();
        let want: BTreeSet<&String> = want.iter().collect();
        for missing in want.difference(&listed) {
            self.0.push(format!("{file}: {what}: missing {missing}"));
        }
        for extra in listed.difference(&want) {
            self.0.push(format!(
                "{file}: {what}: extra {extra} (not in the kind table)"
            ));
        }
    }

    /// As [`Problems::same_set`], and in the same order.
    fn same_list(&mut self, file: &str, what: &str, listed: &[String], want: &[String]) {
        let before = self.0.len();
        self.same_set(file, what, listed, want);
        if self.0.len() == before && listed != want {
            self.0.push(format!(
                "{file}: {what}: order {listed:?}, the table's is {want:?}"
            ));
        }
    }

    /// Each entry of `listed` is in `want` (a file that may show only some kinds).
    fn subset(&mut self, file: &str, what: &str, listed: &[String], want: &[String]) {
        for extra in listed.iter().filter(|l| !want.contains(l)) {
            self.0.push(format!(
                "{file}: {what}: extra {extra} (not in the kind table)"
            ));
        }
    }

    fn check(&mut self, file: &str, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{file}: {}", what()));
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A pool's `queues` (`names`, and `weights` when any are given) against the table: names known,
/// a weight for each name when weights are given, each the default; with `all`, every queue
/// in the table's order.
fn check_pool_queues(p: &mut Problems, file: &str, queues_value: &Value, all: bool) {
    let names = strings(&queues_value["names"]);
    if all {
        p.same_list(file, "queues.names", &names, &queues());
    } else {
        p.subset(file, "queues.names", &names, &queues());
    }
    // `weights: {}` (the chart's default) gives none: every queue takes its default weight.
    if let Some(weights) = queues_value["weights"]
        .as_mapping()
        .filter(|w| !w.is_empty())
    {
        let listed: Vec<String> = weights
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        // Weights given for some queues must be given for all the pool names (a queue
        // without one would fall back silently); with `all`, that is every kind's queue.
        p.same_set(file, "queues.weights", &listed, &names);
        for kind in TaskKind::ALL {
            let d = kind.descriptor();
            if let Some(w) = weights.get(d.queue).and_then(Value::as_u64) {
                p.check(file, w == u64::from(d.weight), || {
                    format!(
                        "queues.weights.{}: {w}, the default is {}",
                        d.queue, d.weight
                    )
                });
            }
        }
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            let rel = path.strip_prefix(root()).unwrap();
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn chart_and_examples_list_the_kinds_queues() {
    let mut p = Problems::default();
    let file = "charts/ragpool/values.yaml";
    check_pool_queues(&mut p, file, &yaml(file)["defaultPool"]["queues"], true);

    let mut files = Vec::new();
    yaml_files(&root().join("charts/ragpool/ci"), &mut files);
    for file in &files {
        let queues = &yaml(file)["defaultPool"]["queues"];
        if !queues.is_null() {
            check_pool_queues(&mut p, file, queues, false);
        }
    }

    let mut files = Vec::new();
    yaml_files(&root().join("examples"), &mut files);
    files.sort();
    for file in &files {
        let doc = yaml(file);
        if doc["kind"].as_str() == Some("RagWorkerPool") {
            // The example of every setting shows every queue.
            let all = file.ends_with("pool-full.yaml");
            check_pool_queues(&mut p, file, &doc["spec"]["queues"], all);
        }
    }
    assert!(p.0.is_empty(), "\n{}", p.0.join("\n"));
}

#[test]
fn crd_descriptions_name_the_kinds_queues_and_backend_paths() {
    let mut p = Problems::default();
    for file in [
        "crds/ragworkerpool.yaml",
        "charts/ragpool/crds/ragworkerpool.yaml",
    ] {
        let crd = yaml(file);
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let names = spec["queues"]["properties"]["names"]["description"]
            .as_str()
            .unwrap_or_default();
        let listed: Vec<String> = backticked(names).into_iter().map(str::to_owned).collect();
        p.same_list(file, "spec.queues.names description", &listed, &queues());

        let backend = &spec["executor"]["properties"]["backend"]["properties"];
        let url = backend["http"]["properties"]["url"]["description"]
            .as_str()
            .unwrap_or_default();
        let listed: Vec<String> = backticked(url)
            .into_iter()
            .filter_map(|t| t.strip_prefix("{url}/"))
            .map(str::to_owned)
            .collect();
        let want = column(|k| k.descriptor().backend_path.to_string());
        p.same_set(
            file,
            "spec.executor.backend.http.url description",
            &listed,
            &want,
        );
    }
    assert!(p.0.is_empty(), "\n{}", p.0.join("\n"));
}

/// The rows of the Markdown tables of `text`.
fn table_rows(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| l.starts_with('|'))
}

/// The paths `POST /api/async/<path>` named first in a table row, less the batch endpoint
/// and the endpoints of one task (`task/{task_id}/…`).
fn submission_rows(text: &str) -> Vec<(String, &str)> {
    table_rows(text)
        .filter_map(|row| {
            let first = *backticked(row).first()?;
            let path = first.strip_prefix("POST /api/async/")?;
            (!path.contains('/') && path != "batch").then(|| (path.to_string(), row))
        })
        .collect()
}

#[test]
fn docs_list_the_kinds() {
    let mut p = Problems::default();
    let api_paths = column(|k| k.descriptor().api_path.to_string());

    // The table where the code's names meet the wire's.
    let file = "docs/queue.md";
    let text = read(file);
    let mut listed = Vec::new();
    for row in table_rows(&text).filter(|r| r.contains("`TaskKind::")) {
        let ticks = backticked(row);
        let Some(name) = row
            .split_once("kind `")
            .and_then(|(_, rest)| rest.split('`').next())
        else {
            continue;
        };
        listed.push(name.to_string());
        let Ok(kind) = name.parse::<TaskKind>() else {
            continue;
        };
        let d = kind.descriptor();
        p.check(file, row.contains(&format!("queue `{}`", d.queue)), || {
            format!("the row of kind {name} does not show queue `{}`", d.queue)
        });
        let post = format!("POST /api/async/{}", d.api_path);
        p.check(file, ticks.contains(&post.as_str()), || {
            format!("the row of kind {name} does not show `{post}`")
        });
        p.check(
            file,
            ticks
                .iter()
                .any(|t| t.ends_with(&format!("{{base}}/{}", d.backend_path))),
            || {
                format!(
                    "the row of kind {name} does not show `{{base}}/{}`",
                    d.backend_path
                )
            },
        );
    }
    p.same_list(
        file,
        "the kinds table",
        &listed,
        &column(|k| k.as_str().to_string()),
    );
    let timeout_row = table_rows(&text)
        .find(|r| r.starts_with("| attempt timeout, per kind"))
        .unwrap_or_default();
    let listed: Vec<String> = backticked(timeout_row)
        .into_iter()
        .filter_map(|t| t.strip_prefix("--")?.strip_suffix("-timeout-seconds"))
        .map(|q| q.replace('-', "_"))
        .collect();
    p.same_list(file, "the per-kind timeout flags", &listed, &queues());

    // The API's endpoint table and its per-kind timeout flags.
    let file = "docs/api.md";
    let text = read(file);
    let rows = submission_rows(&text);
    let listed: Vec<String> = rows.iter().map(|(path, _)| path.clone()).collect();
    p.same_list(file, "the submission endpoints", &listed, &api_paths);
    for (path, row) in &rows {
        if let Some(kind) = TaskKind::ALL
            .iter()
            .find(|k| k.descriptor().api_path == path.as_str())
        {
            p.check(file, row.contains(&format!("(`{}`)", kind.queue())), || {
                format!(
                    "the row of POST /api/async/{path} does not name queue {}",
                    kind.queue()
                )
            });
        }
    }
    let mut listed = Vec::new();
    for row in table_rows(&text).filter(|r| r.contains("time limit of one attempt")) {
        let Some(queue) = backticked(row)
            .first()
            .and_then(|t| t.strip_prefix("--")?.strip_suffix("-timeout-seconds"))
            .map(|q| q.replace('-', "_"))
        else {
            continue;
        };
        if let Some(kind) = TaskKind::ALL.iter().find(|k| k.queue() == queue) {
            let default = row.split('|').nth(3).unwrap_or_default().trim();
            let want = kind.descriptor().timeout_secs.to_string();
            p.check(file, default == want, || {
                format!(
                    "the timeout flag of {queue} shows default {default}, the table's is {want}"
                )
            });
        }
        listed.push(queue);
    }
    p.same_list(file, "the per-kind timeout flags", &listed, &queues());

    // The executor's default queue list and per-kind URLs of the http backend.
    let file = "docs/executor.md";
    let text = read(file);
    check_queues_row(&mut p, file, &text);
    let mut listed = Vec::new();
    for row in table_rows(&text) {
        let ticks = backticked(row);
        let Some(path) = ticks
            .first()
            .and_then(|t| t.strip_prefix("--http-")?.strip_suffix("-url"))
        else {
            continue;
        };
        p.check(
            file,
            ticks.contains(&format!("{{base}}/{path}").as_str()),
            || format!("the row of --http-{path}-url does not show `{{base}}/{path}`"),
        );
        listed.push(path.to_string());
    }
    let want = column(|k| k.descriptor().backend_path.to_string());
    p.same_list(file, "the http backend's per-kind URLs", &listed, &want);

    // The README lists the submission endpoints; its flags live in docs/configuration.md,
    // generated from the binaries.
    let file = "README.md";
    let text = read(file);
    let listed: Vec<String> = submission_rows(&text)
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    p.same_list(file, "the submission endpoints", &listed, &api_paths);

    assert!(p.0.is_empty(), "\n{}", p.0.join("\n"));
}

/// The `--queues` row shows the default list.
fn check_queues_row(p: &mut Problems, file: &str, text: &str) {
    let row = table_rows(text).find(|r| r.starts_with("| `--queues`"));
    let default = row.and_then(|r| {
        backticked(r)
            .into_iter()
            .find(|t| t.contains(',') || queues().iter().any(|q| q == t))
    });
    let listed: Vec<String> = default
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    p.same_list(file, "the --queues default", &listed, &queues());
}

#[test]
fn every_kind_has_its_route_subcommand_and_flags() {
    let mut p = Problems::default();

    let doc = ragpool_api::openapi();
    let listed: Vec<String> = doc
        .paths
        .paths
        .keys()
        .filter_map(|path| path.strip_prefix("/api/async/"))
        .filter(|rest| !rest.contains('/') && *rest != "batch")
        .map(str::to_owned)
        .collect();
    let want = column(|k| k.descriptor().api_path.to_string());
    p.same_set("api/src/routes", "submission routes", &listed, &want);

    let cli = ragpool_cli::Cli::command();
    let submit = cli.find_subcommand("submit").expect("ragpool submit");
    let listed: Vec<String> = submit
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let want = column(|k| k.descriptor().cli_word.to_string());
    p.same_set(
        "cli/src/commands.rs",
        "ragpool submit subcommands",
        &listed,
        &want,
    );

    // The API's per-kind timeout flags: `--<queue>-timeout-seconds`, the table's default.
    let api = ragpool_api::ApiConfig::augment_args(clap::Command::new("api"));
    for kind in TaskKind::ALL {
        let d = kind.descriptor();
        let flag = format!("{}-timeout-seconds", d.queue.replace('_', "-"));
        let arg = api.get_arguments().find(|a| a.get_long() == Some(&flag));
        let default: Vec<String> = arg
            .map(|a| {
                a.get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        p.check(
            "api/src/config.rs",
            default == [d.timeout_secs.to_string()],
            || {
                format!(
                    "--{flag}: default {default:?}, the table's is {}",
                    d.timeout_secs
                )
            },
        );
    }
    let defaults = ragpool_api::QueueFlags::default().queue_configs().unwrap();
    p.check(
        "api/src/config.rs",
        defaults == ragpool_queue::default_queues(),
        || "QueueFlags::default() does not give the default queues".into(),
    );

    // The executor's http backend: an override flag per kind, `--http-<backend path>-url`.
    let executor =
        ragpool_executor::settings::ExecutorSettings::augment_args(clap::Command::new("executor"));
    let listed: Vec<String> = executor
        .get_arguments()
        .filter_map(|a| a.get_long()?.strip_prefix("http-")?.strip_suffix("-url"))
        .map(str::to_owned)
        .collect();
    let want = column(|k| k.descriptor().backend_path.to_string());
    p.same_set(
        "executor/src/settings.rs",
        "--http-<path>-url flags",
        &listed,
        &want,
    );

    assert!(p.0.is_empty(), "\n{}", p.0.join("\n"));
}
