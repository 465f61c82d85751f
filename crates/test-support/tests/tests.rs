//! The mock upstream, driven by a real hyper client over real sockets.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failures")]

mod suite;
mod util;
