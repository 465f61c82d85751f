//! Cache benchmarks (work in progress).
fn main() {}
