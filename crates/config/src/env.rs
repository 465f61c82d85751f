//! Everything loading reads from outside the file: environment variables (for
//! `SWITCHYARD_*` overrides, the `LLM_*` aliases and `${VAR}` references) and the places
//! a config file is looked for. Captured once in an [`Environment`] so tests inject
//! their own instead of mutating the process environment.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use crate::path::KeyPath;

/// Prefix of the environment overrides (`SWITCHYARD_SERVER__BIND_ADDRESS`).
pub(crate) const ENV_PREFIX: &str = "SWITCHYARD_";
/// Separator between nesting levels in an override's name.
pub(crate) const ENV_SEPARATOR: &str = "__";
/// Names a config file when no `--config` is given.
pub(crate) const CONFIG_PATH_VAR: &str = "SWITCHYARD_CONFIG";
/// The small-box names for inference settings, below `SWITCHYARD_INFERENCE__*`.
pub(crate) const LLM_ALIASES: &[(&str, &str)] = &[
    ("LLM_MAX_THREADS", "threads"),
    ("LLM_BATCH_SIZE", "batch_size"),
    ("LLM_CONTEXT_SIZE", "context_size"),
];
/// The file name looked for in the working directory and the user config directory.
pub(crate) const FILE_NAME: &str = "switchyard.yaml";

/// The outside world as configuration loading sees it: environment variables and the
/// ordered list of places a config file is looked for when none is named.
///
/// [`Environment::process`] captures the real one; tests build their own with
/// [`Environment::empty`], [`Environment::with_var`] and
/// [`Environment::with_search_path`]. `Debug` prints variable names, never values.
#[derive(Clone, Default)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    search_paths: Vec<PathBuf>,
}

impl Environment {
    /// The process environment (variables that are not valid UTF-8 are skipped) and the
    /// default search paths: `./switchyard.yaml`, then
    /// `<user config dir>/switchyard/switchyard.yaml`.
    pub fn process() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let cwd = std::env::current_dir().unwrap_or_default();
        let mut search_paths = vec![cwd.join(FILE_NAME)];
        if let Some(dir) = dirs::config_dir() {
            search_paths.push(dir.join("switchyard").join(FILE_NAME));
        }
        Environment { vars, search_paths }
    }

    /// No variables and no search paths: only what is passed explicitly is read.
    pub fn empty() -> Self {
        Environment::default()
    }

    /// Add (or replace) a variable.
    #[must_use]
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Append a place to look for a config file when none is named.
    #[must_use]
    pub fn with_search_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.search_paths.push(path.into());
        self
    }

    /// A variable's value.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Where a config file is looked for, in order.
    pub fn search_paths(&self) -> &[PathBuf] {
        &self.search_paths
    }

    /// The `SWITCHYARD_SECTION__KEY` overrides as a layer. Variables without `__`
    /// (`SWITCHYARD_CONFIG`, `SWITCHYARD_MODEL_DIR`) are not config keys and are skipped.
    pub(crate) fn switchyard_layer(&self) -> Layer {
        let mut layer = Layer::new(LayerKind::Env);
        for (name, value) in &self.vars {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
            if !rest.contains(ENV_SEPARATOR) {
                continue;
            }
            let keys: Vec<String> =
                rest.split(ENV_SEPARATOR).map(str::to_ascii_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                continue;
            }
            layer.insert(&keys, env_value(value), name);
        }
        layer
    }

    /// The `LLM_MAX_THREADS` / `LLM_BATCH_SIZE` / `LLM_CONTEXT_SIZE` aliases as a layer.
    pub(crate) fn llm_layer(&self) -> Layer {
        let mut layer = Layer::new(LayerKind::Env);
        for (var, key) in LLM_ALIASES {
            if let Some(value) = self.var(var) {
                layer.insert(&["inference".to_owned(), (*key).to_owned()], env_value(value), var);
            }
        }
        layer
    }
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("search_paths", &self.search_paths)
            .finish()
    }
}

/// An environment value typed like figment does (`2` is a number, `true` a bool), but
/// never a list or a mapping unless it is written as one: `[::1]:8080` stays a string.
fn env_value(raw: &str) -> Value {
    let parsed: Value = raw.parse().unwrap_or_else(|never| match never {});
    match parsed {
        Value::Array(..) | Value::Dict(..)
            if !(raw.trim().starts_with('[') && raw.trim().ends_with(']')
                || raw.trim().starts_with('{') && raw.trim().ends_with('}')) =>
        {
            Value::from(raw.to_owned())
        }
        other => other,
    }
}

