//! What the translated adapters (Anthropic, Gemini) share: the pooled client, the
//! connection limit, static headers and the request/response plumbing around
//! [`exchange`]. Translation itself lives in [`crate::translate`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use switchyard_core::{
    BackendError, BackendId, BackendResponse, BodyStream, ErrorCode, ResponseBody,
};
use tokio::sync::Semaphore;

use crate::client::{ClientFactory, ClientKey, HttpClient, HttpVersion};
use crate::error::Result;
use crate::openai::static_headers;
use crate::upstream::{Exchange, Timeouts, exchange, relay_headers};

/// One remote API: client, limit, headers and timeouts.
pub(crate) struct Remote {
    pub(crate) id: BackendId,
    client: HttpClient,
    limit: Arc<Semaphore>,
    static_headers: HeaderMap,
    pub(crate) timeouts: Timeouts,
}

/// What [`Remote::new`] needs.
pub(crate) struct RemoteSettings<'a> {
    pub(crate) name: &'a str,
    pub(crate) http: HttpVersion,
    pub(crate) timeouts: Timeouts,
    pub(crate) max_connections: usize,
    pub(crate) ca_file: Option<&'a PathBuf>,
    /// Credential headers (marked sensitive), then the configured extra headers.
    pub(crate) auth: Vec<(HeaderName, String)>,
    pub(crate) headers: &'a [(String, String)],
}

impl Remote {
    pub(crate) fn new(settings: RemoteSettings<'_>, factory: &ClientFactory) -> Result<Self> {
        let mut headers = HeaderMap::new();
        for (name, value) in settings.auth {
            headers.extend(static_headers(settings.name, Some((name, value)), &[])?);
        }
        for (name, value) in static_headers(settings.name, None, settings.headers)? {
            if let Some(name) = name {
                headers.append(name, value);
            }
        }
        let client = factory.client(ClientKey {
            version: settings.http,
            connect_timeout: settings.timeouts.connect,
            ca_file: settings.ca_file.cloned(),
        })?;
        Ok(Remote {
            id: BackendId::new(settings.name),
            client,
            limit: Arc::new(Semaphore::new(settings.max_connections.max(1))),
            static_headers: headers,
            timeouts: settings.timeouts,
        })
    }

    /// A request with the static headers, `content-type: application/json` and
    /// `accept`.
    pub(crate) fn request(
        &self,
        method: Method,
        uri: Uri,
        body: Bytes,
        accept: &'static str,
    ) -> Request<Bytes> {
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.reserve(self.static_headers.len() + 4);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        for (name, value) in &self.static_headers {
            headers.append(name, value.clone());
        }
        request
    }

    /// A POST of `body` to `uri`, with the router's extra headers.
    pub(crate) fn post(
        &self,
        uri: Uri,
        body: Bytes,
        stream: bool,
        extra: &HeaderMap,
    ) -> Request<Bytes> {
        let accept = if stream { "text/event-stream" } else { "application/json" };
        let mut request = self.request(Method::POST, uri, body, accept);
        for (name, value) in extra {
            request.headers_mut().append(name, value.clone());
        }
        request
    }

    /// Send and wait for the response head.
    pub(crate) async fn exchange(&self, request: Request<Bytes>) -> Result<Exchange, BackendError> {
        exchange(&self.client, &self.limit, self.id.as_str(), request, self.timeouts.first_byte)
            .await
    }

    /// Read a whole body.
    pub(crate) async fn collect(
        &self,
        exchange: Exchange,
    ) -> Result<(http::response::Parts, Bytes), BackendError> {
        exchange.collect(self.id.as_str(), self.timeouts.total).await
    }

    /// Relay a body as a stream.
    pub(crate) fn stream(&self, exchange: Exchange) -> (http::response::Parts, BodyStream) {
        let (parts, stream) = exchange.into_stream(
            self.id.as_str(),
            self.timeouts.idle,
            self.timeouts.streaming_total,
        );
        (parts, stream.boxed())
    }

    /// GET a JSON document.
    pub(crate) async fn get_json(&self, uri: Uri) -> Result<(StatusCode, Bytes), BackendError> {
        let request = self.request(Method::GET, uri, Bytes::new(), "application/json");
        let exchange = self.exchange(request).await?;
        let (parts, body) = self.collect(exchange).await?;
        Ok((parts.status, body))
    }

    /// The error for an untranslatable upstream answer.
    pub(crate) fn invalid(&self, error: BackendError) -> BackendError {
        BackendError::new(
            ErrorCode::UpstreamInvalid,
            format!("backend `{}`: {}", self.id, error.message),
        )
    }
}

/// A response with the upstream's relayable headers and a fresh `content-type`.
pub(crate) fn response(
    status: StatusCode,
    upstream: HeaderMap,
    body: ResponseBody,
) -> BackendResponse {
    let mut headers = relay_headers(upstream);
    let content_type = if body.is_stream() { "text/event-stream" } else { "application/json" };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    BackendResponse { status, headers, body }
}

/// Unix seconds now, for `created`.
pub(crate) fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A completion id for providers that send none: time and a process counter.
pub(crate) fn completion_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("chatcmpl-{:x}{nanos:08x}{n:04x}", now_unix())
}

/// Unix seconds of an RFC 3339 timestamp's date and time (`2024-10-22T00:00:00Z`;
/// fractions and offsets ignored); 0 if it does not parse.
pub(crate) fn rfc3339_seconds(text: &str) -> u64 {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = bytes.get(range)?;
        digits
            .iter()
            .try_fold(0i64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0')))
    };
    let parsed = (|| {
        let (y, m, d) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let (hh, mm, ss) = (number(11..13)?, number(14..16)?, number(17..19)?);
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return None;
        }
        // Howard Hinnant's days-from-civil.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        u64::try_from(days * 86_400 + hh * 3_600 + mm * 60 + ss).ok()
    })();
    parsed.unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_parses_known_instants() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), 0);
        assert_eq!(rfc3339_seconds("2023-11-14T22:13:20Z"), 1_700_000_000);
        assert_eq!(rfc3339_seconds("2000-02-29T00:00:00.123+00:00"), 951_782_400);
        assert_eq!(rfc3339_seconds("garbage"), 0);
        assert_eq!(rfc3339_seconds("2024-13-01T00:00:00Z"), 0);
    }

    #[test]
    fn completion_ids_differ() {
        assert_ne!(completion_id(), completion_id());
        assert!(completion_id().starts_with("chatcmpl-"));
    }
}
