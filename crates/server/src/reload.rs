//! Hot reload: the router's live state ([`Live`]: the current [`AppState`] behind an
//! `ArcSwap`, read once per request), and replacing it when the configuration changes —
//! on a change of the watched file (or of `auth.api_keys_file`), on `SIGHUP`, or on
//! `POST /admin/config/reload`.
//!
//! A reload validates the new configuration exactly like start-up (the same loader:
//! file, environment, command line; then the key file, the conversion to settings and
//! the construction of every backend), builds a complete new state beside the old one,
//! probes new backends, and swaps it in with one atomic store. Requests in flight keep
//! the state they started with (they hold an `Arc` of it) and finish on it. State that
//! outlives a reload is carried over: health and circuit state of backends that stay
//! (`HealthRegistry::reconfigure`), strategy statistics (the same `StatsRegistry`), the
//! caches and the retry budget when their settings did not change, rate-limit buckets
//! when the limits and keys did not change, and unchanged backends themselves (their
//! connection pools, the embedded model).
//!
//! Anything that fails keeps the old configuration, and is reported in the log
//! (warn), in `switchyard_config_reloads_total{result="failed"}` and
//! `switchyard_config_last_reload_successful`, and in `GET /admin/config`. Keys that
//! only a restart can apply ([`switchyard_config::restart_required`]) keep their
//! running values and are reported as waiting for a restart. File events are debounced
//! and ignored when the files' bytes did not change, so a half-written file is at worst
//! one failed (reported) reload before the complete one applies.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use metrics::{counter, gauge};
use parking_lot::Mutex;
use serde::Serialize;
use switchyard_backends::ClientFactory;
use switchyard_config::{Config, ConfigError, ConfigSource, Overrides};
use switchyard_core::ErrorCode;
use switchyard_health::HealthChecker;

use crate::error::ApiError;
use crate::metrics::{
    CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS, CONFIG_LAST_RELOAD_SUCCESSFUL,
    CONFIG_RELOADS_TOTAL, CONFIG_RESTART_REQUIRED, MetricsRender,
};
use crate::state::AppState;

/// Quiet time after a file event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// How to read the configuration again: what the router was started from.
#[derive(Clone)]
pub struct ConfigLoader {
    load: Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>,
    file: Option<PathBuf>,
}

/// The router's live state: the current [`AppState`] and what reloading it needs.
pub(crate) struct Live {
    state: ArcSwap<AppState>,
    /// The active health checker of the current state.
    checker: Mutex<Option<HealthChecker>>,
    /// Renders `/metrics`; unset when no recorder was handed over.
    render: OnceLock<MetricsRender>,
    reload: Option<Reload>,
}

/// The configuration a router was started from, and what reloading it needs.
struct Reload {
    /// `None`: the configuration is shown but never reloaded.
    loader: Option<ConfigLoader>,
    factory: Arc<ClientFactory>,
    /// The effective configuration: the file's, with restart-only keys at their
    /// running values.
    config: ArcSwap<Config>,
    /// One reload at a time.
    lock: tokio::sync::Mutex<()>,
    status: Mutex<ReloadStatus>,
}

/// What `GET /admin/config` reports about reloads.
#[derive(Clone, Debug, Default, Serialize)]
struct ReloadStatus {
    /// Applied configurations, the first one included.
    generation: u64,
    /// Reloads attempted (skipped file events not counted).
    attempts: u64,
    /// `applied`, `unchanged` or `failed`; `none` before the first reload.
    last_result: &'static str,
    /// What started the last reload: `file`, `signal` or `admin`.
    last_trigger: Option<&'static str>,
    last_attempt_unix: Option<u64>,
    last_success_unix: Option<u64>,
    /// Why the last reload failed (secrets removed).
    last_error: Option<String>,
    /// Keys whose new values wait for a restart.
    restart_required: Vec<&'static str>,
    #[serde(skip)]
    fingerprint: Option<u64>,
}

/// What started a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Trigger {
    File,
    Signal,
    Admin,
}

/// How a reload ended.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Outcome {
    result: &'static str,
    generation: u64,
    restart_required: Vec<&'static str>,
}

