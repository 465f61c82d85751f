//! The active checker: one tokio task per checked backend, probing through
//! [`Backend::probe`] and feeding the registry.

use std::fmt;
use std::sync::Arc;

use switchyard_core::{Backend, BackendError, ErrorCode};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::registry::HealthRegistry;

/// Runs active health checks until shut down or dropped (dropping aborts the tasks).
///
/// Each checked backend gets its own task: the first probe runs at once, then one every
/// `interval` (start to start), or every `warmup_interval` while the backend answers its
/// probe with [`ErrorCode::Overloaded`] (a 503 while loading a model) and until it is
/// healthy again. A probe that takes longer than `timeout` counts as a failure.
pub struct HealthChecker {
    tasks: JoinSet<()>,
    stop: Option<watch::Sender<()>>,
    pending: watch::Receiver<usize>,
}

impl HealthChecker {
    /// Start probing. Every backend must be in `registry`, and every backend the registry
    /// checks must be given, or it would never leave
    /// [`ActiveState::Unknown`](crate::ActiveState::Unknown). Needs a tokio runtime with
    /// time enabled.
    pub fn spawn(
        registry: &HealthRegistry,
        backends: impl IntoIterator<Item = Arc<dyn Backend>>,
    ) -> Result<HealthChecker> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let mut given = vec![None; registry.backends().count()];
        for backend in backends {
            let index = registry
                .index_of(backend.id())
                .ok_or_else(|| Error::UnknownBackend(backend.id().clone()))?;
            given[index] = Some(backend);
        }
        let mut work = Vec::new();
        for (index, (id, backend)) in registry.backends().zip(given).enumerate() {
            if !registry.check_settings(index).enabled {
                continue;
            }
            let backend = backend.ok_or_else(|| Error::Unprobed(id.clone()))?;
            work.push((index, backend));
        }
        let (stop, stopped) = watch::channel(());
        let (pending_tx, pending) = watch::channel(work.len());
        let pending_tx = Arc::new(pending_tx);
        let mut tasks = JoinSet::new();
        for (index, backend) in work {
            let task = probe_loop(
                registry.clone(),
                index,
                backend,
                stopped.clone(),
                Arc::clone(&pending_tx),
            );
            tasks.spawn_on(task, &handle);
        }
        Ok(HealthChecker { tasks, stop: Some(stop), pending })
    }

    /// Resolves once every checked backend has had its first probe answered (each within
    /// its `timeout`): await it before serving so no request meets an unprobed backend.
    pub async fn ready(&self) {
        let mut pending = self.pending.clone();
        // An error means the checker stopped; nothing more to wait for.
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Stop probing and wait for every task to finish. Probes in flight are dropped.
    pub async fn shutdown(mut self) {
        self.stop.take();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecker").field("tasks", &self.tasks.len()).finish_non_exhaustive()
    }
}

async fn probe_loop(
    registry: HealthRegistry,
    index: usize,
    backend: Arc<dyn Backend>,
    mut stop: watch::Receiver<()>,
    pending: Arc<watch::Sender<usize>>,
) {
    let cfg = registry.check_settings(index);
    let mut first = true;
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = stop.changed() => return,
            r = tokio::time::timeout(cfg.timeout, backend.probe()) => r,
        };
        let result = result.unwrap_or_else(|_| {
            Err(BackendError::new(ErrorCode::UpstreamTimeout, "health probe timed out"))
        });
        let next = registry.observe_probe(index, result);
        if first {
            first = false;
            pending.send_modify(|n| *n = n.saturating_sub(1));
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            () = tokio::time::sleep_until(started + next) => {}
        }
    }
}
