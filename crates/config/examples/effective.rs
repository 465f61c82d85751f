// cargo run -p switchyard-config --example effective -- [FILE]
//! Load a configuration the way `switchyard serve` does (the named file, or discovery,
//! plus `SWITCHYARD_*` / `LLM_*` environment) and print either the effective
//! configuration with secrets masked, or every problem, one per line.
#![allow(clippy::print_stdout, clippy::print_stderr)] // reason: a command-line example

use std::process::ExitCode;

use switchyard_config::{Config, ConfigError, ConfigSource, Overrides, restart_required};

fn main() -> ExitCode {
    let overrides = Overrides {
        config_path: std::env::args_os().nth(1).map(Into::into),
        ..Overrides::default()
    };
    match Config::load(&overrides) {
        Ok((config, source)) => {
            match &source {
                ConfigSource::Defaults => println!("# no config file: defaults and environment"),
                other => println!(
                    "# from {}",
                    other.path().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            }
            print!("{}", config.to_masked_yaml());
            // What a hot reload from the defaults to this file could not apply live.
            let restart = restart_required(&Config::default(), &config);
            if !restart.is_empty() {
                println!(
                    "# differs from the defaults in restart-only keys: {}",
                    restart.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(ConfigError::EXIT_CODE)
        }
    }
}