impl ConfigLoader {
    /// A loader calling `load`; `file` (if any) is watched for changes.
    pub fn new(
        file: Option<PathBuf>,
        load: impl Fn() -> Result<Config, ConfigError> + Send + Sync + 'static,
    ) -> Self {
        ConfigLoader { load: Arc::new(load), file }
    }

    /// Reload exactly as `switchyard serve` loaded: the same command-line overrides, the
    /// process environment as it is at reload time, and the file `source` named (so a
    /// discovered file stays the one read).
    pub fn from_overrides(overrides: Overrides, source: &ConfigSource) -> Self {
        let file = source.path().map(Path::to_path_buf);
        let overrides =
            Overrides { config_path: file.clone().or(overrides.config_path.clone()), ..overrides };
        ConfigLoader::new(file, move || Config::load(&overrides).map(|(config, _)| config))
    }
}

impl Live {
    /// Live state without reload (a router built from settings).
    pub(crate) fn fixed(state: AppState, checker: Option<HealthChecker>) -> Live {
        Live {
            state: ArcSwap::from_pointee(state),
            checker: Mutex::new(checker),
            render: OnceLock::new(),
            reload: None,
        }
    }

    /// Live state started from `config`, reloaded through `loader` (if any).
    pub(crate) fn from_config(
        state: AppState,
        checker: Option<HealthChecker>,
        config: Config,
        loader: Option<ConfigLoader>,
        factory: ClientFactory,
    ) -> Live {
        let mut files: Vec<PathBuf> = loader.iter().flat_map(|l| l.file.iter()).cloned().collect();
        files.extend(config.auth.api_keys_file.iter().cloned());
        let status = ReloadStatus {
            generation: 1,
            last_result: "none",
            last_success_unix: Some(unix_now()),
            fingerprint: fingerprint(&files),
            ..ReloadStatus::default()
        };
        gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL).set(1.0);
        gauge!(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS).set(unix_now() as f64);
        gauge!(CONFIG_RESTART_REQUIRED).set(0.0);
        let reload = Reload {
            loader,
            factory: Arc::new(factory),
            config: ArcSwap::from_pointee(config),
            lock: tokio::sync::Mutex::new(()),
            status: Mutex::new(status),
        };
        Live {
            state: ArcSwap::from_pointee(state),
            checker: Mutex::new(checker),
            render: OnceLock::new(),
            reload: Some(reload),
        }
    }

    /// The current state. Read once per request; the request keeps it to its end.
    pub(crate) fn state(&self) -> Arc<AppState> {
        self.state.load_full()
    }

    pub(crate) fn set_render(&self, render: MetricsRender) {
        let _ = self.render.set(render);
    }

    pub(crate) fn render(&self) -> Option<&MetricsRender> {
        self.render.get()
    }

    /// Whether reload is possible.
    pub(crate) fn can_reload(&self) -> bool {
        self.reload.as_ref().is_some_and(|r| r.loader.is_some())
    }

    /// The files a watcher should follow now: the config file and the key file.
    fn watched_files(&self) -> Vec<PathBuf> {
        let Some(reload) = &self.reload else { return Vec::new() };
        let Some(loader) = &reload.loader else { return Vec::new() };
        let mut files: Vec<PathBuf> = loader.file.iter().cloned().collect();
        if let Some(keys) = &reload.config.load().auth.api_keys_file {
            files.push(keys.clone());
        }
        files
    }

    /// Stop the active health checks (at shutdown).
    pub(crate) async fn stop_checks(&self) {
        let checker = self.checker.lock().take();
        if let Some(checker) = checker {
            checker.shutdown().await;
        }
    }

    /// Reload the configuration. File-triggered reloads of unchanged bytes do nothing.
    pub(crate) async fn reload(&self, trigger: Trigger) -> Result<Outcome, ApiError> {
        let Some((reload, loader)) =
            self.reload.as_ref().and_then(|r| Some((r, r.loader.as_ref()?)))
        else {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                "this router was not started from a configuration file; nothing to reload",
            ));
        };
        let _one_at_a_time = reload.lock.lock().await;
        let files = self.watched_files();
        let load = loader.load.clone();
        let main = loader.file.clone();
        let read = tokio::task::spawn_blocking(move || {
            // An empty file means "all defaults" at start-up; mid-flight it is far more
            // likely a file being written, and all defaults is not what anyone wants.
            if let Some(file) = main.filter(|f| f.exists())
                && std::fs::read(&file).is_ok_and(|bytes| bytes.trim_ascii().is_empty())
            {
                let error = format!("{} is empty (still being written?)", file.display());
                return (fingerprint(&files), Err(error));
            }
            (fingerprint(&files), load().map_err(|e| e.to_string()))
        })
        .await;
        let (print, loaded) = match read {
            Ok(read) => read,
            Err(_) => return Err(self.failed(reload, trigger, None, "the loader panicked".into())),
        };
        if trigger == Trigger::File {
            // One guard: temporaries live to the end of the statement, so locking per
            // field would deadlock on the second.
            let status = reload.status.lock();
            if print == status.fingerprint {
                return Ok(Outcome {
                    result: "unchanged",
                    generation: status.generation,
                    restart_required: status.restart_required.clone(),
                });
            }
        }
        let mut config = match loaded {
            Ok(config) => config,
            Err(error) => return Err(self.failed(reload, trigger, print, error)),
        };
        let running = reload.config.load_full();
        let pending = switchyard_config::restart_required(&running, &config);
        keep_restart_only(&running, &mut config);
        match self.apply(reload, &running, config).await {
            Ok(changed) => Ok(self.applied(reload, trigger, print, pending, changed)),
            Err(error) => Err(self.failed(reload, trigger, print, error.to_string())),
        }
    }

    /// Build, probe and swap in the state `config` describes. `Ok(false)`: nothing
    /// changed.
    async fn apply(
        &self,
        reload: &Reload,
        running: &Config,
        config: Config,
    ) -> crate::Result<bool> {
        let key_config = config.clone();
        let settings =
            tokio::task::spawn_blocking(move || crate::convert::load_settings(&key_config))
                .await
                .map_err(|_| {
                    crate::Error::Config("reading auth.api_keys_file panicked".into())
                })??;
        let current = self.state();
        if config == *running && settings == current.settings {
            return Ok(false);
        }
        // Building a changed local backend loads a model: blocking work.
        let (spec_config, factory, old_config, old) =
            (config.clone(), reload.factory.clone(), running.clone(), current.clone());
        let spec = tokio::task::spawn_blocking(move || {
            crate::convert::router_spec_reusing(
                &spec_config,
                &factory,
                Some((&old_config, &old.spec)),
            )
        })
        .await
        .map_err(|_| crate::Error::Config("building the backends panicked".into()))??;
        let next = current.next(settings, spec)?;
        let backends = next.spec.backends.iter().map(|b| b.backend.clone());
        let checker = HealthChecker::spawn(&next.health, backends)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        // Backends that stay keep their health; new ones are probed before the swap.
        tokio::join!(checker.ready(), next.discover_models());
        self.state.store(Arc::new(next));
        let old = self.checker.lock().replace(checker);
        reload.config.store(Arc::new(config));
        if let Some(old) = old {
            old.shutdown().await;
        }
        Ok(true)
    }

    fn applied(
        &self,
        reload: &Reload,
        trigger: Trigger,
        print: Option<u64>,
        pending: Vec<&'static str>,
        changed: bool,
    ) -> Outcome {
        let now = unix_now();
        let mut status = reload.status.lock();
        if changed {
            status.generation += 1;
        }
        let result = if changed { "applied" } else { "unchanged" };
        status.attempts += 1;
        status.last_result = result;
        status.last_trigger = Some(trigger.as_str());
        status.last_attempt_unix = Some(now);
        status.last_success_unix = Some(now);
        status.last_error = None;
        status.fingerprint = print;
        status.restart_required = pending.clone();
        counter!(CONFIG_RELOADS_TOTAL, "result" => result).increment(1);
        gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL).set(1.0);
        gauge!(CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP_SECONDS).set(now as f64);
        gauge!(CONFIG_RESTART_REQUIRED).set(pending.len() as f64);
        if changed {
            tracing::info!(
                generation = status.generation,
                trigger = trigger.as_str(),
                "configuration reloaded"
            );
        }
        if !pending.is_empty() {
            tracing::warn!(
                keys = %pending.join(", "),
                "configuration keys changed that only a restart applies; they keep their running values"
            );
        }
        Outcome { result, generation: status.generation, restart_required: pending }
    }

    fn failed(
        &self,
        reload: &Reload,
        trigger: Trigger,
        print: Option<u64>,
        error: String,
    ) -> ApiError {
        let error = self.scrub(error);
        let mut status = reload.status.lock();
        status.attempts += 1;
        status.last_result = "failed";
        status.last_trigger = Some(trigger.as_str());
        status.last_attempt_unix = Some(unix_now());
        status.last_error = Some(error.clone());
        status.fingerprint = print;
        counter!(CONFIG_RELOADS_TOTAL, "result" => "failed").increment(1);
        gauge!(CONFIG_LAST_RELOAD_SUCCESSFUL).set(0.0);
        tracing::warn!(trigger = trigger.as_str(), %error, "configuration reload failed; keeping the current configuration");
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the new configuration was not applied; the current one stays: {error}"),
        )
    }

    /// `error` with every secret the router knows replaced by `***` (a value pasted
    /// into the wrong key would otherwise be echoed by the validation message).
    fn scrub(&self, mut error: String) -> String {
        let state = self.state();
        let mut secrets: Vec<&str> = Vec::new();
        let config = self.reload.as_ref().map(|r| r.config.load_full());
        if let Some(config) = &config {
            for backend in &config.backends {
                secrets.extend(backend.api_key.iter().map(|k| k.expose()));
                secrets.extend(backend.headers.values().map(|v| v.expose()));
            }
            secrets.extend(config.cache.redis.url.iter().map(|u| u.expose()));
            secrets.extend(config.rate_limit.redis.url.iter().map(|u| u.expose()));
        }
        let auth = &state.settings.auth;
        secrets.extend(auth.api_keys.iter().map(|k| k.key.expose()));
        secrets.extend(auth.admin_api_key.iter().map(|k| k.expose()));
        secrets.extend(state.settings.metrics.auth.password.iter().map(|p| p.expose()));
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for secret in secrets.into_iter().filter(|s| s.len() >= 4) {
            if error.contains(secret) {
                error = error.replace(secret, "***");
            }
        }
        error
    }

    /// `GET /admin/config`: the effective configuration (secrets as `***`), the client
    /// keys by name, and the reload status.
    pub(crate) fn config_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct KeyView<'a> {
            name: &'a str,
            models: &'a [String],
        }
        #[derive(Serialize)]
        struct View<'a> {
            file: Option<&'a Path>,
            reload: Option<ReloadStatus>,
            api_keys: Vec<KeyView<'a>>,
            config: Option<&'a Config>,
        }
        let state = self.state();
        let config = self.reload.as_ref().map(|r| r.config.load_full());
        let view = View {
            file: self.reload.as_ref().and_then(|r| r.loader.as_ref()?.file.as_deref()),
            reload: self.reload.as_ref().map(|r| r.status.lock().clone()),
            api_keys: state
                .settings
                .auth
                .api_keys
                .iter()
                .map(|k| KeyView { name: &k.name, models: &k.models })
                .collect(),
            config: config.as_deref(),
        };
        serde_json::to_vec(&view).unwrap_or_default()
    }
}

