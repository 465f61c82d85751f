//! The Switchyard router: the composition of every other Switchyard crate into an
//! OpenAI-compatible HTTP server.
//!
//! This crate owns the request pipeline (read the body once, read only the routing
//! fields, resolve the model, try candidates, relay the answer without buffering), the
//! HTTP surface, graceful shutdown, and the single place where error codes become HTTP
//! statuses and OpenAI-style JSON errors. It owns no protocol adapter, strategy,
//! health logic or cache of its own: those live in their crates and are joined here.
//!
//! The binary is a thin wrapper; integration tests and programs that embed the router
//! use this crate directly.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use switchyard_backends::{ClientFactory, OpenAiBackend, OpenAiSettings};
//! use switchyard_server::{BackendSpec, RouterSpec, Server, ServerSettings, shutdown_signal};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let factory = ClientFactory::default();
//! let vllm = OpenAiBackend::new(
//!     &OpenAiSettings { name: "vllm".into(), url: "http://127.0.0.1:8000".into(), ..Default::default() },
//!     &factory,
//! )?;
//! let spec = RouterSpec {
//!     backends: vec![BackendSpec::new(Arc::new(vllm), vec!["llama-3.1-8b".into()])],
//!     ..RouterSpec::default()
//! };
//! let server = Server::bind(ServerSettings::default(), spec).await?;
//! server.serve(shutdown_signal()).await?;
//! # Ok(())
//! # }
//! ```

mod admin;
mod attempts;
mod auth;
mod body;
mod conn;
mod convert;
mod error;
mod gate;
mod messages;
pub mod metrics;
mod observe;
mod proxy;
mod ratelimit;
mod reload;
mod routes;
mod server;
mod service;
mod simple;
mod state;
mod tls;

pub use auth::AuthSettings;
pub use convert::{client_settings, router_spec, server_settings};
pub use error::{Error, Result};
pub use metrics::{MetricsRender, describe as describe_metrics};
pub use reload::ConfigLoader;
pub use routes::{BackendSpec, RouterSpec};
pub use server::{Options, Server, run, run_with, shutdown_signal};
pub use state::ServerSettings;
