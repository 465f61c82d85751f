//! Single-flight: identical concurrent requests share one upstream call or stream.
//!
//! The first request for a key (the leader) starts a *flight*: a task spawned on the
//! runtime, owned by no client, that runs the upstream call and appends what it
//! returns to an append-only chunk log. Every request for the same key while the
//! flight is open (followers) subscribes to that log and reads it from the start, so
//! a late joiner is replayed everything it missed and then follows live. When the
//! upstream finishes cleanly the answer goes to the given [`ResponseCache`] (if any)
//! for its TTL, and identical requests after that are served from there. A failure
//! reaches every subscriber after the chunks it had already seen, is never stored,
//! and closes the flight so the next request starts a new one.
//!
//! The leader's client going away changes nothing for the others: the task only
//! stops when *no* subscriber is left, and then drops the upstream call (closing the
//! connection or stopping local generation), as the router does for a lone client.
//!
//! Memory is bounded per flight by `max_flight_bytes`: past it the flight stops
//! accepting joiners and storing, drops what every subscriber has read, and pauses
//! the upstream until the slowest subscriber catches up.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use metrics::{Counter, Gauge, counter, gauge};
use parking_lot::Mutex;
use switchyard_core::sse::SseBoundary;
use switchyard_core::{BackendError, BodyStream, ErrorCode, ResponseBody};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::key::CacheKey;
use crate::metrics::{DEDUP_JOINS, DEDUP_WAITERS};
use crate::response::{CachedResponse, ResponseCache};

const SHARDS: usize = 16;

type FlightMap = HashMap<CacheKey, Arc<Flight>>;

/// Shares upstream calls between identical concurrent requests. Cheap to clone;
/// clones share the flights. Must be used inside a tokio runtime.
#[derive(Clone)]
pub struct SingleFlight {
    inner: Arc<FlightsInner>,
}

/// How a request got its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JoinRole {
    /// It started the upstream call.
    Leader,
    /// It joined a call another request started.
    Follower,
    /// A completed answer was stored and served.
    Cached,
}

/// Whether an answer is one body or a stream of chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// A whole body (one chunk).
    Full,
    /// A stream of chunks, such as server-sent events.
    Stream,
}

/// One request's view of a shared answer: every subscriber of a flight reads the same
/// chunks in the same order from the first. Dropping it unsubscribes; the upstream
/// call stops only when its last subscriber is gone.
pub struct Subscription {
    role: JoinRole,
    source: Source,
}

enum Source {
    Flight { flight: Arc<Flight>, slot: usize, pos: usize, ended: bool, waiter: Option<Gauge> },
    Cached { response: CachedResponse, pos: usize },
}

struct FlightsInner {
    shards: Box<[Mutex<FlightMap>]>,
    max_flight_bytes: usize,
    metrics: FlightMetrics,
}

struct FlightMetrics {
    leaders: Counter,
    followers: Counter,
    cached: Counter,
    waiters: Gauge,
}

struct Flight {
    key: CacheKey,
    owner: Weak<FlightsInner>,
    max_bytes: usize,
    state: Mutex<State>,
    /// Subscribers wait here for chunks and the end.
    changed: Notify,
    /// The producer waits here for subscribers to make room.
    space: Notify,
    abort: OnceLock<AbortHandle>,
    /// The answer came from a store (Redis) rather than the upstream.
    from_store: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Debug)]
enum Phase {
    Pending,
    Running,
    Done,
    Failed(Failure),
    Cancelled,
}

#[derive(Clone, Debug)]
struct Failure {
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
}

struct State {
    phase: Phase,
    kind: Option<BodyKind>,
    chunks: VecDeque<Bytes>,
    /// Position of `chunks[0]` in the whole log.
    base: usize,
    /// Bytes ever appended.
    total: usize,
    /// Bytes in `chunks`.
    buffered: usize,
    /// Complete from the start and within bounds: joinable and storable.
    shareable: bool,
    /// Each subscriber's next position, by slot.
    cursors: Vec<Option<usize>>,
    free: Vec<usize>,
    subscribers: usize,
    boundary: SseBoundary,
}

/// Fails the flight if the task ends without finishing it (a panic in the upstream
/// future), so subscribers never wait forever.
struct DriveGuard {
    flight: Arc<Flight>,
}