/// Where a layer's values came from; decides how an error mentions its origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LayerKind {
    /// A YAML file or string.
    File,
    /// Environment variables.
    Env,
    /// The command line.
    Cli,
}

/// One source of configuration values, as a figment provider. Remembers, per key path,
/// the name the user wrote it under (the environment variable, the flag) so errors can
/// say where a bad value came from.
#[derive(Clone, Debug)]
pub(crate) struct Layer {
    kind: LayerKind,
    name: String,
    dict: Dict,
    origins: BTreeMap<Vec<String>, String>,
}

impl Layer {
    pub(crate) fn new(kind: LayerKind) -> Self {
        let name = match kind {
            LayerKind::File => "config file",
            LayerKind::Env => "environment",
            LayerKind::Cli => "command line",
        };
        Layer { kind, name: name.to_owned(), dict: Dict::new(), origins: BTreeMap::new() }
    }

    /// A layer holding a parsed file's top-level mapping.
    pub(crate) fn file(name: &str, dict: Dict) -> Self {
        Layer { kind: LayerKind::File, name: name.to_owned(), dict, origins: BTreeMap::new() }
    }

    /// Set `keys` to `value`, recording `origin` (e.g. `SWITCHYARD_SERVER__WORKERS`).
    pub(crate) fn insert(&mut self, keys: &[String], value: Value, origin: &str) {
        let Some((last, parents)) = keys.split_last() else { return };
        let mut dict = &mut self.dict;
        for key in parents {
            let entry = dict.entry(key.clone()).or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            let Value::Dict(_, inner) = entry else { return };
            dict = inner;
        }
        dict.insert(last.clone(), value);
        self.origins.insert(keys.to_vec(), origin.to_owned());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.dict.is_empty()
    }
}