impl Outcome {
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::File => "file",
            Trigger::Signal => "signal",
            Trigger::Admin => "admin",
        }
    }
}

/// Keep the running values of every key [`switchyard_config::restart_required`] lists.
fn keep_restart_only(running: &Config, new: &mut Config) {
    new.server.bind_address = running.server.bind_address;
    new.server.workers = running.server.workers;
    new.server.tls = running.server.tls.clone();
    new.server.max_connections = running.server.max_connections;
    new.http_client = running.http_client.clone();
    new.metrics.enabled = running.metrics.enabled;
    new.logging = running.logging.clone();
    new.inference = running.inference.clone();
    new.cache.redis.url = running.cache.redis.url.clone();
    new.rate_limit.redis.url = running.rate_limit.redis.url.clone();
}

/// A hash of the watched files' bytes (`None` when none can be read).
fn fingerprint(files: &[PathBuf]) -> Option<u64> {
    let mut any = false;
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for file in files {
        let bytes = std::fs::read(file).unwrap_or_default();
        any |= !bytes.is_empty();
        hash = hash.rotate_left(5) ^ switchyard_core::fnv1a(&bytes);
    }
    any.then_some(hash)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Watch the configuration file (and the key file): reload after each burst of changes.
/// Watches their directories, so files replaced by rename (editors, Kubernetes
/// ConfigMaps) are seen too. Returns when `live` is dropped.
pub(crate) async fn watch_files(live: Weak<Live>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    // The watched files' paths: other files in the same directories (a log file next
    // to the configuration, say) must not trigger, nor keep the debounce waiting.
    let files: Arc<parking_lot::RwLock<Vec<PathBuf>>> = Arc::default();
    let wanted = files.clone();
    let handler = move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let wanted = wanted.read();
        if event.paths.is_empty() || event.paths.iter().any(|p| wanted.contains(p)) {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the configuration file; reload with SIGHUP or the admin API");
            return;
        }
    };
    let mut watching: Vec<PathBuf> = Vec::new();
    loop {
        let Some(strong) = live.upgrade() else { return };
        let watched = strong.watched_files();
        drop(strong);
        let dirs = directories(&watched);
        *files.write() = watched.iter().map(|f| absolute(f)).collect();
        let mut added = false;
        for dir in dirs {
            use notify::Watcher;
            if watching.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watching.push(dir);
                    added = true;
                }
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), %error, "cannot watch directory")
                }
            }
        }
        // A change made before a directory's watch was in place (the files were
        // fingerprinted when the configuration was loaded) raised no event: look once.
        // An unchanged fingerprint makes this a no-op.
        if !added && rx.recv().await.is_none() {
            return;
        }
        // Debounce: wait for a quiet moment so a file being written is read once, whole.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let Some(strong) = live.upgrade() else { return };
        let _ = strong.reload(Trigger::File).await;
    }
}

