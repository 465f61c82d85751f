//! The listener: accept loop, HTTP/1.1 + h2c on one port (or HTTPS with HTTP/2 by
//! ALPN), connection limits, graceful shutdown, and the background tasks (model
//! discovery, pre-warming, configuration reload).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_config::Config;
use switchyard_health::HealthChecker;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::conn::{Conn, Limits};
use crate::error::{Error, Result};
use crate::metrics::MetricsRender;
use crate::reload::{ConfigLoader, Live};
use crate::routes::RouterSpec;
use crate::state::{AppState, ServerSettings};

/// A bound, not yet serving, router.
pub struct Server {
    listener: TcpListener,
    live: Arc<Live>,
    tls: Option<TlsAcceptor>,
}

/// What a router started from a configuration needs besides it.
#[derive(Clone, Default)]
pub struct Options {
    /// How to read the configuration again on reload (file watch, `SIGHUP`,
    /// `POST /admin/config/reload`); `None`: no reload.
    pub reload: Option<ConfigLoader>,
    /// Renders `/metrics` (the installed exporter's handle); `None`: no metrics
    /// endpoint.
    pub metrics: Option<MetricsRender>,
}

impl Server {
    /// Bind the listening socket and learn the backends' models (each backend without
    /// configured models is asked through the model cache).
    pub async fn bind(settings: ServerSettings, spec: RouterSpec) -> Result<Self> {
        let (listener, tls) = listen(&settings).await?;
        let (state, checker, transitions) = start(settings, spec).await?;
        let live = Arc::new(Live::fixed(state, Some(checker)));
        tokio::spawn(prewarm_on_recovery(Arc::downgrade(&live), transitions));
        Ok(Server { listener, live, tls })
    }

    /// Bind a router for `config` (the key file read, every backend built), able to
    /// reload it through `options.reload`.
    pub async fn from_config(config: Config, options: Options) -> Result<Self> {
        let factory =
            switchyard_backends::ClientFactory::new(crate::convert::client_settings(&config));
        let settings = crate::convert::load_settings(&config)?;
        // Loading the embedded model is blocking work: keep it off the async workers.
        let (config, factory, spec) = tokio::task::spawn_blocking(move || {
            let spec = crate::convert::router_spec(&config, &factory);
            (config, factory, spec)
        })
        .await
        .map_err(|e| Error::Model(format!("loading backends panicked: {e}")))?;
        let spec = spec?;
        let (listener, tls) = listen(&settings).await?;
        let (state, checker, transitions) = start(settings, spec).await?;
        let live =
            Arc::new(Live::from_config(state, Some(checker), config, options.reload, factory));
        if let Some(render) = options.metrics {
            live.set_render(render);
        }
        tokio::spawn(prewarm_on_recovery(Arc::downgrade(&live), transitions));
        Ok(Server { listener, live, tls })
    }

    /// Serve `/metrics` through `render` (the installed exporter's handle).
    #[must_use]
    pub fn with_metrics(self, render: MetricsRender) -> Self {
        self.live.set_render(render);
        self
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
        let Server { listener, live, tls } = self;
        let mut state = live.state();
        let max_connections = state.settings.max_connections.max(1);
        let mut tasks = vec![
            tokio::spawn(refresh_models(Arc::downgrade(&live))),
            tokio::spawn(anchor_timers()),
        ];
        if live.can_reload() {
            tasks.push(tokio::spawn(crate::reload::watch_files(Arc::downgrade(&live))));
            tasks.push(tokio::spawn(crate::reload::reload_on_hangup(Arc::downgrade(&live))));
        }
        let mut hyper = Arc::new(crate::conn::hyper_builder(&state.settings));
        let mut limits = Limits::of(&state.settings);
        let active = crate::metrics::metrics().active_connections.clone();

        // Connections watch this to stop: idle ones close, busy ones after their answer.
        let (stop, stopping) = tokio::sync::watch::channel(false);
        // Every open connection holds one slot; all slots back means all closed.
        let slot_count = u32::try_from(max_connections).unwrap_or(u32::MAX);
        let slots = Arc::new(Semaphore::new(slot_count as usize));
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
            // Connection settings follow reloads; each connection keeps the ones it
            // started with.
            let current = live.state();
            if !Arc::ptr_eq(&current, &state) {
                if current.settings.header_read_timeout != state.settings.header_read_timeout
                    || current.settings.keepalive_timeout != state.settings.keepalive_timeout
                {
                    hyper = Arc::new(crate::conn::hyper_builder(&current.settings));
                }
                limits = Limits::of(&current.settings);
                state = current;
            }
            let live = live.clone();
            let open = Open::new(&active, permit);
            let stopping = stopping.clone();
            match &tls {
                None => {
                    let conn = Conn::new(stream, peer, live, limits, hyper.clone(), stopping);
                    tokio::spawn(async move {
                        conn.serve().await;
                        drop(open);
                    });
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    let limit = state.settings.header_read_timeout;
                    let hyper = hyper.clone();
                    tokio::spawn(async move {
                        let stream = match tokio::time::timeout(limit, handshake).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        crate::conn::serve_with_hyper(stream, peer, live, &hyper, stopping).await;
                        drop(open);
                    });
                }
            }
        }
        drop(listener);
        for task in tasks {
            task.abort();
        }
        live.stop_checks().await;
        let grace = live.state().settings.shutdown_grace_period;
        tracing::info!("shutting down: draining in-flight requests");
        stop.send_replace(true);
        tokio::select! {
            _ = slots.acquire_many(slot_count) => tracing::info!("all connections drained"),
            () = tokio::time::sleep(grace) => {
                tracing::warn!(?grace, "grace period over; closing remaining connections");
            }
        }
        Ok(())
    }
}

