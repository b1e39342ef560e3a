//! The one `ragpool` binary is every component: `ragpool api …` runs the API's own command
//! line, and the binary started under a component's name (a link, as in the image) is that
//! component.

use std::process::Command;

const COMPONENTS: [&str; 3] = ["api", "executor", "operator"];

fn version(program: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .arg("--version")
        .output()
        .expect("runs ragpool");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn subcommands_run_the_components_command_lines() {
    let ragpool = std::path::Path::new(env!("CARGO_BIN_EXE_ragpool"));
    for component in COMPONENTS {
        let line = version(ragpool, &[component]);
        assert_eq!(
            line,
            format!("ragpool-{component} {}", env!("CARGO_PKG_VERSION"))
        );
    }
    // The component's flags, not ragpool's: its help is passed through unread.
    let help = Command::new(ragpool)
        .args(["executor", "--help"])
        .output()
        .expect("runs ragpool");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--concurrency"), "{help}");
}

#[test]
fn a_link_named_after_a_component_is_that_component() {
    let dir = tempfile::tempdir().expect("temp dir");
    for component in COMPONENTS {
        let link = dir.path().join(format!("ragpool-{component}"));
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ragpool"), &link).expect("links");
        let line = version(&link, &[]);
        assert_eq!(
            line,
            format!("ragpool-{component} {}", env!("CARGO_PKG_VERSION"))
        );
    }
    // Any other name is ragpool itself.
    let other = dir.path().join("rp");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_ragpool"), &other).expect("links");
    assert_eq!(
        version(&other, &[]),
        format!("ragpool {}", env!("CARGO_PKG_VERSION"))
    );
}
