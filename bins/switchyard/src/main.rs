//! `switchyard`: the command line. Parses arguments, loads the configuration (exit 64
//! when it is invalid), sets up logging, the Prometheus exporter and TLS, and hands over
//! to `switchyard_server::run_with`. Nothing else lives here.

// A command line prints its results and its errors: that is its interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use switchyard_config::{BackendType, Config, ConfigSource, LogFormat, LoggingConfig, Overrides};
use switchyard_server::{ConfigLoader, MetricsRender, Options};

mod alloc;

/// mimalloc instead of glibc malloc: per-request allocations on several threads made
/// glibc's arena locks and consolidation visible in profiles (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

/// Transparent huge pages on or off for this process. A router's heap is small and
/// scattered: each 2 MiB region the allocator touches as a huge page costs 2 MiB of
/// RSS (idle RSS 19 MB instead of 12 MB). mimalloc is built with `no_thp`, so it never
/// asks for huge pages itself (THP `madvise` mode, Debian's default); this flag covers
/// THP `always` systems, and is turned back on when a local model is configured: the
/// engine asks for huge pages for its weight arena (`madvise`), and this flag would
/// refuse them (decode at 1 thread 88-120 -> 114-160 tokens/s with them, docs/inference.md).
fn huge_pages(on: bool) {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(!on);
    #[cfg(not(target_os = "linux"))]
    let _ = on;
}

/// Exit status for an unusable configuration (BSD `EX_USAGE`... `EX_DATAERR` family).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "An OpenAI-compatible LLM router with an embedded CPU model"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the router (the default command).
    Serve(ServeArgs),
    /// Check, print or generate configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Configuration file (default: ./switchyard.yaml, then the user config dir).
    #[arg(long, short, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address, e.g. 0.0.0.0:8080 (overrides server.bind_address).
    #[arg(long)]
    bind: Option<String>,
    /// GGUF model for the embedded backend (overrides inference.model_path).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Log level or filter, e.g. debug or switchyard_server=debug (overrides logging.level).
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; exit 0 if valid, 64 with every problem otherwise.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the effective configuration (all layers applied, secrets masked).
    Print(ServeArgs),
    /// Print a commented starter configuration.
    Generate,
}

fn main() -> ExitCode {
    huge_pages(false);
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(&args),
        Command::Config(ConfigCommand::Check { file }) => match Config::check_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}: invalid configuration\n{error}", file.display());
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Config(ConfigCommand::Print(args)) => match load(&args) {
            Ok((config, _)) => {
                print!("{}", config.to_masked_yaml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Config(ConfigCommand::Generate) => {
            print!("{}", switchyard_config::starter_config());
            ExitCode::SUCCESS
        }
    }
}

fn overrides(args: &ServeArgs) -> Overrides {
    Overrides {
        config_path: args.config.clone(),
        bind_address: args.bind.clone(),
        model_path: args.model.clone(),
        log_level: args.log_level.clone(),
    }
}

fn load(args: &ServeArgs) -> Result<(Config, ConfigSource), ExitCode> {
    match Config::load(&overrides(args)) {
        Ok(loaded) => Ok(loaded),
        Err(error) => {
            eprintln!("invalid configuration\n{error}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let (config, source) = match load(args) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    init_tracing(&config.logging);
    huge_pages(config.backends.iter().any(|b| b.kind == BackendType::Local));
    let metrics = if config.metrics.enabled { install_metrics() } else { None };
    let options =
        Options { reload: Some(ConfigLoader::from_overrides(overrides(args), &source)), metrics };
    // One process-wide TLS provider; the libraries also pass theirs explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One worker: a current-thread runtime, so a request never crosses threads (no
    // work-stealing, no cross-thread wake-ups); inference has its own threads anyway.
    let mut runtime = if config.server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all();
    if config.server.workers > 1 {
        runtime.worker_threads(config.server.workers);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(switchyard_server::run_with(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "switchyard stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Install the Prometheus recorder (histograms with buckets, so dashboards can take
/// quantiles across instances) and return what `/metrics` renders with.
fn install_metrics() -> Option<MetricsRender> {
    const SECONDS: &[f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ];
    const RATES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("tokens_per_second".into()), RATES));
    let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => handle,
        Err(error) => {
            tracing::warn!(%error, "cannot install the metrics exporter; /metrics is off");
            return None;
        }
    };
    switchyard_server::describe_metrics();
    // Histograms are drained into their buckets by upkeep: do it between scrapes too.
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            upkeep.run_upkeep();
        }
    });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start metrics upkeep; it runs at each scrape only");
    }
    Some(Arc::new(move || {
        handle.run_upkeep();
        handle.render()
    }))
}

fn init_tracing(logging: &LoggingConfig) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over the configured level, for debugging sessions.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a journal or a log file gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match logging.format {
        LogFormat::Json => builder.json().init(),
        _ => builder.init(),
    }
}
