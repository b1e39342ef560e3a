//! The `ragpool` binary never prints a secret from its environment: not in `--help` of any
//! command, not in the error about an API it cannot reach.

use std::process::Output;

use ragpool_queue::testing::{SECRET, printed, run_isolated};

fn ragpool(args: &[&str], api_url: &str) -> Output {
    let env = [
        ("RAGPOOL_REDIS_URL", format!("redis://:{SECRET}@h:1")),
        ("RAGPOOL_API_KEY", SECRET.to_string()),
        ("RAGPOOL_API_URL", api_url.to_string()),
    ];
    run_isolated(env!("CARGO_BIN_EXE_ragpool"), args, &env)
}

#[test]
fn help_hides_secrets_in_the_environment() {
    let api_url = format!("http://user:{SECRET}@127.0.0.1:1");
    for args in [
        &["--help"][..],
        &["dev", "--help"][..],
        &["status", "--help"][..],
        &["submit", "query", "--help"][..],
        &["stats", "--help"][..],
    ] {
        let output = ragpool(args, &api_url);
        let help = printed(&output);
        assert!(output.status.success(), "{args:?}: {help}");
        assert!(!help.contains(SECRET), "{args:?}: {help}");
    }
}

#[test]
fn errors_name_the_api_without_its_password() {
    // Port 1 on loopback: nothing listens, so the request fails to connect.
    for api_url in [
        format!("http://user:{SECRET}@127.0.0.1:1"),
        format!("http://:{SECRET}@127.0.0.1:1/"),
        format!("ftp://user:{SECRET}@127.0.0.1:1"),
    ] {
        let output = ragpool(&["stats"], &api_url);
        let out = printed(&output);
        assert!(!output.status.success(), "{api_url}: {out}");
        assert!(out.contains("127.0.0.1:1"), "{api_url}: {out}");
        assert!(!out.contains(SECRET), "{api_url}: {out}");
    }
}
