//! Loading: find the file, layer defaults < file < `LLM_*` < `SWITCHYARD_*` < CLI with
//! figment, expand `${VAR}` references, deserialise collecting every error, validate.

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::error::Kind;
use figment::value::{Dict, Value};
use serde::Deserialize;

use crate::env::{self, Discovery, Environment, Layer, LayerKind};
use crate::error::{ConfigError, Issue, Result};
use crate::path::{self, KeyPath, Removed, Shift};
use crate::schema::{ApiKeyConfig, Config};
use crate::suggest;
use crate::validate;

/// Most distinct deserialisation errors reported before giving up (each one costs a
/// re-parse of an in-memory tree, so this bounds work on a pathological file).
const MAX_DESERIALIZE_ERRORS: usize = 100;

/// What the command line sets: the highest-precedence layer. The binary fills it from
/// its flags; every field is optional. Construct with `..Default::default()` so new
/// fields can be added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--config FILE`: read this file (it must exist) instead of searching.
    pub config_path: Option<PathBuf>,
    /// `--bind ADDR`: sets `server.bind_address`.
    pub bind_address: Option<String>,
    /// `--model PATH`: sets `inference.model_path`.
    pub model_path: Option<PathBuf>,
    /// `--log-level LEVEL`: sets `logging.level`.
    pub log_level: Option<String>,
}

/// Which file a configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigSource {
    /// Named by `--config` (or `SWITCHYARD_CONFIG`).
    Explicit(PathBuf),
    /// Found in a search path (`./switchyard.yaml`, then the user config directory).
    Discovered(PathBuf),
    /// No file: defaults (plus environment and command line) only.
    Defaults,
}

impl ConfigSource {
    /// The file, if there is one (what hot reload watches).
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Explicit(p) | ConfigSource::Discovered(p) => Some(p),
            ConfigSource::Defaults => None,
        }
    }
}

impl Config {
    /// Load the configuration as `switchyard serve` does: discover the file, then layer
    /// defaults < file < `LLM_*` env < `SWITCHYARD_*` env < `overrides`, expand `${VAR}`
    /// references and validate. Reads the process environment.
    pub fn load(overrides: &Overrides) -> Result<(Config, ConfigSource)> {
        Config::load_with(overrides, &Environment::process())
    }

    /// [`Config::load`] against an explicit [`Environment`] (variables and search paths).
    pub fn load_with(overrides: &Overrides, env: &Environment) -> Result<(Config, ConfigSource)> {
        let (file, source) = match env::discover(overrides.config_path.as_deref(), env) {
            Discovery::Explicit(path) => {
                if !path.exists() {
                    return Err(ConfigError::NotFound { path });
                }
                (Some(read_file(&path)?), ConfigSource::Explicit(path))
            }
            Discovery::Found(path) => (Some(read_file(&path)?), ConfigSource::Discovered(path)),
            Discovery::None => (None, ConfigSource::Defaults),
        };
        let config = build(file, env, overrides)?;
        Ok((config, source))
    }

    /// Parse and validate YAML text over the defaults. No environment is read: no
    /// `SWITCHYARD_*` overrides, and `${VAR}` references resolve only through their
    /// `:-default`.
    pub fn from_yaml_str(yaml: &str) -> Result<Config> {
        let layer = parse_yaml(yaml, "the config text")?;
        build(Some(layer), &Environment::empty(), &Overrides::default())
    }

    /// Validate a file as `switchyard serve --config FILE` would load it (process
    /// environment included): what `switchyard config check FILE` runs.
    pub fn check_file(path: &Path) -> Result<Config> {
        let overrides = Overrides { config_path: Some(path.to_path_buf()), ..Overrides::default() };
        Config::load(&overrides).map(|(config, _)| config)
    }

    /// The effective configuration as YAML, secrets shown as `***`: what
    /// `switchyard config print` and `GET /admin/config` show.
    pub fn to_masked_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| format!("# cannot render the config: {e}\n"))
    }
}

fn read_file(path: &Path) -> Result<Layer> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_yaml(&text, &path.display().to_string())
}

