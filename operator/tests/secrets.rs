//! The `ragpool-operator` binary never prints a secret from its environment in `--help`, and
//! documents its listener's limits there.

use std::process::Output;

use ragpool_queue::testing::{SECRET, printed, run_isolated};

fn operator(args: &[&str]) -> Output {
    let env = [
        ("RAGPOOL_REDIS_URL", format!("redis://:{SECRET}@h:1")),
        ("RAGPOOL_REDIS_PASSWORD", SECRET.to_string()),
    ];
    run_isolated(env!("CARGO_BIN_EXE_ragpool-operator"), args, &env)
}

#[test]
fn help_hides_secrets_and_shows_the_listener_limits() {
    for args in [&["--help"][..], &["run", "--help"][..]] {
        let output = operator(args);
        let help = printed(&output);
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
