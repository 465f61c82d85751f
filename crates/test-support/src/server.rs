//! The I/O half of the mock: listener, connections, request recording, timing.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, Sleep};

use crate::error::{Error, Result};
use crate::render::{Rendered, presented_key, render_request};
use crate::script::{Ending, Script};

/// How long a `reset_after` stream waits after its last frame before resetting the
/// connection, so the frames reach the peer's socket before the reset does.
const RESET_GRACE: Duration = Duration::from_millis(20);

/// A scriptable mock LLM upstream on `127.0.0.1`, serving HTTP/1.1 and h2c.
///
/// Dropping it (or [`MockUpstream::shutdown`]) closes the listener and resets every
/// open connection, like a killed process; [`MockUpstream::restart`] listens again on
/// the same port.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use switchyard_test_support::{MockUpstream, Script};
///
/// let mock = MockUpstream::start(Script::status(503)).await?;
/// mock.set_sequence([Script::status(503).times(2), Script::ok()]);
/// assert!(mock.url().starts_with("http://127.0.0.1:"));
/// assert_eq!(mock.request_count(), 0);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MockUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path, without the query.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// The HTTP version.
    pub version: Version,
    /// Every header received.
    pub headers: HeaderMap,
    /// The body, complete.
    pub body: Bytes,
    /// When the request head arrived (tokio's clock, so paused-clock tests work).
    pub received_at: Instant,
    /// Which connection it came on (connections are numbered from 0 in accept order).
    pub connection: u64,
}

/// Counters of a mock's traffic, as one consistent snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MockStats {
    /// Requests received (every path).
    pub requests: usize,
    /// Connections accepted since start.
    pub connections_accepted: usize,
    /// Connections open now.
    pub connections_open: usize,
    /// Connections the mock aborted itself (`reset_after`, shutdown, `kill_connections`).
    pub connections_killed: usize,
    /// SSE response bodies being sent now.
    pub streams_open: usize,
    /// SSE bodies sent to their end (including a clean end after an error event).
    pub streams_completed: usize,
    /// SSE bodies dropped before their end because the peer went away (not counting
    /// the mock's own resets and shutdowns).
    pub streams_cancelled: usize,
    /// Requests held by a `never_answer` script right now.
    pub requests_hanging: usize,
}

#[derive(Debug)]
struct Shared {
    plan: Mutex<Plan>,
    requests: Mutex<Vec<RecordedRequest>>,
    stats: Mutex<MockStats>,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    changed: Notify,
    next_conn: AtomicU64,
}

#[derive(Debug)]
struct Plan {
    queue: VecDeque<Script>,
    default: Script,
    probe: Option<Script>,
}

#[derive(Debug)]
struct ConnEntry {
    task: AbortHandle,
    #[cfg(unix)]
    socket: std::os::fd::OwnedFd,
    killed: Arc<AtomicBool>,
}

#[derive(Clone, Debug)]
struct Conn {
    id: u64,
    killed: Arc<AtomicBool>,
}

/// Removes a connection's entry and counts it closed when its task ends or is aborted.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

/// Counts a never-answered request while it hangs.
struct HangGuard {
    shared: Arc<Shared>,
}

/// The response body: frames with delays between them, then the script's ending.
pub(crate) struct MockBody {
    frames: VecDeque<Bytes>,
    delay: Duration,
    gap_due: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    ending: Ending,
    done: bool,
    reset_scheduled: bool,
    shared: Arc<Shared>,
    conn: Conn,
    stream: bool,
}

