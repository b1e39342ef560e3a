//! `ragpool`: the command-line entry point.
fn main() {
    println!("ragpool {}", env!("CARGO_PKG_VERSION"));
}
