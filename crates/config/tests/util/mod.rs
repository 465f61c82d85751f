//! Helpers for the data-driven config tests.
#![allow(clippy::unwrap_used)] // reason: test helpers, a failure should panic the test

use std::path::PathBuf;

use switchyard_config::{Config, ConfigError, ConfigSource, Environment, Overrides};

/// One row: a file (optional), environment variables, command-line overrides, and
/// what must come out.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) yaml: Option<&'static str>,
    pub(crate) env: &'static [(&'static str, &'static str)],
    pub(crate) cli: Cli,
    pub(crate) expect: Expect,
}

/// The command-line overrides of a case (paths are filled in by the runner).
#[derive(Default)]
pub(crate) struct Cli {
    pub(crate) bind: Option<&'static str>,
    pub(crate) model: Option<&'static str>,
    pub(crate) log_level: Option<&'static str>,
}

pub(crate) enum Expect {
    /// Each `(key path, value)` must hold in the effective config, the value written as
    /// `config print` writes it (YAML scalar, or flow YAML for collections).
    Values(&'static [(&'static str, &'static str)]),
    /// The error must render as exactly these lines.
    Errors(&'static [&'static str]),
}

pub(crate) const NO_ENV: &[(&str, &str)] = &[];

/// Build the environment of a case: its variables and no search paths, so a file in
/// the developer's home never leaks in.
pub(crate) fn environment(vars: &[(&str, &str)]) -> Environment {
    vars.iter().fold(Environment::empty(), |env, (k, v)| env.with_var(*k, *v))
}

/// Run one case's loading: the YAML goes through a real file named with `--config`.
pub(crate) fn load(case: &Case) -> Result<(Config, ConfigSource), ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let config_path: Option<PathBuf> = case.yaml.map(|yaml| {
        let path = dir.path().join("switchyard.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    });
    let overrides = Overrides {
        config_path,
        bind_address: case.cli.bind.map(str::to_owned),
        model_path: case.cli.model.map(PathBuf::from),
        log_level: case.cli.log_level.map(str::to_owned),
    };
    Config::load_with(&overrides, &environment(case.env))
}

/// The value at `path` (`backends[0].url`, `routing.weights.vllm-a`) in the effective
/// config, rendered as `config print` would.
pub(crate) fn lookup(config: &Config, path: &str) -> String {
    let tree: serde_yaml::Value = serde_yaml::from_str(&config.to_masked_yaml()).unwrap();
    let mut node = &tree;
    for part in split_path(path) {
        node = match part.parse::<usize>() {
            Ok(i) if node.is_sequence() => &node[i],
            _ => node
                .get(part.as_str())
                .unwrap_or_else(|| panic!("no key {path} in\n{}", config.to_masked_yaml())),
        };
    }
    match node {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Null => "null".into(),
        other => {
            let text = serde_yaml::to_string(other).unwrap();
            text.trim().to_owned()
        }
    }
}

fn split_path(path: &str) -> Vec<String> {
    path.replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Run every case, collecting all failures before panicking, so one run shows every
/// broken row.
pub(crate) fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let result = load(case);
        match (&case.expect, result) {
            (Expect::Values(values), Ok((config, _))) => {
                for (path, want) in *values {
                    let got = lookup(&config, path);
                    if got != *want {
                        failures
                            .push(format!("[{}] {path}: want {want:?}, got {got:?}", case.name));
                    }
                }
            }
            (Expect::Values(_), Err(e)) => {
                failures.push(format!("[{}] unexpected error:\n{e}", case.name));
            }
            (Expect::Errors(want), Ok(_)) => {
                failures.push(format!("[{}] loaded, but expected errors {want:#?}", case.name));
            }
            (Expect::Errors(want), Err(e)) => {
                let got = e.to_string();
                let got: Vec<&str> = got.lines().collect();
                if got != *want {
                    failures.push(format!(
                        "[{}] errors differ:\nwant: {want:#?}\ngot:  {got:#?}",
                        case.name
                    ));
                }
                if !matches!(e, ConfigError::Invalid { .. }) || e.issues().len() != want.len() {
                    failures.push(format!(
                        "[{}] expected {} issues, got {:?}",
                        case.name,
                        want.len(),
                        e
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failing rows:\n\n{}", failures.len(), failures.join("\n\n"));
}