/// Name prefix that marks a layer's metadata, followed by its kind.
const META_ENV: &str = "switchyard env";
const META_CLI: &str = "switchyard cli";

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let name = match self.kind {
            LayerKind::File => self.name.clone(),
            LayerKind::Env => META_ENV.to_owned(),
            LayerKind::Cli => META_CLI.to_owned(),
        };
        let origins = Arc::new(self.origins.clone());
        Metadata::named(name).interpolater(move |_profile: &Profile, keys: &[&str]| {
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            origins.get(&keys).cloned().unwrap_or_else(|| keys.join("."))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Where the value at `path` came from, when it was not a file: `env SWITCHYARD_X` or
/// `the command line (--bind)`.
pub(crate) fn origin_note(
    figment: &figment::Figment,
    tree: &Value,
    path: &KeyPath,
) -> Option<String> {
    let node = crate::path::find(tree, path)?;
    let metadata = figment.get_metadata(node.tag())?;
    let keys = path.to_strings();
    let name = metadata.interpolate(&Profile::Default, &keys);
    match metadata.name.as_ref() {
        META_ENV => Some(format!("(from env {name})")),
        META_CLI => Some(format!("(from the command line: {name})")),
        _ => None,
    }
}

/// A problem found while expanding references: the path and the message.
pub(crate) type ExpandIssue = (KeyPath, String);

/// Expand `${VAR}` and `${VAR:-default}` in every string value of `tree`; `$${` is a
/// literal `${`. A missing variable without a default is an issue naming the key and
/// the variable; the value is then removed by the caller.
pub(crate) fn expand_tree(tree: &mut Value, env: &Environment) -> Vec<ExpandIssue> {
    let mut issues = Vec::new();
    expand_node(tree, &KeyPath::default(), env, &mut issues);
    issues
}

fn expand_node(node: &mut Value, path: &KeyPath, env: &Environment, issues: &mut Vec<ExpandIssue>) {
    match node {
        Value::String(tag, text) if text.contains('$') => match expand_str(text, env) {
            Ok(expanded) => *node = Value::String(*tag, expanded),
            Err(message) => issues.push((path.clone(), message)),
        },
        Value::Dict(_, dict) => {
            for (key, child) in dict.iter_mut() {
                expand_node(child, &path.join(key), env, issues);
            }
        }
        Value::Array(_, items) => {
            for (i, child) in items.iter_mut().enumerate() {
                expand_node(child, &path.join(i), env, issues);
            }
        }
        _ => {}
    }
}

/// Expand one string. The error never includes the variable's value.
pub(crate) fn expand_str(text: &str, env: &Environment) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix("${") else {
            out.push('$');
            rest = &after[1..];
            continue;
        };
        let Some(end) = body_start.find('}') else {
            return Err(format!(
                "unterminated reference {after:?}: expected ${{NAME}} or ${{NAME:-default}}"
            ));
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if !is_var_name(name) {
            return Err(format!(
                "invalid reference ${{{body}}}: a variable name is letters, digits and _, not starting with a digit"
            ));
        }
        match (env.var(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (referenced as ${{{name}}}; write ${{{name}:-default}} to fall back to a default)"
                ));
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Look for the config file: an explicit path (which must exist), else the first
/// existing search path, else none.
pub(crate) fn discover(explicit: Option<&Path>, env: &Environment) -> Discovery {
    if let Some(path) = explicit {
        return Discovery::Explicit(path.to_path_buf());
    }
    match env.var(CONFIG_PATH_VAR).filter(|p| !p.is_empty()) {
        Some(path) => Discovery::Explicit(PathBuf::from(path)),
        None => env
            .search_paths()
            .iter()
            .find(|p| p.is_file())
            .map_or(Discovery::None, |p| Discovery::Found(p.clone())),
    }
}

/// The outcome of [`discover`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Discovery {
    /// Named by `--config` or `SWITCHYARD_CONFIG`.
    Explicit(PathBuf),
    /// Found in a search path.
    Found(PathBuf),
    /// No file: defaults only.
    None,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment::empty().with_var("KEY", "sk-1").with_var("EMPTY", "")
    }

    #[test]
    fn expands_references() {
        let e = env();
        assert_eq!(expand_str("${KEY}", &e).unwrap(), "sk-1");
        assert_eq!(expand_str("Bearer ${KEY}!", &e).unwrap(), "Bearer sk-1!");
        assert_eq!(expand_str("${NOPE:-fallback}", &e).unwrap(), "fallback");
        assert_eq!(expand_str("${EMPTY:-fallback}", &e).unwrap(), "fallback");
        assert_eq!(expand_str("${NOPE:-}", &e).unwrap(), "");
        assert_eq!(expand_str("$${KEY} costs $5", &e).unwrap(), "${KEY} costs $5");
        assert_eq!(expand_str("${KEY}${KEY}", &e).unwrap(), "sk-1sk-1");
    }

    #[test]
    fn reference_errors_name_the_variable_only() {
        let e = env();
        let err = expand_str("${NOPE}", &e).unwrap_err();
        assert!(err.contains("environment variable NOPE is not set"), "{err}");
        assert!(expand_str("${KEY", &e).unwrap_err().contains("unterminated"));
        assert!(expand_str("${1X}", &e).unwrap_err().contains("invalid reference"));
    }

    #[test]
    fn env_values_are_typed_but_addresses_stay_strings() {
        assert_eq!(env_value("2"), Value::from(2u8));
        assert_eq!(env_value("true"), Value::from(true));
        assert_eq!(env_value("[::1]:8080"), Value::from("[::1]:8080".to_owned()));
        assert_eq!(env_value("0.0.0.0:8080"), Value::from("0.0.0.0:8080".to_owned()));
        assert!(matches!(env_value("[a, b]"), Value::Array(..)));
    }

    #[test]
    fn only_nested_switchyard_vars_are_keys() {
        let e = Environment::empty()
            .with_var("SWITCHYARD_SERVER__WORKERS", "4")
            .with_var("SWITCHYARD_MODEL_DIR", "/models")
            .with_var("SWITCHYARD_CONFIG", "/etc/s.yaml")
            .with_var("OTHER__X", "1");
        let layer = e.switchyard_layer();
        assert_eq!(layer.dict.len(), 1);
        assert_eq!(
            layer.origins.get(&vec!["server".to_owned(), "workers".to_owned()]).map(String::as_str),
            Some("SWITCHYARD_SERVER__WORKERS")
        );
    }

    #[test]
    fn discovery_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("a.yaml");
        let second = dir.path().join("b.yaml");
        std::fs::write(&second, "").unwrap();
        let e = Environment::empty().with_search_path(&first).with_search_path(&second);
        assert_eq!(discover(None, &e), Discovery::Found(second.clone()));
        std::fs::write(&first, "").unwrap();
        assert_eq!(discover(None, &e), Discovery::Found(first.clone()));
        let named = dir.path().join("missing.yaml");
        assert_eq!(discover(Some(&named), &e), Discovery::Explicit(named.clone()));
        let e = e.with_var(CONFIG_PATH_VAR, "/x.yaml");
        assert_eq!(discover(None, &e), Discovery::Explicit("/x.yaml".into()));
        assert_eq!(discover(None, &Environment::empty()), Discovery::None);
    }
}
