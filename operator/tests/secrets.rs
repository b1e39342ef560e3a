//! The `ragpool-operator` binary never prints a secret from its environment in `--help`, and
//! documents its listener's limits there.

use std::process::{Command, Output};

const SECRET: &str = "SeCrEt-7f3a";

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ragpool-operator"))
        .args(args)
        .env_clear()
        .env("RAGPOOL_REDIS_URL", format!("redis://:{SECRET}@h:1"))
        .env("RAGPOOL_REDIS_PASSWORD", SECRET)
        .output()
        .expect("running ragpool-operator")
}

#[test]
fn help_hides_secrets_and_shows_the_listener_limits() {
    for args in [&["--help"][..], &["run", "--help"][..]] {
        let output = operator(args);
        let help = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?}: {help}");
        assert!(
            help.contains("--header-timeout-seconds"),
            "{args:?}: {help}"
        );
        assert!(help.contains("--body-timeout-seconds"), "{args:?}: {help}");
        assert!(help.contains("--max-connections"), "{args:?}: {help}");
        assert!(!help.contains(SECRET), "{args:?}: {help}");
    }
}