/// `file` as an absolute path (as the watcher reports paths).
fn absolute(file: &Path) -> PathBuf {
    std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf())
}

fn directories(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .map(|file| {
            absolute(file).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Reload on every `SIGHUP` until `live` is dropped.
#[cfg(unix)]
pub(crate) async fn reload_on_hangup(live: Weak<Live>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let Some(live) = live.upgrade() else { return };
        tracing::info!("received SIGHUP: reloading the configuration");
        let _ = live.reload(Trigger::Signal).await;
    }
}

#[cfg(not(unix))]
pub(crate) async fn reload_on_hangup(_live: Weak<Live>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_keep_their_running_values_and_nothing_else_does() {
        let running = Config::default();
        let mut new = Config::from_yaml_str(
            r#"
server: { bind_address: "0.0.0.0:9999", workers: 3, max_request_size: 1KiB }
logging: { level: debug }
request: { max_retries: 5 }
backends: [{ name: a, url: "http://127.0.0.1:1" }]
"#,
        )
        .unwrap();
        let pending = switchyard_config::restart_required(&running, &new);
        assert_eq!(pending, ["server.bind_address", "server.workers", "logging.level"]);
        keep_restart_only(&running, &mut new);
        assert!(
            switchyard_config::restart_required(&running, &new).is_empty(),
            "every listed key is kept"
        );
        assert_eq!(new.server.max_request_size, 1024);
        assert_eq!(new.request.max_retries, 5);
        assert_eq!(new.backends[0].name, "a");
    }

    #[test]
    fn fingerprints_follow_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        assert_eq!(fingerprint(std::slice::from_ref(&file)), None);
        std::fs::write(&file, "a: 1").unwrap();
        let one = fingerprint(std::slice::from_ref(&file));
        std::fs::write(&file, "a: 2").unwrap();
        assert_ne!(fingerprint(std::slice::from_ref(&file)), one);
        std::fs::write(&file, "a: 1").unwrap();
        assert_eq!(fingerprint(std::slice::from_ref(&file)), one);
        assert_eq!(directories(&[file.clone(), file]), vec![dir.path().to_path_buf()]);
    }
}