/// Parse YAML (or JSON) text into a file layer.
fn parse_yaml(text: &str, origin: &str) -> Result<Layer> {
    let parse_error = |e: serde_yaml::Error| ConfigError::Parse {
        origin: origin.to_owned(),
        message: e.to_string(),
    };
    // serde_yaml's own tree rejects duplicate keys, which a figment dict would
    // silently collapse to the last one.
    serde_yaml::from_str::<serde_yaml::Value>(text).map_err(parse_error)?;
    let value: Value = serde_yaml::from_str(text).map_err(parse_error)?;
    let dict = match value {
        Value::Dict(_, dict) => dict,
        Value::Empty(..) => Dict::new(),
        other => {
            return Err(ConfigError::Invalid {
                issues: vec![Issue {
                    path: String::new(),
                    message: format!(
                        "{origin} must be a mapping of sections (server:, backends:, ...), not {}",
                        other.to_actual()
                    ),
                }],
            });
        }
    };
    Ok(Layer::file(origin, dict))
}

/// The command-line layer.
fn cli_layer(overrides: &Overrides) -> Layer {
    let mut layer = Layer::new(LayerKind::Cli);
    let mut set = |keys: &[&str], value: String, flag: &str| {
        let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
        layer.insert(&keys, Value::from(value), flag);
    };
    if let Some(bind) = &overrides.bind_address {
        set(&["server", "bind_address"], bind.clone(), "--bind");
    }
    if let Some(model) = &overrides.model_path {
        set(&["inference", "model_path"], model.display().to_string(), "--model");
    }
    if let Some(level) = &overrides.log_level {
        set(&["logging", "level"], level.clone(), "--log-level");
    }
    layer
}

/// Layer, expand, deserialise and validate, collecting every problem.
fn build(file: Option<Layer>, env: &Environment, overrides: &Overrides) -> Result<Config> {
    let mut figment = Figment::new();
    for layer in
        [file, Some(env.llm_layer()), Some(env.switchyard_layer()), Some(cli_layer(overrides))]
            .into_iter()
            .flatten()
    {
        if !layer.is_empty() {
            figment = figment.merge(layer);
        }
    }
    let mut tree: Value = figment.extract().map_err(|e| ConfigError::Invalid {
        issues: vec![Issue { path: String::new(), message: e.to_string() }],
    })?;
    path::strip_nulls(&mut tree);

    let mut found: Vec<(KeyPath, String)> = Vec::new();
    // Paths whose value was dropped; later complaints about them (or inside them)
    // would only repeat the first one.
    let mut dropped: Vec<KeyPath> = Vec::new();

    let mut expand_issues = env::expand_tree(&mut tree, env);
    expand_issues.extend(shape_issues(&tree));
    let original = tree.clone();
    let mut shifts: Vec<Shift> = Vec::new();
    for (at, message) in expand_issues {
        found.push((at.clone(), message));
        dropped.push(at);
    }
    // Expansion ran on the original tree: remove its failures from the highest path
    // down, so removing one list element never moves another still to be removed.
    let mut to_remove = dropped.clone();
    to_remove.sort();
    for at in to_remove.iter().rev() {
        if let Removed::ListElement(shift) = path::remove(&mut tree, at) {
            shifts.push(shift);
        }
    }

    let config = loop {
        match Config::deserialize(&tree) {
            Ok(config) => break config,
            Err(error) => {
                let at = KeyPath::from_figment(&tree, &error.path);
                let original_at = path::unshift(&at, &shifts);
                found.push((original_at.clone(), describe(&error.kind)));
                dropped.push(original_at);
                let removed = path::remove(&mut tree, &at);
                if found.len() >= MAX_DESERIALIZE_ERRORS {
                    return Err(invalid(found, &figment, &original));
                }
                match removed {
                    Removed::Nothing => return Err(invalid(found, &figment, &original)),
                    Removed::Key => {}
                    Removed::ListElement(shift) => shifts.push(shift),
                }
            }
        }
    };

    let mut config = config;
    validate::normalize(&mut config);
    let name = |p: KeyPath| path::unshift(&p, &shifts).to_string();
    for (at, message) in validate::check(&config, &name) {
        let original_at = path::unshift(&at, &shifts);
        if dropped.iter().any(|d| original_at.starts_with(d) || d.starts_with(&original_at)) {
            continue;
        }
        found.push((original_at, message));
    }
    if found.is_empty() { Ok(config) } else { Err(invalid(found, &figment, &original)) }
}

/// The top-level keys of [`Config`] (a test keeps this in step with the struct).
const SECTIONS: &[&str] = &[
    "server",
    "backends",
    "routing",
    "request",
    "health_checks",
    "cache",
    "http_client",
    "metrics",
    "logging",
    "inference",
    "auth",
    "rate_limit",
    "admin",
];

