//! Fast mock upstream (work in progress).
fn main() {}
