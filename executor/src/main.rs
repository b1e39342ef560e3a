//! `ragpool-executor`: see [`ragpool_executor::cli`].

fn main() -> std::process::ExitCode {
    ragpool_executor::cli::main(std::env::args_os())
}