impl MockUpstream {
    /// Start a mock on `127.0.0.1:0` answering every request with `script`.
    ///
    /// Must be called inside a tokio runtime (any flavour, paused clock included):
    /// the listener and connections are tasks on it.
    pub async fn start(script: Script) -> Result<Self> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            source,
        })?;
        let shared = Arc::new(Shared {
            plan: Mutex::new(Plan { queue: VecDeque::new(), default: script, probe: None }),
            requests: Mutex::new(Vec::new()),
            stats: Mutex::new(MockStats::default()),
            conns: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            next_conn: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(MockUpstream { shared, addr, accept: Mutex::new(Some(accept)) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL OpenAI clients expect.
    pub fn v1_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Answer every later request with `script` (clears a pending sequence).
    pub fn set_script(&self, script: Script) {
        let mut plan = self.shared.plan.lock();
        plan.queue.clear();
        plan.default = script;
    }

    /// Answer later generation requests (every method but `GET`) with these scripts
    /// in order, each [`Script::times`] times; the last one then stays in force.
    /// `GET` requests (health checks, model lists) never consume the sequence: they
    /// are answered by the last script (or [`MockUpstream::set_probe_script`]).
    pub fn set_sequence(&self, scripts: impl IntoIterator<Item = Script>) {
        let mut queue: VecDeque<Script> = scripts.into_iter().collect();
        let mut plan = self.shared.plan.lock();
        if let Some(last) = queue.pop_back() {
            plan.default = last;
        }
        plan.queue = queue;
    }

    /// Answer the next generation request(s) with `script` ([`Script::times`] of them)
    /// after any already queued, then go back to the current script.
    pub fn push_script(&self, script: Script) {
        self.shared.plan.lock().queue.push_back(script);
    }

    /// Answer `GET` requests (health checks, model lists) with this script instead of
    /// the current one; `None` goes back to the current one.
    pub fn set_probe_script(&self, script: Option<Script>) {
        self.shared.plan.lock().probe = script;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().clone()
    }

    /// The requests received for `path` (compared without the query).
    pub fn requests_for(&self, path: &str) -> Vec<RecordedRequest> {
        self.shared.requests.lock().iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The last request received.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.requests.lock().last().cloned()
    }

    /// The last `POST` received: the last API call, whatever health probes or model
    /// listings (`GET`s) a router sent after it.
    pub fn last_post(&self) -> Option<RecordedRequest> {
        self.shared.requests.lock().iter().rev().find(|r| r.method == Method::POST).cloned()
    }

    /// How many requests were received.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().len()
    }

    /// How many requests were received for `path` (compared without the query).
    pub fn request_count_for(&self, path: &str) -> usize {
        self.shared.requests.lock().iter().filter(|r| r.path == path).count()
    }

    /// Request counts per path.
    pub fn counts_by_path(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for request in self.shared.requests.lock().iter() {
            *counts.entry(request.path.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Forget the recorded requests (counters in [`MockStats`] keep counting).
    pub fn clear_requests(&self) {
        self.shared.requests.lock().clear();
    }

    /// A snapshot of the traffic counters.
    pub fn stats(&self) -> MockStats {
        *self.shared.stats.lock()
    }

    /// Connections open now.
    pub fn connections_open(&self) -> usize {
        self.stats().connections_open
    }

    /// Connections accepted since start.
    pub fn connections_accepted(&self) -> usize {
        self.stats().connections_accepted
    }

    /// Wait until `condition` holds for the counters, at most `timeout`; returns
    /// whether it held. Woken on every counter change, so no polling delay.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&MockStats) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&self.stats()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return condition(&self.stats());
            }
        }
    }

    /// Wait until at least one SSE body was dropped by the peer before its end.
    pub async fn wait_stream_cancelled(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.streams_cancelled >= 1).await
    }

    /// Wait until at least `n` SSE bodies were dropped by the peer before their end.
    pub async fn wait_streams_cancelled(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.streams_cancelled >= n).await
    }

    /// Wait until at least `n` requests were received.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.requests >= n).await
    }

    /// Wait until at most `n` connections are open.
    pub async fn wait_connections_at_most(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.connections_open <= n).await
    }

    /// Reset every open connection, keep listening.
    pub async fn kill_connections(&self) {
        let ids: Vec<u64> = self.shared.conns.lock().keys().copied().collect();
        for id in ids {
            self.shared.kill(id);
        }
        self.wait_for(Duration::from_secs(1), |s| s.connections_open == 0).await;
    }

    /// Stop listening and reset every open connection, like a killed backend.
    /// Connecting afterwards is refused until [`MockUpstream::restart`].
    pub async fn shutdown(&self) {
        let accept = self.accept.lock().take();
        if let Some(accept) = accept {
            accept.abort();
            let _ = accept.await;
        }
        self.kill_connections().await;
    }

    /// Listen again on the same port after [`MockUpstream::shutdown`] (a no-op while
    /// running). Scripts, records and counters carry over.
    pub async fn restart(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let mut attempt = 0;
        let listener = loop {
            match bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if attempt >= 50 => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&self.shared)));
        *self.accept.lock() = Some(accept);
        Ok(())
    }

    /// Whether the listener is up.
    pub fn is_running(&self) -> bool {
        self.accept.lock().as_ref().is_some_and(|task| !task.is_finished())
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().take() {
            accept.abort();
        }
        let ids: Vec<u64> = self.shared.conns.lock().keys().copied().collect();
        for id in ids {
            self.shared.kill(id);
        }
    }
}

