//! Integration tests of switchyard-backends' provider adapters and translation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unreachable_pub)]

mod anthropic;
mod fixtures;
mod fuzz;
mod gemini;
mod messages;
mod properties;
mod util;
