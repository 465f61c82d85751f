//! Programs that embed Switchyard's crates. The programs are the point; this library is
//! empty. Each lives in `examples/examples/NAME.rs`, runs with
//! `cargo run -p switchyard-examples --example NAME`, and carries tests that
//! `cargo test` / `cargo nextest run` run (`test = true` in the manifest):
//!
//! - `custom_balancer`: `switchyard-strategy` and `switchyard-health` in a small TCP
//!   balancer of its own.
//! - `local_inference`: `switchyard-inference` as a library, streaming tokens to stdout.
//! - `custom_backend`: a toy model implementing `switchyard_core::Backend`, served by
//!   `switchyard-server`.
//! - `router_in_code`: a router assembled in code from a YAML string and a mock
//!   upstream, one request, graceful shutdown.
//!
//! `configs/` holds sample configuration files for the `switchyard` binary.