impl SingleFlight {
    /// A new set of flights named `name` (the metrics label), each buffering at most
    /// `max_flight_bytes` (see the module docs).
    pub fn new(name: &'static str, max_flight_bytes: usize) -> Self {
        SingleFlight {
            inner: Arc::new(FlightsInner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                max_flight_bytes: max_flight_bytes.max(1),
                metrics: FlightMetrics {
                    leaders: counter!(DEDUP_JOINS, "cache" => name, "role" => "leader"),
                    followers: counter!(DEDUP_JOINS, "cache" => name, "role" => "follower"),
                    cached: counter!(DEDUP_JOINS, "cache" => name, "role" => "cached"),
                    waiters: gauge!(DEDUP_WAITERS, "cache" => name),
                },
            }),
        }
    }

    /// Subscribe to the answer for `key`: the stored one in `store`, else the flight
    /// already running for `key`, else a new flight that calls `start` in a task of
    /// its own (after looking in `store`'s Redis tier, if it has one).
    ///
    /// `start` resolves to the upstream response body, or to the error every
    /// subscriber will see. It runs at most once per flight and never under a lock.
    /// A clean answer is stored in `store` when it completes.
    pub fn join<F, Fut>(
        &self,
        key: CacheKey,
        store: Option<&ResponseCache>,
        start: F,
    ) -> Subscription
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<ResponseBody, BackendError>> + Send + 'static,
    {
        if let Some(found) = store.and_then(|s| s.memory_get(&key)) {
            self.inner.metrics.cached.increment(1);
            return Subscription::cached(found);
        }
        let shard = &self.inner.shards[shard_of(&key)];
        let mut flights = shard.lock();
        if let Some(flight) = flights.get(&key)
            && let Some(slot) = flight.attach()
        {
            let flight = Arc::clone(flight);
            drop(flights);
            if let Some(store) = store {
                store.record_miss();
            }
            self.inner.metrics.followers.increment(1);
            let waiter = self.inner.metrics.waiters.clone();
            waiter.increment(1.0);
            return Subscription {
                role: JoinRole::Follower,
                source: Source::Flight { flight, slot, pos: 0, ended: false, waiter: Some(waiter) },
            };
        }
        // A flight may have completed and been stored since the first look; completion
        // stores before it unregisters, and unregistering takes this lock.
        if let Some(found) = store.and_then(|s| s.peek(&key)) {
            drop(flights);
            self.inner.metrics.cached.increment(1);
            return Subscription::cached(found);
        }
        let flight = Arc::new(Flight::new(
            key.clone(),
            Arc::downgrade(&self.inner),
            self.inner.max_flight_bytes,
        ));
        flights.insert(key, Arc::clone(&flight));
        drop(flights);
        let redis = store.is_some_and(ResponseCache::has_redis);
        if let Some(store) = store.filter(|_| !redis) {
            store.record_miss();
        }
        self.launch(flight, store.cloned(), redis, start)
    }

    /// Run `start` in a flight of its own that nobody joins and that does not look in
    /// `store`, but stores its clean answer there: for requests that must not be
    /// answered from a cache (`Cache-Control: no-cache`) yet may refresh it.
    pub fn start_private<F, Fut>(
        &self,
        key: CacheKey,
        store: Option<&ResponseCache>,
        start: F,
    ) -> Subscription
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<ResponseBody, BackendError>> + Send + 'static,
    {
        let flight = Arc::new(Flight::new(key, Weak::new(), self.inner.max_flight_bytes));
        self.launch(flight, store.cloned(), false, start)
    }

    /// Flights currently running.
    pub fn in_flight(&self) -> usize {
        self.inner.shards.iter().map(|shard| shard.lock().len()).sum()
    }

    fn launch<F, Fut>(
        &self,
        flight: Arc<Flight>,
        store: Option<ResponseCache>,
        redis: bool,
        start: F,
    ) -> Subscription
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<ResponseBody, BackendError>> + Send + 'static,
    {
        self.inner.metrics.leaders.increment(1);
        // Attach the leader before the task exists, so it never sees zero subscribers.
        let slot = flight.attach().unwrap_or(0);
        let subscription = Subscription {
            role: JoinRole::Leader,
            source: Source::Flight {
                flight: Arc::clone(&flight),
                slot,
                pos: 0,
                ended: false,
                waiter: None,
            },
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = runtime.spawn(drive(Arc::clone(&flight), store, redis, start));
                let _ = flight.abort.set(task.abort_handle());
            }
            Err(_) => flight.fail(Failure {
                code: ErrorCode::Internal,
                message: "single-flight used outside a tokio runtime".to_owned(),
                retry_after: None,
            }),
        }
        subscription
    }
}

