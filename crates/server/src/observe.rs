//! Observing requests: the per-request context the pipeline fills in ([`RequestCtx`]),
//! and [`Observed`], the response body wrapper that records a request when its response
//! ends — for streams, at the end of the stream — in metrics and one access-log event.
//!
//! The access log (`target: "switchyard::access"`, level info; `/health` and the metrics
//! endpoint at debug) carries the request id, method, path label, status, latency, the
//! router's own time, the backend, the model, the client key's *name*, the client
//! address and the tokens the answer's `usage` reported. It never carries a header
//! value, a key, a query string or any prompt or completion text.
//! `logging.level: info,switchyard::access=warn` turns it off.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Frame, SizeHint};
use memchr::memmem::Finder;
use switchyard_core::BackendError;

use crate::auth::Caller;
use crate::body::Body;
use crate::metrics::{MethodLabel, Route, StreamOutcome};
use crate::state::AppState;

/// Response header with the router's own time in microseconds (opt-in:
/// `server.expose_overhead_header`).
pub(crate) const OVERHEAD_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-switchyard-overhead-us");

static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"usage\""));
static PROMPT_TOKENS: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"prompt_tokens\""));
static INPUT_TOKENS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"input_tokens\""));
static COMPLETION_TOKENS: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"completion_tokens\""));
static OUTPUT_TOKENS: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(b"\"output_tokens\""));

/// What the pipeline learns about one request, for metrics, logs and the overhead header.
pub(crate) struct RequestCtx {
    pub(crate) request_id: HeaderValue,
    pub(crate) started: Instant,
    pub(crate) peer: IpAddr,
    pub(crate) route: Route,
    pub(crate) method: MethodLabel,
    /// The authenticated client (anonymous when auth is off).
    pub(crate) caller: Caller,
    /// The client's address after trusted proxies (set when rate limits look at it).
    pub(crate) client_ip: Option<IpAddr>,
    /// Time spent waiting on upstreams (and retry backoff) before the response head.
    pub(crate) upstream: Duration,
    /// An upstream answered (the router overhead histogram covers only these).
    pub(crate) proxied: bool,
    /// The backend that answered, by index into the state's spec.
    pub(crate) backend: Option<usize>,
    /// The model that answered (a served name: bounded).
    pub(crate) model: Option<Arc<str>>,
}

/// A response body that records its request when it ends (or is dropped).
pub(crate) struct Observed {
    inner: Body,
    record: Option<Record>,
}

/// Everything the access log and metrics need at the end.
struct Record {
    state: Arc<AppState>,
    request_id: HeaderValue,
    started: Instant,
    overhead: Duration,
    proxied: bool,
    route: Route,
    method: MethodLabel,
    status: u16,
    caller: Caller,
    client: IpAddr,
    backend: Option<usize>,
    model: Option<Arc<str>>,
    stream: bool,
    /// Scan data frames for `usage` (successful inference answers).
    scan_usage: bool,
    first_event_seen: bool,
    failed: bool,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl RequestCtx {
    pub(crate) fn new(request_id: HeaderValue, started: Instant, peer: IpAddr) -> RequestCtx {
        RequestCtx {
            request_id,
            started,
            peer,
            route: Route::OTHER,
            method: MethodLabel::of(&http::Method::GET),
            caller: Caller::default(),
            client_ip: None,
            upstream: Duration::ZERO,
            proxied: false,
            backend: None,
            model: None,
        }
    }

    /// The router's own time so far.
    pub(crate) fn overhead(&self) -> Duration {
        self.started.elapsed().saturating_sub(self.upstream)
    }
}

impl Observed {
    /// Wrap `response`'s body; `ctx` is what the pipeline learned.
    pub(crate) fn wrap(
        response: http::Response<Body>,
        ctx: RequestCtx,
        overhead: Duration,
        state: Arc<AppState>,
    ) -> http::Response<Observed> {
        let status = response.status().as_u16();
        let stream = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let record = Record {
            state,
            request_id: ctx.request_id,
            started: ctx.started,
            overhead,
            proxied: ctx.proxied,
            route: ctx.route,
            method: ctx.method,
            status,
            caller: ctx.caller,
            client: ctx.client_ip.unwrap_or(ctx.peer),
            backend: ctx.backend,
            model: ctx.model,
            stream,
            scan_usage: ctx.route.is_inference() && (200..300).contains(&status),
            first_event_seen: false,
            failed: false,
            prompt_tokens: None,
            completion_tokens: None,
        };
        response.map(|inner| Observed { inner, record: Some(record) })
    }

    fn finish(&mut self, outcome: StreamOutcome) {
        if let Some(record) = self.record.take() {
            record.finish(outcome);
        }
    }
}

impl Record {
    fn frame(&mut self, data: &Bytes) {
        if self.stream && !self.first_event_seen {
            self.first_event_seen = true;
            if self.scan_usage
                && let Some(model) = &self.model
            {
                let ttft = self.started.elapsed().as_secs_f64();
                crate::metrics::metrics().model(model).time_to_first_token.record(ttft);
            }
        }
        if self.stream && data.starts_with(b"data: {\"error\"") {
            self.failed = true;
        }
        if self.scan_usage
            && let Some(at) = USAGE.find(data)
        {
            let rest = &data[at..];
            if let Some(n) =
                number_after(rest, &PROMPT_TOKENS).or_else(|| number_after(rest, &INPUT_TOKENS))
            {
                self.prompt_tokens = Some(n);
            }
            if let Some(n) = number_after(rest, &COMPLETION_TOKENS)
                .or_else(|| number_after(rest, &OUTPUT_TOKENS))
            {
                self.completion_tokens = Some(n);
            }
        }
    }

