//! The listener: accept loop, HTTP/1.1 + h2c on one port, connection limits, graceful
//! shutdown, and the background tasks (model discovery).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use switchyard_health::HealthChecker;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::routes::RouterSpec;
use crate::service::handle;
use crate::state::{AppState, ServerSettings};

/// A bound, not yet serving, router.
pub struct Server {
    listener: TcpListener,
    state: Arc<AppState>,
    checker: Option<HealthChecker>,
}

impl Server {
    /// Bind the listening socket and learn the backends' models (each backend without
    /// configured models is asked through the model cache).
    pub async fn bind(settings: ServerSettings, spec: RouterSpec) -> Result<Self> {
        let address = settings.bind_address;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address: address.to_string(), source })?;
        let state = Arc::new(AppState::new(settings, spec)?);
        let backends = state.spec.backends.iter().map(|b| b.backend.clone());
        let checker = HealthChecker::spawn(&state.health, backends)
            .map_err(|e| Error::Config(e.to_string()))?;
        // Pre-warm connections whenever a backend becomes healthy (the first passing
        // probe at start-up included).
        tokio::spawn(prewarm_on_recovery(state.clone()));
        // No request meets an unprobed backend: wait for the first round of checks
        // (each bounded by its timeout) and the first model discovery, concurrently.
        tokio::join!(checker.ready(), state.discover_models());
        Ok(Server { listener, state, checker: Some(checker) })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|source| Error::Io { context: "reading the bound address".into(), source })
    }

    /// Serve until `shutdown` resolves, then stop accepting, let in-flight requests
    /// (streams included) finish within the grace period, and return.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let Server { listener, state, checker } = self;
        let settings = state.settings.clone();
        let refresher = tokio::spawn(refresh_models(state.clone()));

        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(settings.header_read_timeout)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(settings.keepalive_timeout / 3))
            .keep_alive_timeout(settings.keepalive_timeout.min(std::time::Duration::from_secs(20)));

        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let state = state.clone();
            let service = service_fn(move |request| handle(state.clone(), request));
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        refresher.abort();
        if let Some(checker) = checker {
            checker.shutdown().await;
        }
        tracing::info!("shutting down: draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections drained"),
            () = tokio::time::sleep(settings.shutdown_grace_period) => {
                tracing::warn!(grace = ?settings.shutdown_grace_period, "grace period over; closing remaining connections");
            }
        }
        Ok(())
    }
}

/// Connections opened ahead of traffic to a backend that (re)joins.
const PREWARM_CONNECTIONS: usize = 2;

async fn prewarm_on_recovery(state: Arc<AppState>) {
    let mut transitions = state.health.subscribe();
    loop {
        match transitions.recv().await {
            Ok(transition) if transition.is_recovery() => {
                let Some(spec) =
                    state.spec.backends.iter().find(|b| *b.backend.id() == transition.backend)
                else {
                    continue;
                };
                let backend = spec.backend.clone();
                tokio::spawn(async move {
                    // Concurrent zero-token probes open pooled connections the next
                    // requests reuse (HTTP/1.1 needs one per concurrent request).
                    let warm = (0..PREWARM_CONNECTIONS).map(|_| backend.probe());
                    let results = futures_util::future::join_all(warm).await;
                    let ok = results.iter().filter(|r| r.is_ok()).count();
                    tracing::debug!(backend = %backend.id(), ok, "pre-warmed connections");
                });
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn refresh_models(state: Arc<AppState>) {
    // Keep routes current without /v1/models traffic: the model cache refreshes stale
    // lists in the background (stale-while-revalidate) whenever it is looked up.
    let period = (state.settings.cache.model_cache_ttl / 2).max(std::time::Duration::from_secs(1));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        state.discover_models().await;
        state.caches.purge_expired();
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

impl RouterSpec {
    /// Bind a server for this spec.
    pub async fn bind(self, settings: ServerSettings) -> Result<Server> {
        Server::bind(settings, self).await
    }
}

/// Run the router a configuration describes until SIGTERM or SIGINT, then drain.
pub async fn run(config: switchyard_config::Config) -> Result<()> {
    let factory = switchyard_backends::ClientFactory::new(crate::convert::client_settings(&config));
    // Loading the embedded model is blocking work: keep it off the async workers.
    let (config, spec) = tokio::task::spawn_blocking(move || {
        let spec = crate::convert::router_spec(&config, &factory);
        (config, spec)
    })
    .await
    .map_err(|e| Error::Model(format!("loading backends panicked: {e}")))?;
    let spec = spec?;
    let server = Server::bind(crate::convert::server_settings(&config), spec).await?;
    let address = server.local_addr()?;
    tracing::info!(%address, backends = config.backends.len(), "switchyard listening");
    server.serve(shutdown_signal()).await
}