impl RecordedRequest {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body's `model` field (for Gemini, see [`RecordedRequest::path`]).
    pub fn model(&self) -> Option<String> {
        self.json()?.get("model")?.as_str().map(str::to_owned)
    }

    /// The API key presented: `x-api-key`, `x-goog-api-key` or an `Authorization:
    /// Bearer` token, in that order.
    pub fn api_key(&self) -> Option<String> {
        presented_key(&self.headers)
    }

    /// The path with its query, as sent.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

impl Shared {
    fn update(&self, change: impl FnOnce(&mut MockStats)) {
        change(&mut self.stats.lock());
        self.changed.notify_waiters();
    }

    /// The script for a request: `GET`s see the probe or current script; others
    /// consume the sequence.
    fn pick(&self, method: &Method) -> Script {
        let mut plan = self.plan.lock();
        if method == Method::GET {
            return plan.probe.clone().unwrap_or_else(|| plan.default.clone());
        }
        let Some(front) = plan.queue.front_mut() else {
            return plan.default.clone();
        };
        front.times = front.times.saturating_sub(1);
        if front.times == 0 {
            plan.queue.pop_front().unwrap_or_else(|| plan.default.clone())
        } else {
            front.clone()
        }
    }

    /// Abort a connection with a TCP reset.
    fn kill(&self, id: u64) {
        let Some(entry) = self.conns.lock().remove(&id) else {
            return;
        };
        entry.killed.store(true, Ordering::SeqCst);
        #[cfg(unix)]
        {
            // Linger 0: closing the last descriptor sends RST instead of FIN.
            let _ = socket2::SockRef::from(&entry.socket).set_linger(Some(Duration::ZERO));
        }
        entry.task.abort();
        self.update(|s| s.connections_killed += 1);
    }