/// One open client connection: counted in `active_connections`, holding its slot.
struct Open {
    gauge: metrics::Gauge,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Open {
    fn new(gauge: &metrics::Gauge, permit: tokio::sync::OwnedSemaphorePermit) -> Open {
        gauge.increment(1.0);
        Open { gauge: gauge.clone(), _permit: permit }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// Bind the listener and, with `server.tls`, load the certificate.
async fn listen(settings: &ServerSettings) -> Result<(TcpListener, Option<TlsAcceptor>)> {
    let tls = settings.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let address = settings.bind_address;
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| Error::Bind { address: address.to_string(), source })?;
    Ok((listener, tls))
}

/// Build the state, start health checks, and wait for the first round of checks (each
/// bounded by its timeout) and the first model discovery, so no request meets an
/// unprobed backend.
async fn start(
    settings: ServerSettings,
    spec: RouterSpec,
) -> Result<(AppState, HealthChecker, Transitions)> {
    let state = AppState::new(settings, spec)?;
    // Subscribed before the first probes, so the first recoveries pre-warm too.
    let transitions = state.health.subscribe();
    let backends = state.spec.backends.iter().map(|b| b.backend.clone());
    let checker =
        HealthChecker::spawn(&state.health, backends).map_err(|e| Error::Config(e.to_string()))?;
    tokio::join!(checker.ready(), state.discover_models());
    Ok((state, checker, transitions))
}

type Transitions = tokio::sync::broadcast::Receiver<switchyard_health::Transition>;

/// Connections opened ahead of traffic to a backend that (re)joins.
const PREWARM_CONNECTIONS: usize = 2;

async fn prewarm_on_recovery(live: std::sync::Weak<Live>, mut transitions: Transitions) {
    // Reloads keep the transition channel: one subscription lasts.
    loop {
        match transitions.recv().await {
            Ok(transition) if transition.is_recovery() => {
                let Some(live) = live.upgrade() else { return };
                let state = live.state();
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

/// How far ahead tokio's timer driver always has a wake-up: see [`anchor_timers`].
const TIMER_ANCHOR: std::time::Duration = std::time::Duration::from_millis(500);

/// Keep a timer due within [`TIMER_ANCHOR`]. When a task arms a timer that is due
/// before the driver's next planned wake-up, tokio unparks the driver: one `eventfd`
/// write, and the next `epoll_wait` returns at once. An idle router's next wake-up is a
/// connection's keep-alive deadline a minute away, so every request's first-byte
/// timeout (30 s) did that: one system call per request more than the four a proxy
/// needs, on every request that arrives at a quiet router. With this tick due sooner
/// than any request timeout, arming one never unparks; the cost is two wake-ups a
/// second.
async fn anchor_timers() {
    let mut tick = tokio::time::interval(TIMER_ANCHOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
    }
}

async fn refresh_models(live: std::sync::Weak<Live>) {
    // Keep routes current without /v1/models traffic: the model cache refreshes stale
    // lists in the background (stale-while-revalidate) whenever it is looked up.
    loop {
        let Some(state) = live.upgrade().map(|live| live.state()) else { return };
        let period =
            (state.settings.cache.model_cache_ttl / 2).max(std::time::Duration::from_secs(1));
        drop(state);
        tokio::time::sleep(period).await;
        let Some(state) = live.upgrade().map(|live| live.state()) else { return };
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
pub async fn run(config: Config) -> Result<()> {
    run_with(config, Options::default()).await
}

/// [`run`] with reload and metrics (what the binary calls).
pub async fn run_with(config: Config, options: Options) -> Result<()> {
    let backends = config.backends.len();
    let tls = config.server.tls.is_some();
    let server = Server::from_config(config, options).await?;
    let address = server.local_addr()?;
    tracing::info!(%address, backends, tls, "switchyard listening");
    server.serve(shutdown_signal()).await
}
