//! Hot-path benchmarks.
fn main() {}