    fn spawn_connection(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        #[cfg(unix)]
        let socket = {
            use std::os::fd::AsFd;
            match stream.as_fd().try_clone_to_owned() {
                Ok(socket) => socket,
                Err(_) => return,
            }
        };
        let id = self.next_conn.fetch_add(1, Ordering::SeqCst);
        let killed = Arc::new(AtomicBool::new(false));
        let conn = Conn { id, killed: Arc::clone(&killed) };
        self.update(|s| {
            s.connections_accepted += 1;
            s.connections_open += 1;
        });
        // Hold the map while spawning so the task cannot remove its entry before it exists.
        let mut conns = self.conns.lock();
        let shared = Arc::clone(self);
        let task = tokio::spawn(async move {
            let _guard = ConnGuard { shared: Arc::clone(&shared), id };
            let service =
                service_fn(move |request| handle(Arc::clone(&shared), conn.clone(), request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
        conns.insert(
            id,
            ConnEntry {
                task: task.abort_handle(),
                #[cfg(unix)]
                socket,
                killed,
            },
        );
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.conns.lock().remove(&self.id);
        self.shared.update(|s| s.connections_open = s.connections_open.saturating_sub(1));
    }
}

impl Drop for HangGuard {
    fn drop(&mut self) {
        self.shared.update(|s| s.requests_hanging = s.requests_hanging.saturating_sub(1));
    }
}

impl MockBody {
    fn new(rendered: Rendered, delay: Duration, shared: Arc<Shared>, conn: Conn) -> Self {
        if rendered.stream {
            shared.update(|s| s.streams_open += 1);
        }
        MockBody {
            frames: rendered.frames.into(),
            delay,
            gap_due: false,
            sleep: None,
            ending: rendered.ending,
            done: false,
            reset_scheduled: false,
            shared,
            conn,
            stream: rendered.stream,
        }
    }
}

impl http_body::Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = this.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            } else if this.gap_due && !this.frames.is_empty() {
                this.gap_due = false;
                this.sleep = Some(Box::pin(tokio::time::sleep(this.delay)));
                continue;
            }
            if let Some(frame) = this.frames.pop_front() {
                this.gap_due = !this.delay.is_zero();
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            return match this.ending {
                Ending::Complete | Ending::NeverAnswer => {
                    this.done = true;
                    Poll::Ready(None)
                }
                // Never woken on purpose: the connection stays open, silent, until the
                // peer closes it or the mock kills it.
                Ending::Stall => Poll::Pending,
                Ending::Reset => {
                    if !this.reset_scheduled {
                        this.reset_scheduled = true;
                        let shared = Arc::clone(&this.shared);
                        let id = this.conn.id;
                        tokio::spawn(async move {
                            tokio::time::sleep(RESET_GRACE).await;
                            shared.kill(id);
                        });
                    }
                    Poll::Pending
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        !self.stream && self.frames.is_empty() && self.ending == Ending::Complete
    }

    fn size_hint(&self) -> http_body::SizeHint {
        // A non-streaming answer has a known length: hyper sends Content-Length.
        if !self.stream && self.ending == Ending::Complete {
            http_body::SizeHint::with_exact(self.frames.iter().map(|f| f.len() as u64).sum())
        } else {
            http_body::SizeHint::default()
        }
    }
}

impl Drop for MockBody {
    fn drop(&mut self) {
        if !self.stream {
            return;
        }
        let done = self.done;
        let killed = self.conn.killed.load(Ordering::SeqCst);
        self.shared.update(|s| {
            s.streams_open = s.streams_open.saturating_sub(1);
            if done {
                s.streams_completed += 1;
            } else if !killed {
                s.streams_cancelled += 1;
            }
        });
    }
}

/// Bind with `SO_REUSEADDR`, so a restart can take the port back at once.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let bind_error = |source| Error::Bind { addr, source };
    let socket = TcpSocket::new_v4().map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => shared.spawn_connection(stream),
            // Out of descriptors or a transient error: back off briefly, keep serving.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    request: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let received_at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let script = shared.pick(&parts.method);
    let rendered =
        render_request(&script, &parts.method, &path_and_query, Some(&parts.headers), &body);
    shared.requests.lock().push(RecordedRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: parts.version,
        headers: parts.headers,
        body,
        received_at,
        connection: conn.id,
    });
    shared.update(|s| s.requests += 1);
    if rendered.ending == Ending::NeverAnswer {
        shared.update(|s| s.requests_hanging += 1);
        let _hanging = HangGuard { shared: Arc::clone(&shared) };
        std::future::pending::<()>().await;
    }
    if !script.delay.is_zero() {
        tokio::time::sleep(script.delay).await;
    }
    let status = rendered.status;
    let headers = rendered.headers.clone();
    let mut response = Response::new(MockBody::new(rendered, script.chunk_delay, shared, conn));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}