/// Sections that must be mappings, and `backends` entries: serde would otherwise read
/// a list as a struct's fields in order, with baffling errors.
fn shape_issues(tree: &Value) -> Vec<(KeyPath, String)> {
    let mut issues = Vec::new();
    let Value::Dict(_, sections) = tree else { return issues };
    let not_a_mapping = |v: &Value| format!("expected a mapping, found {}", v.to_actual());
    for (name, value) in sections {
        match (name.as_str(), value) {
            ("backends", Value::Array(_, items)) => {
                for (i, item) in items.iter().enumerate() {
                    if matches!(item, Value::Array(..)) {
                        issues.push((
                            KeyPath::default().join("backends").join(i),
                            not_a_mapping(item),
                        ));
                    }
                }
            }
            ("backends", _) => {}
            (section, Value::Array(..)) if SECTIONS.contains(&section) => {
                issues.push((KeyPath::default().join(name), not_a_mapping(value)))
            }
            _ => {}
        }
    }
    issues
}

/// Sort, de-duplicate, annotate with origins and render.
fn invalid(mut found: Vec<(KeyPath, String)>, figment: &Figment, tree: &Value) -> ConfigError {
    found.sort();
    found.dedup();
    let issues = found
        .into_iter()
        .map(|(at, message)| {
            let message = match env::origin_note(figment, tree, &at) {
                Some(note) => format!("{message} {note}"),
                None => message,
            };
            Issue { path: at.to_string(), message }
        })
        .collect();
    ConfigError::Invalid { issues }
}

/// A deserialisation error in the config's words.
fn describe(kind: &Kind) -> String {
    match kind {
        Kind::UnknownField(field, expected) => {
            let hint = match suggest::closest(field, expected.iter().copied()) {
                Some(close) => format!("did you mean {close:?}?"),
                None => format!("valid keys here: {}", expected.join(", ")),
            };
            format!("unknown key {field:?} ({hint})")
        }
        Kind::UnknownVariant(variant, expected) => {
            let hint = suggest::closest(variant, expected.iter().copied())
                .map(|close| format!(" (did you mean {close:?}?)"))
                .unwrap_or_default();
            format!("unknown value {variant:?}{hint}; valid: {}", expected.join(", "))
        }
        Kind::InvalidType(actual, expected) => {
            format!("expected {}, found {actual}", plain_expected(expected))
        }
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}: expected {}", plain_expected(expected))
        }
        Kind::Message(message) => message.clone(),
        other => other.to_string(),
    }
}

/// serde's type names, as a user reads them.
fn plain_expected(expected: &str) -> String {
    let plain = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "string" => "a string",
        "a sequence" => "a list",
        "a map" => "a mapping",
        "socket address" => "an address like \"127.0.0.1:8080\"",
        "path string" => "a file path",
        other if other.starts_with("struct ") => "a mapping",
        other => other,
    };
    plain.to_owned()
}

impl ApiKeyConfig {
    /// Read an `auth.api_keys_file`: a YAML (or JSON) list of `{key, name, models}`
    /// entries, checked like inline keys (a key and a name each, no duplicates).
    /// `${VAR}` references are expanded against the process environment.
    pub fn load_file(path: &Path) -> Result<Vec<ApiKeyConfig>> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let origin = path.display().to_string();
        let keys: Value = serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::Parse { origin: origin.clone(), message: e.to_string() })?;
        let mut wrapper = Dict::new();
        let mut auth = Dict::new();
        auth.insert("api_keys".to_owned(), keys);
        auth.insert("mode".to_owned(), Value::from("permissive".to_owned()));
        wrapper.insert("auth".to_owned(), Value::from(auth));
        // Validate through the whole pipeline, then keep only the auth keys' issues.
        match build(
            Some(Layer::file(&origin, wrapper)),
            &Environment::process(),
            &Overrides::default(),
        ) {
            Ok(config) => Ok(config.auth.api_keys),
            Err(ConfigError::Invalid { issues }) => Err(ConfigError::Invalid {
                issues: issues
                    .into_iter()
                    .filter_map(|issue| {
                        let rest = issue.path.strip_prefix("auth.api_keys")?;
                        let message = issue.message.replace("auth.api_keys", &origin);
                        Some(Issue { path: format!("{origin}{rest}"), message })
                    })
                    .collect(),
            }),
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_match_the_struct() {
        let Ok(Value::Dict(_, dict)) = Value::serialize(Config::default()) else { panic!() };
        let keys: Vec<&str> = dict.keys().map(String::as_str).collect();
        let mut sections = SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(keys, sections);
    }
}
