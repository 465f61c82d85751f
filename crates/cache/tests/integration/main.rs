//! Integration tests of switchyard-cache through its public API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    reason = "test helpers panic on set-up failures; the redis skip notice goes to stderr"
)]

mod flights;
mod keys;
mod models;
mod redis;
mod tenants;
mod util;
