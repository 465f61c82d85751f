//! `switchyard`: the command line. Parses arguments, loads the configuration (exit 64
//! when it is invalid), sets up logging and TLS, and hands over to
//! `switchyard_server::run`. Nothing else lives here.

// A command line prints its results and its errors: that is its interface.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchyard_config::{BackendType, Config, LogFormat, LoggingConfig, Overrides};

/// mimalloc instead of glibc malloc: per-request allocations on several threads made
/// glibc's arena locks and consolidation visible in profiles (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages on or off for this process. A router's heap is small and
/// scattered: each 2 MiB region the allocator touches as a huge page costs 2 MiB of
/// RSS (idle RSS 19 MB instead of 12 MB). mimalloc is built with `no_thp`, so it never
/// asks for huge pages itself (THP `madvise` mode, Debian's default); this flag covers
/// THP `always` systems, and is turned back on when a local model is configured, since
/// large weight matrices do gain from huge pages there.
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
            Ok(config) => {
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

fn load(args: &ServeArgs) -> Result<Config, ExitCode> {
    let overrides = Overrides {
        config_path: args.config.clone(),
        bind_address: args.bind.clone(),
        model_path: args.model.clone(),
        log_level: args.log_level.clone(),
    };
    match Config::load(&overrides) {
        Ok((config, _source)) => Ok(config),
        Err(error) => {
            eprintln!("invalid configuration\n{error}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

fn serve(args: &ServeArgs) -> ExitCode {
    let config = match load(args) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_tracing(&config.logging);
    huge_pages(config.backends.iter().any(|b| b.kind == BackendType::Local));
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
    match runtime.block_on(switchyard_server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "switchyard stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(logging: &LoggingConfig) {
    use tracing_subscriber::EnvFilter;
    // RUST_LOG wins over the configured level, for debugging sessions.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match logging.format {
        LogFormat::Json => builder.json().init(),
        _ => builder.init(),
    }
}