/// The flight's task: Redis, then the upstream, then store.
async fn drive<F, Fut>(flight: Arc<Flight>, store: Option<ResponseCache>, redis: bool, start: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<ResponseBody, BackendError>> + Send + 'static,
{
    let _guard = DriveGuard { flight: Arc::clone(&flight) };
    if redis && let Some(store) = &store {
        if let Some(found) = store.redis_get(&flight.key).await {
            flight.from_store.store(true, std::sync::atomic::Ordering::Release);
            flight.begin(if found.is_stream() { BodyKind::Stream } else { BodyKind::Full });
            for chunk in found.chunks() {
                if !flight.push(chunk.clone()).await {
                    return;
                }
            }
            // Already in memory: redis_get copied it there.
            flight.complete();
            return;
        }
        store.record_miss();
    }
    match start().await {
        Err(error) => flight.fail(Failure::from(&error)),
        Ok(ResponseBody::Full(body)) => {
            flight.begin(BodyKind::Full);
            if !flight.push(body).await {
                return;
            }
            finish(&flight, store.as_ref());
        }
        Ok(ResponseBody::Stream(mut stream)) => {
            flight.begin(BodyKind::Stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(chunk) if chunk.is_empty() => {}
                    Ok(chunk) => {
                        if !flight.push(chunk).await {
                            return;
                        }
                    }
                    Err(error) => {
                        flight.fail(Failure::from(&error));
                        return;
                    }
                }
            }
            finish(&flight, store.as_ref());
        }
    }
}

fn finish(flight: &Arc<Flight>, store: Option<&ResponseCache>) {
    if let (Some(response), Some(store)) = (flight.complete_and_take(), store) {
        store.insert(flight.key.clone(), response);
    }
    flight.unregister();
}

fn shard_of(key: &CacheKey) -> usize {
    (key.lo() as usize) % SHARDS
}

