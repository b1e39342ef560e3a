//! `ragpool-api`: see [`ragpool_api::cli`].

fn main() -> std::process::ExitCode {
    ragpool_api::cli::main(std::env::args_os())
}
