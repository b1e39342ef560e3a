//! `docs/configuration.md` is generated from the binaries' own `--help` and the CRD's schema,
//! and this test fails when it is out of date. `scripts/configuration-reference.sh` (which
//! runs this test with `RAGPOOL_BLESS=1`) writes it anew.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The commands whose flags the reference lists, with a line on what each is.
const COMMANDS: [(&str, &str); 4] = [
    (
        "api",
        "`ragpool-api` (also `ragpool api`): the HTTP API and the dashboard.",
    ),
    (
        "executor",
        "`ragpool-executor` (also `ragpool executor`): the job loop in the worker pods.",
    ),
    (
        "operator",
        "`ragpool-operator` (also `ragpool operator`): scales `RagWorkerPool`s.",
    ),
    (
        "dev",
        "`ragpool dev`: the API and an executor in one process, for a laptop.",
    ),
];

/// Fields of the CRD that are Kubernetes' own types: one row each, not their whole schema.
const KUBERNETES_TYPES: [(&str, &str); 5] = [
    ("spec.executor.affinity", "Affinity"),
    ("spec.executor.env", "[]EnvVar"),
    ("spec.executor.imagePullSecrets", "[]LocalObjectReference"),
    ("spec.executor.resources", "ResourceRequirements"),
    ("spec.executor.tolerations", "[]Toleration"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// One flag as `--help` shows it.
#[derive(Debug, Default)]
struct Flag {
    name: String,
    env: String,
    default: String,
    values: String,
    help: String,
}

/// `ragpool COMMAND --help`, run with no `RAGPOOL_*` variables so that no value shows.
fn help(command: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ragpool"))
        .args([command, "--help"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("ragpool runs");
    assert!(out.status.success(), "ragpool {command} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The labels of the bracketed notes clap ends a flag's description with.
const NOTES: [&str; 3] = ["env", "default", "possible values"];

/// Takes the last `[label: …]` note off the end of `text`: its label and value.
fn take_note(text: &mut String) -> Option<(&'static str, String)> {
    let trimmed = text.trim_end();
    if !trimmed.ends_with(']') {
        return None;
    }
    let (open, label) = NOTES
        .iter()
        .filter_map(|l| trimmed.rfind(&format!("[{l}: ")).map(|at| (at, *l)))
        .max()?;
    let value = trimmed[open + label.len() + 3..trimmed.len() - 1].to_string();
    *text = trimmed[..open].trim_end().to_string();
    Some((label, value))
}

/// The flags of clap's long help: an option line (`  -x, --name <VALUE>`) followed by its
/// indented description, which ends in `[env: …]`, `[default: …]` and `[possible values: …]`.
fn parse_flags(help: &str) -> Vec<Flag> {
    let mut flags: Vec<Flag> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line == "Options:" {
            in_options = true;
            continue;
        }
        if !in_options || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if indent < 10 && text.starts_with('-') {
            let long = text
                .split([',', ' '])
                .find(|w| w.starts_with("--"))
                .unwrap_or(text);
            flags.push(Flag {
                name: long.to_string(),
                ..Flag::default()
            });
        } else if let Some(flag) = flags.last_mut() {
            if !flag.help.is_empty() {
                flag.help.push(' ');
            }
            flag.help.push_str(text);
        }
    }
    for flag in &mut flags {
        while let Some((label, value)) = take_note(&mut flag.help) {
            match label {
                "env" => flag.env = value.trim_end_matches('=').to_string(),
                "default" => flag.default = value,
                _ => flag.values = value,
            }
        }
    }
    flags.retain(|f| f.name != "--help" && f.name != "--version");
    flags
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

fn code(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!("`{}`", text.replace('`', ""))
    }
}

fn flags_section(out: &mut String) {
    for (command, what) in COMMANDS {
        let flags = parse_flags(&help(command));
        assert!(
            flags.len() > 3,
            "no flags read from `ragpool {command} --help`"
        );
        out.push_str(&format!("\n## `ragpool {command}`\n\n{what}\n\n"));
        out.push_str("| flag | environment | default | |\n|---|---|---|---|\n");
        for f in flags {
            let mut help = f.help.clone();
            if !f.values.is_empty() {
                help.push_str(&format!(" (one of: {})", f.values));
            }
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                f.name,
                code(&f.env),
                code(&f.default),
                cell(&help)
            ));
        }
    }
}

fn yaml_type(node: &serde_yaml::Value) -> String {
    let t = node
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("any")
        .to_string();
    if t == "array" {
        let inner = node.get("items").map(yaml_type).unwrap_or_default();
        format!("[]{inner}")
    } else if t == "object" && node.get("properties").is_none() {
        match node.get("additionalProperties").map(yaml_type) {
            Some(v) => format!("map[string]{v}"),
            None => "object".into(),
        }
    } else {
        t
    }
}

fn crd_rows(node: &serde_yaml::Value, path: &str, out: &mut String) {
    let Some(props) = node.get("properties").and_then(|p| p.as_mapping()) else {
        return;
    };
    for (name, child) in props {
        let Some(name) = name.as_str() else { continue };
        let here = format!("{path}.{name}");
        let kubernetes = KUBERNETES_TYPES.iter().find(|(p, _)| *p == here);
        let ty = match kubernetes {
            Some((_, t)) => format!("Kubernetes `{t}`"),
            None => yaml_type(child),
        };
        let default = child
            .get("default")
            .map(|d| serde_json::to_string(d).expect("a YAML value is JSON"))
            .unwrap_or_default();
        let description = child
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "| `{here}` | {ty} | {} | {} |\n",
            code(&default),
            cell(&description)
        ));
        if kubernetes.is_none() {
            crd_rows(child, &here, out);
            if let Some(items) = child.get("items") {
                crd_rows(items, &format!("{here}[]"), out);
            }
        }
    }
}

fn crd_section(out: &mut String) {
    let text = std::fs::read_to_string(root().join("crds/ragworkerpool.yaml")).expect("the CRD");
    let crd: serde_yaml::Value = serde_yaml::from_str(&text).expect("the CRD is YAML");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    out.push_str(
        "\n## `RagWorkerPool` (`ragpool.io/v1alpha1`)\n\nThe fields of a pool's `spec`, from \
         the CRD's schema (`crds/ragworkerpool.yaml`); [operator.md](operator.md) explains \
         them, `examples/pool-full.yaml` sets every one.\n\n",
    );
    out.push_str("| field | type | default | |\n|---|---|---|---|\n");
    crd_rows(&schema["properties"]["spec"], "spec", out);
}

fn render() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Every flag of the components and every field of a `RagWorkerPool`, generated from \
         the binaries' `--help` and the CRD's schema by `scripts/configuration-reference.sh` \
         (the test suite fails when this file is out of date). Each flag can also be set \
         through the environment variable beside it. What the settings mean together: \
         [api.md](api.md), [executor.md](executor.md), [operator.md](operator.md), \
         [operations.md](operations.md); the Helm chart's values: \
         [deploy.md](deploy.md#2-install) and `charts/ragpool/values.yaml`.\n",
    );
    flags_section(&mut out);
    crd_section(&mut out);
    out
}

#[test]
fn the_configuration_reference_is_current() {
    let path = root().join("docs/configuration.md");
    let fresh = render();
    if std::env::var_os("RAGPOOL_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("writing docs/configuration.md");
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == fresh,
        "docs/configuration.md is out of date: run scripts/configuration-reference.sh"
    );
}

#[test]
fn flags_are_read_from_clap_help() {
    let help = "Options:\n      --listen <LISTEN>\n          Address to listen on [env: \
                RAGPOOL_LISTEN=] [default: 127.0.0.1:8080]\n  -v, --verbose\n          More \
                [possible values: true, false]\n  -h, --help\n          Print help\n";
    let flags = parse_flags(help);
    assert_eq!(flags.len(), 2);
    assert_eq!(flags[0].name, "--listen");
    assert_eq!(flags[0].env, "RAGPOOL_LISTEN");
    assert_eq!(flags[0].default, "127.0.0.1:8080");
    assert_eq!(flags[0].help, "Address to listen on");
    assert_eq!(flags[1].name, "--verbose");
    assert_eq!(flags[1].values, "true, false");
}