impl Flight {
    fn new(key: CacheKey, owner: Weak<FlightsInner>, max_bytes: usize) -> Self {
        Flight {
            key,
            owner,
            max_bytes,
            state: Mutex::new(State {
                phase: Phase::Pending,
                kind: None,
                chunks: VecDeque::new(),
                base: 0,
                total: 0,
                buffered: 0,
                shareable: true,
                cursors: Vec::new(),
                free: Vec::new(),
                subscribers: 0,
                boundary: SseBoundary::new(),
            }),
            changed: Notify::new(),
            space: Notify::new(),
            abort: OnceLock::new(),
            from_store: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Add a subscriber reading from the start, if the flight can still be joined.
    fn attach(&self) -> Option<usize> {
        let mut st = self.state.lock();
        if !st.shareable || matches!(st.phase, Phase::Failed(_) | Phase::Cancelled) {
            return None;
        }
        let slot = match st.free.pop() {
            Some(slot) => {
                st.cursors[slot] = Some(0);
                slot
            }
            None => {
                st.cursors.push(Some(0));
                st.cursors.len() - 1
            }
        };
        st.subscribers += 1;
        Some(slot)
    }

    fn detach(&self, slot: usize) {
        let cancel = {
            let mut st = self.state.lock();
            if st.cursors.get(slot).copied().flatten().is_none() {
                return;
            }
            st.cursors[slot] = None;
            st.free.push(slot);
            st.subscribers -= 1;
            let cancel = st.subscribers == 0 && matches!(st.phase, Phase::Pending | Phase::Running);
            if cancel {
                st.phase = Phase::Cancelled;
            }
            cancel
        };
        if cancel {
            if let Some(task) = self.abort.get() {
                task.abort();
            }
            self.unregister();
        }
        // A slow reader leaving may make room for the producer.
        self.space.notify_one();
    }

    fn begin(&self, kind: BodyKind) {
        {
            let mut st = self.state.lock();
            if !matches!(st.phase, Phase::Pending) {
                return;
            }
            st.phase = Phase::Running;
            st.kind = Some(kind);
        }
        self.changed.notify_waiters();
    }

    /// Append a chunk, waiting for room if the flight is over its bound. False when
    /// nobody is listening any more: the caller must stop.
    async fn push(&self, chunk: Bytes) -> bool {
        loop {
            let space = self.space.notified();
            let (pushed, unregister) = {
                let mut st = self.state.lock();
                if st.subscribers == 0 || !matches!(st.phase, Phase::Running) {
                    return false;
                }
                let mut unregister = false;
                if st.shareable && st.total + chunk.len() > self.max_bytes {
                    st.shareable = false;
                    unregister = true;
                }
                let fits = st.shareable || {
                    let end = st.base + st.chunks.len();
                    let oldest = st.cursors.iter().flatten().copied().min().unwrap_or(end);
                    while st.base < oldest {
                        if let Some(old) = st.chunks.pop_front() {
                            st.buffered -= old.len();
                        }
                        st.base += 1;
                    }
                    st.buffered == 0 || st.buffered + chunk.len() <= self.max_bytes
                };
                if fits {
                    if matches!(st.kind, Some(BodyKind::Stream)) {
                        st.boundary.scan(&chunk);
                    }
                    st.total += chunk.len();
                    st.buffered += chunk.len();
                    st.chunks.push_back(chunk.clone());
                }
                (fits, unregister)
            };
            if unregister {
                self.unregister();
            }
            if pushed {
                self.changed.notify_waiters();
                return true;
            }
            space.await;
        }
    }

    /// Mark the flight done; the storable answer, if it is complete and shareable.
    fn complete_and_take(&self) -> Option<CachedResponse> {
        let response = {
            let mut st = self.state.lock();
            if !matches!(st.phase, Phase::Running) {
                return None;
            }
            st.phase = Phase::Done;
            let complete = st.shareable && st.base == 0 && st.total > 0;
            match st.kind {
                Some(BodyKind::Full) if complete && st.chunks.len() == 1 => {
                    st.chunks.front().cloned().map(CachedResponse::full)
                }
                Some(BodyKind::Stream) if complete && st.boundary.at_boundary() => {
                    Some(CachedResponse::completed_stream(st.chunks.iter().cloned().collect()))
                }
                _ => None,
            }
        };
        self.changed.notify_waiters();
        response
    }

    fn complete(self: &Arc<Self>) {
        self.complete_and_take();
        self.unregister();
    }

    fn fail(&self, failure: Failure) {
        {
            let mut st = self.state.lock();
            if !matches!(st.phase, Phase::Pending | Phase::Running) {
                return;
            }
            st.phase = Phase::Failed(failure);
        }
        self.changed.notify_waiters();
        self.unregister();
    }

    /// Stop new requests from joining this flight.
    fn unregister(&self) {
        let Some(owner) = self.owner.upgrade() else { return };
        let mut flights = owner.shards[shard_of(&self.key)].lock();
        if flights.get(&self.key).is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), self)) {
            flights.remove(&self.key);
        }
    }
}

impl Drop for DriveGuard {
    fn drop(&mut self) {
        self.flight.fail(Failure {
            code: ErrorCode::Internal,
            message: "the shared upstream call ended unexpectedly".to_owned(),
            retry_after: None,
        });
    }
}

impl Failure {
    fn to_error(&self) -> BackendError {
        BackendError::new(self.code, self.message.clone()).with_retry_after(self.retry_after)
    }
}

impl From<&BackendError> for Failure {
    fn from(error: &BackendError) -> Self {
        Failure { code: error.code, message: error.message.clone(), retry_after: error.retry_after }
    }
}

impl Subscription {
    /// A subscription replaying a stored answer.
    pub fn cached(response: CachedResponse) -> Self {
        Subscription { role: JoinRole::Cached, source: Source::Cached { response, pos: 0 } }
    }

    /// How this request got its answer.
    pub fn role(&self) -> JoinRole {
        self.role
    }

