//! The `ragpool-executor` binary never prints a secret from its environment: not in
//! `--help`, not in the error about a malformed Redis URL (or a password given in its place).

use std::process::Output;

use ragpool_queue::testing::{SECRET, printed, run_isolated};

fn executor(args: &[&str], env: &[(&str, String)]) -> Output {
    run_isolated(env!("CARGO_BIN_EXE_ragpool-executor"), args, env)
}

#[test]
fn help_hides_secrets_in_the_environment() {
    let url = format!("http://user:{SECRET}@rag:8000/v1");
    let output = executor(
        &["--help"],
        &[
            ("RAGPOOL_REDIS_URL", format!("redis://:{SECRET}@h:1")),
            ("RAGPOOL_OPENAI_API_KEY", SECRET.to_string()),
            ("RAGPOOL_OPENAI_BASE_URL", url.clone()),
            ("RAGPOOL_HTTP_URL", url.clone()),
            ("RAGPOOL_HTTP_ANALYZE_IMAGE_URL", url.clone()),
            ("RAGPOOL_HTTP_COMPLETE_ANSWER_URL", url.clone()),
            ("RAGPOOL_HTTP_QUERY_URL", url),
        ],
    );
    let help = printed(&output);
    assert!(output.status.success(), "{help}");
    assert!(help.contains("RAGPOOL_REDIS_URL"), "{help}");
    assert!(help.contains("--header-timeout-seconds"), "{help}");
    assert!(help.contains("--max-connections"), "{help}");
    assert!(!help.contains(SECRET), "{help}");
}

#[test]
fn a_malformed_redis_url_is_reported_without_its_password() {
    for url in [
        format!(":{SECRET}@h:1"),
        format!("user:{SECRET}@h:1"),
        // Only the password, where the URL belongs.
        format!("hunter2{SECRET}"),
        format!("redis://:{SECRET}@a:1,http://:{SECRET}@b:2"),
    ] {
        let output = executor(
            &["--metrics-listen", "127.0.0.1:0"],
            &[("RAGPOOL_REDIS_URL", url.clone())],
        );
        let out = printed(&output);
        assert!(!output.status.success(), "{url}: {out}");
        assert!(out.contains("invalid Redis URL"), "{url}: {out}");
        assert!(!out.contains(SECRET), "{url}: {out}");
    }
}

#[test]
fn a_bad_backend_url_is_named_by_its_setting_not_echoed() {
    for (backend, variable, flag) in [
        ("http", "RAGPOOL_HTTP_URL", "--http-url"),
        ("http", "RAGPOOL_HTTP_QUERY_URL", "--http-query-url"),
        ("openai", "RAGPOOL_OPENAI_BASE_URL", "--openai-base-url"),
    ] {
        for url in [
            format!("ftp://u:{SECRET}@host/x"),
            format!("http://u:{SECRET}@[bad"),
            format!("{SECRET}:u@host"),
            format!("u:{SECRET}"),
        ] {
            let mut env = vec![
                ("RAGPOOL_BACKEND", backend.to_string()),
                ("RAGPOOL_HTTP_URL", "http://127.0.0.1:1".to_string()),
                ("RAGPOOL_OPENAI_MODEL", "m".to_string()),
                ("RAGPOOL_REDIS_URL", "redis://127.0.0.1:1".to_string()),
            ];
            env.retain(|(name, _)| *name != variable);
            env.push((variable, url.clone()));
            let output = executor(&["--metrics-listen", "127.0.0.1:0"], &env);
            let out = printed(&output);
            assert!(!output.status.success(), "{variable}={url}: {out}");
            assert!(
                out.contains(flag) && out.contains(variable),
                "{variable}={url}: {out}"
            );
            assert!(!out.contains(SECRET), "{variable}={url}: {out}");
            assert!(!out.contains("host"), "{variable}={url}: {out}");
        }
    }
}
