//! The server components inside the one `ragpool` binary: `ragpool api ARGS` runs the API's
//! own command line (and `executor`, `operator` theirs), and so does the binary when it is
//! started under the component's name (`ragpool-api`, a link to `ragpool` in the image), so
//! manifests that name the component's binary keep working.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

/// A server component whose command line lives in its own crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Api,
    Executor,
    Operator,
}

impl Component {
    pub const ALL: [Component; 3] = [Component::Api, Component::Executor, Component::Operator];

    /// The component's own binary name, which the image links to `ragpool`.
    pub fn program(self) -> &'static str {
        match self {
            Component::Api => "ragpool-api",
            Component::Executor => "ragpool-executor",
            Component::Operator => "ragpool-operator",
        }
    }

    /// The component a binary started as `argv0` is, by the file name of `argv0`.
    pub fn from_program(argv0: &OsStr) -> Option<Component> {
        let name = Path::new(argv0).file_name()?;
        Self::ALL.into_iter().find(|c| name == c.program())
    }

    /// Runs the component's command line `args` (the program name first).
    pub fn main(self, args: Vec<OsString>) -> ExitCode {
        match self {
            Component::Api => ragpool_api::cli::main(args),
            Component::Executor => ragpool_executor::cli::main(args),
            Component::Operator => ragpool_operator::cli::main(args),
        }
    }
}

/// The arguments after `ragpool <component>`, handed to the component unread (`--help`
/// included, so it shows the component's own flags).
#[derive(Debug, Args)]
#[command(disable_help_flag = true, disable_version_flag = true)]
pub struct ComponentArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

impl ComponentArgs {
    /// The component's command line, with its binary's name as the program name.
    pub fn command_line(self, component: Component) -> Vec<OsString> {
        std::iter::once(OsString::from(component.program()))
            .chain(self.args)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_found_by_their_binary_name_only() {
        let found = |p: &str| Component::from_program(OsStr::new(p));
        assert_eq!(
            found("/usr/local/bin/ragpool-operator"),
            Some(Component::Operator)
        );
        assert_eq!(found("ragpool-operator"), Some(Component::Operator));
        assert_eq!(found("./ragpool-api"), Some(Component::Api));
        assert_eq!(found("ragpool-executor"), Some(Component::Executor));
        assert_eq!(found("/usr/local/bin/ragpool"), None);
        assert_eq!(found("ragpool-operator-old"), None);
    }
}
