//! `ragpool`: see the library for the subcommands. Started as `ragpool-api`,
//! `ragpool-executor` or `ragpool-operator` (links to it), it is that component.

fn main() -> std::process::ExitCode {
    ragpool_cli::main(std::env::args_os().collect())
}
