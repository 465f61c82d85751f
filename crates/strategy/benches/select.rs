//! Selection benchmarks (work in progress).
#![allow(missing_docs)]
fn main() {}
