//! `ragpool-operator`: see [`ragpool_operator::cli`].

fn main() -> std::process::ExitCode {
    ragpool_operator::cli::main(std::env::args_os())
}
