//! The `ragpool-api` binary never prints a secret from its environment: not in `--help`, not
//! in the error about a malformed Redis URL (or a password given in its place).

use std::process::Output;

use ragpool_queue::testing::{SECRET, printed, run_isolated};

fn api(args: &[&str], env: &[(&str, String)]) -> Output {
    run_isolated(env!("CARGO_BIN_EXE_ragpool-api"), args, env)
}

#[test]
fn help_hides_secrets_in_the_environment() {
    let output = api(
        &["--help"],
        &[
            ("RAGPOOL_REDIS_URL", format!("redis://:{SECRET}@h:1")),
            ("RAGPOOL_API_KEYS", format!("ops:{SECRET}:admin")),
        ],
    );
    let help = printed(&output);
    assert!(output.status.success(), "{help}");
    assert!(help.contains("RAGPOOL_REDIS_URL"), "{help}");
    assert!(help.contains("--header-timeout-seconds"), "{help}");
    assert!(!help.contains(SECRET), "{help}");
}

#[test]
fn a_malformed_redis_url_is_reported_without_its_password() {
    for url in [
        format!(":{SECRET}@h:1"),
        format!("user:{SECRET}@h:1"),
        // Only the password, where the URL belongs.
        format!("hunter2{SECRET}"),
        format!("http://:{SECRET}@h:1"),
    ] {
        let output = api(
            &["--listen", "127.0.0.1:0"],
            &[("RAGPOOL_REDIS_URL", url.clone())],
        );
        let out = printed(&output);
        assert!(!output.status.success(), "{url}: {out}");
        assert!(out.contains("invalid Redis URL"), "{url}: {out}");
        assert!(!out.contains(SECRET), "{url}: {out}");
    }
}