    /// Whether the answer is a stored one: [`JoinRole::Cached`], or a flight that found
    /// it in Redis instead of calling the upstream (known once [`ready`](Self::ready)
    /// returned).
    pub fn from_store(&self) -> bool {
        match &self.source {
            Source::Flight { flight, .. } => {
                flight.from_store.load(std::sync::atomic::Ordering::Acquire)
            }
            _ => self.role == JoinRole::Cached,
        }
    }

    /// Wait until the upstream response head is known: the body kind, or the error
    /// if the call failed before any body.
    pub async fn ready(&mut self) -> Result<BodyKind, BackendError> {
        match &mut self.source {
            Source::Cached { response, .. } => {
                Ok(if response.is_stream() { BodyKind::Stream } else { BodyKind::Full })
            }
            Source::Flight { flight, .. } => loop {
                let notified = flight.changed.notified();
                {
                    let st = flight.state.lock();
                    if let Some(kind) = st.kind {
                        return Ok(kind);
                    }
                    match &st.phase {
                        Phase::Failed(failure) => return Err(failure.to_error()),
                        Phase::Cancelled | Phase::Done => return Err(cancelled()),
                        Phase::Pending | Phase::Running => {}
                    }
                }
                notified.await;
            },
        }
    }

    /// The next chunk; after the last one `None`. A failed call yields its error once
    /// after the chunks that preceded it.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, BackendError>> {
        match &mut self.source {
            Source::Cached { response, pos } => {
                let chunk = response.chunks().get(*pos).cloned()?;
                *pos += 1;
                Some(Ok(chunk))
            }
            Source::Flight { flight, slot, pos, ended, .. } => loop {
                let notified = flight.changed.notified();
                let trimming = {
                    let mut st = flight.state.lock();
                    let Some(index) = pos.checked_sub(st.base) else {
                        // Unreachable: the log is only trimmed below every cursor.
                        *ended = true;
                        return Some(Err(cancelled()));
                    };
                    if let Some(chunk) = st.chunks.get(index).cloned() {
                        *pos += 1;
                        st.cursors[*slot] = Some(*pos);
                        Some((chunk, !st.shareable))
                    } else {
                        match &st.phase {
                            Phase::Done => return None,
                            Phase::Failed(_) | Phase::Cancelled if *ended => return None,
                            Phase::Failed(failure) => {
                                *ended = true;
                                return Some(Err(failure.to_error()));
                            }
                            Phase::Cancelled => {
                                *ended = true;
                                return Some(Err(cancelled()));
                            }
                            Phase::Pending | Phase::Running => None,
                        }
                    }
                };
                if let Some((chunk, trimming)) = trimming {
                    if trimming {
                        flight.space.notify_one();
                    }
                    return Some(Ok(chunk));
                }
                notified.await;
            },
        }
    }

    /// The whole body. For a whole-body answer these are the very bytes every
    /// subscriber gets; a stream is concatenated.
    pub async fn collect(mut self) -> Result<Bytes, BackendError> {
        let mut chunks = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            chunks.push(chunk?);
        }
        Ok(match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.pop().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
                for chunk in &chunks {
                    out.extend_from_slice(chunk);
                }
                out.freeze()
            }
        })
    }

    /// The answer as a response body, as a [`Backend`](switchyard_core::Backend)
    /// would return it: waits for the head, then a whole body or a live stream.
    pub async fn into_body(mut self) -> Result<ResponseBody, BackendError> {
        match self.ready().await? {
            BodyKind::Full => Ok(ResponseBody::Full(self.collect().await?)),
            BodyKind::Stream => Ok(ResponseBody::Stream(self.into_stream())),
        }
    }

    /// The chunks as a stream, from the first.
    pub fn into_stream(self) -> BodyStream {
        Box::pin(futures_util::stream::unfold(self, |mut sub| async move {
            sub.next_chunk().await.map(|item| (item, sub))
        }))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Source::Flight { flight, slot, waiter, .. } = &self.source {
            flight.detach(*slot);
            if let Some(waiter) = waiter {
                waiter.decrement(1.0);
            }
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("role", &self.role).finish_non_exhaustive()
    }
}

fn cancelled() -> BackendError {
    BackendError::new(ErrorCode::Internal, "the shared upstream call was cancelled")
}