    fn finish(self, outcome: StreamOutcome) {
        let outcome = if self.failed { StreamOutcome::Failed } else { outcome };
        let elapsed = self.started.elapsed();
        let metrics = crate::metrics::metrics();
        metrics.request(self.method, self.route, self.status);
        metrics.duration(self.method, self.route, elapsed);
        if self.proxied {
            metrics.overhead.record(self.overhead.as_secs_f64());
        }
        if self.stream {
            metrics.stream(outcome);
        }
        if let Some(model) = &self.model
            && (self.prompt_tokens.is_some() || self.completion_tokens.is_some())
        {
            let handles = metrics.model(model);
            handles.prompt_tokens.increment(self.prompt_tokens.unwrap_or(0));
            handles.completion_tokens.increment(self.completion_tokens.unwrap_or(0));
        }
        self.log(outcome, elapsed);
    }

    fn log(&self, outcome: StreamOutcome, elapsed: Duration) {
        let quiet =
            matches!(self.route.label(), "/health" | "/api/health") || self.route == Route::METRICS;
        let enabled = if quiet {
            tracing::enabled!(target: "switchyard::access", tracing::Level::DEBUG)
        } else {
            tracing::enabled!(target: "switchyard::access", tracing::Level::INFO)
        };
        if !enabled {
            return;
        }
        let id = self.request_id.to_str().unwrap_or("-");
        let backend = self
            .backend
            .and_then(|i| self.state.spec.backends.get(i))
            .map_or("-", |b| b.backend.id().as_str());
        let model = self.model.as_deref().unwrap_or("-");
        let key = self.state.auth.name(self.caller).map_or("-", |n| n);
        let outcome = match (self.stream, outcome) {
            (false, StreamOutcome::ClientGone) => "client_gone",
            (false, _) => "completed",
            (true, StreamOutcome::Completed) => "stream_completed",
            (true, StreamOutcome::Failed) => "stream_failed",
            (true, StreamOutcome::ClientGone) => "stream_client_gone",
        };
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let overhead_us = self.overhead.as_micros() as u64;
        let prompt_tokens = self.prompt_tokens.unwrap_or(0);
        let completion_tokens = self.completion_tokens.unwrap_or(0);
        macro_rules! access {
            ($level:ident) => {
                tracing::$level!(
                    target: "switchyard::access",
                    request_id = id,
                    method = self.method.label(),
                    path = self.route.label(),
                    status = self.status,
                    latency_ms,
                    overhead_us,
                    backend,
                    model,
                    key,
                    client = %self.client,
                    prompt_tokens,
                    completion_tokens,
                    outcome,
                    "request"
                )
            };
        }
        if quiet {
            access!(debug);
        } else {
            access!(info);
        }
    }
}

/// The unsigned integer after the quoted name `name` finds and a colon in `json`, if
/// there is one. The finders are built once: building one costs more than the search.
fn number_after(json: &[u8], name: &Finder<'_>) -> Option<u64> {
    let at = name.find(json)? + name.needle().len();
    let rest = json[at..].trim_ascii_start().strip_prefix(b":")?.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    crate::conn::decimal(&rest[..digits])
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = BackendError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BackendError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(record), Some(data)) = (this.record.as_mut(), frame.data_ref()) {
                    record.frame(data);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = this.record.as_mut() {
                    record.failed = true;
                }
                this.finish(StreamOutcome::Failed);
            }
            Poll::Ready(None) => this.finish(StreamOutcome::Completed),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so: that is an end too.
        let outcome = if http_body::Body::is_end_stream(&self.inner) {
            StreamOutcome::Completed
        } else {
            StreamOutcome::ClientGone
        };
        self.finish(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_numbers_are_read_from_openai_and_anthropic_shapes() {
        let openai =
            br#"{"usage": {"prompt_tokens": 12, "completion_tokens":7,"total_tokens":19}}"#;
        assert_eq!(number_after(openai, &Finder::new(b"\"prompt_tokens\"")), Some(12));
        assert_eq!(number_after(openai, &Finder::new(b"\"completion_tokens\"")), Some(7));
        let anthropic = br#"{"usage":{"input_tokens":3,"output_tokens": 41}}"#;
        assert_eq!(number_after(anthropic, &Finder::new(b"\"output_tokens\"")), Some(41));
        assert_eq!(
            number_after(b"\"prompt_tokens\": null", &Finder::new(b"\"prompt_tokens\"")),
            None
        );
        assert_eq!(number_after(b"nothing", &Finder::new(b"\"prompt_tokens\"")), None);
        let name = Finder::new(b"\"n\"");
        assert_eq!(number_after(b"\"n\":18446744073709551615", &name), Some(u64::MAX));
        assert_eq!(number_after(b"\"n\":18446744073709551616", &name), None, "overflow");
    }
}
