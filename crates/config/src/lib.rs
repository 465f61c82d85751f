//! Switchyard's configuration (work in progress: schema first).

mod cidr;
mod error;
mod schema;
mod secret;
mod suggest;
mod units;

pub use cidr::Cidr;
pub use error::{ConfigError, Issue, Result};
pub use schema::*;
pub use secret::Secret;
pub use units::{format_byte_size, format_duration, parse_byte_size, parse_duration};
