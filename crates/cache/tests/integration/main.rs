//! Integration tests of switchyard-cache through its public API.

mod flights;
mod keys;
mod models;
mod redis;
mod tenants;
mod util;
