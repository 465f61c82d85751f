//! The router end to end, in-process, over real sockets against mock upstreams: one test
//! binary (one link instead of eight), a module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

mod cache;
mod faults;
mod http1;
mod providers;
mod reload;
mod router;
mod security;
mod strategies;
mod util;
