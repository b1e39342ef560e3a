//! `ragpool`: see the library for the subcommands.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ragpool_cli::run(ragpool_cli::Cli::parse())
}
