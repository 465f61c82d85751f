//! The OpenAI-compatible adapter: OpenAI itself, vLLM, Ollama (`/v1`), llama.cpp
//! server, LM Studio, LocalAI. Request bodies pass through as the original bytes; the
//! model name is rewritten only when an alias maps to a different upstream name.

use std::fmt;
use std::path::PathBuf;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use switchyard_core::openai::{Model, ModelList};
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BoxFuture, Endpoint,
    ErrorCode, ResponseBody, rewrite_model,
};

use crate::client::{ClientFactory, HttpVersion};
use crate::error::{Error, Result};
use crate::remote::{Remote, RemoteSettings};
use crate::upstream::{Timeouts, relay_headers};

/// Settings of one OpenAI-compatible backend.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiSettings {
    /// The backend's name (unique in a configuration).
    pub name: String,
    /// The API base: `http://host:8000` (`/v1` is appended) or a full base path such
    /// as `https://api.openai.com/v1`.
    pub url: String,
    /// Provider API key, sent as `Authorization: Bearer`. Never logged.
    pub api_key: Option<String>,
    /// Extra static headers sent with every request (values never logged).
    pub headers: Vec<(String, String)>,
    /// HTTP version policy.
    pub http: HttpVersion,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Most requests in flight to this backend at once. Default 500.
    pub max_connections: usize,
    /// Path probed by health checks, relative to the host (e.g. `/health`); default
    /// the API base's `/models`.
    pub health_path: Option<String>,
    /// Extra CA certificates (PEM) trusted for this backend.
    pub ca_file: Option<PathBuf>,
}

/// An OpenAI-compatible backend.
pub struct OpenAiBackend {
    remote: Remote,
    chat_uri: Uri,
    completions_uri: Uri,
    embeddings_uri: Uri,
    models_uri: Uri,
    probe_uri: Uri,
}

impl Default for OpenAiSettings {
    fn default() -> Self {
        OpenAiSettings {
            name: String::new(),
            url: String::new(),
            api_key: None,
            headers: Vec::new(),
            http: HttpVersion::Auto,
            timeouts: Timeouts::default(),
            max_connections: 500,
            health_path: None,
            ca_file: None,
        }
    }
}

impl fmt::Debug for OpenAiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSettings")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("headers", &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("http", &self.http)
            .field("timeouts", &self.timeouts)
            .field("max_connections", &self.max_connections)
            .field("health_path", &self.health_path)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// An API base split into the origin (`scheme://authority`) and the base path.
pub(crate) struct ApiBase {
    pub(crate) origin: String,
    pub(crate) path: String,
}

impl ApiBase {
    /// Parse `url`; `default_path` is used when the url has no path.
    pub(crate) fn parse(backend: &str, url: &str, default_path: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidUrl {
            backend: backend.to_owned(),
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid("not a url"))?;
        let scheme =
            uri.scheme_str().ok_or_else(|| invalid("missing scheme (http:// or https://)"))?;
        if scheme != "http" && scheme != "https" {
            return Err(invalid("scheme must be http or https"));
        }
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        if uri.query().is_some() {
            return Err(invalid("must not contain a query string"));
        }
        let path = uri.path().trim_end_matches('/');
        let path = if path.is_empty() { default_path } else { path };
        Ok(ApiBase { origin: format!("{scheme}://{authority}"), path: path.to_owned() })
    }

    /// The uri of `suffix` under the base path.
    pub(crate) fn uri(&self, backend: &str, suffix: &str) -> Result<Uri> {
        self.absolute(backend, &format!("{}{suffix}", self.path))
    }

    /// The uri of a host-absolute path.
    pub(crate) fn absolute(&self, backend: &str, path: &str) -> Result<Uri> {
        let url = format!("{}{path}", self.origin);
        url.parse().map_err(|_| Error::InvalidUrl {
            backend: backend.to_owned(),
            url,
            reason: "not a valid path".to_owned(),
        })
    }
}

/// Build the static header map of a backend: secrets are marked sensitive so hyper
/// never prints them.
pub(crate) fn static_headers(
    backend: &str,
    auth: Option<(HeaderName, String)>,
    extra: &[(String, String)],
) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    let invalid =
        |name: &str| Error::InvalidHeader { backend: backend.to_owned(), name: name.to_owned() };
    if let Some((name, value)) = auth {
        let mut value = HeaderValue::from_str(&value).map_err(|_| invalid(name.as_str()))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    for (name, value) in extra {
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid(name))?;
        let mut value = HeaderValue::from_str(value).map_err(|_| invalid(name))?;
        value.set_sensitive(true);
        headers.append(header_name, value);
    }
    Ok(headers)
}

impl OpenAiBackend {
    /// Build the backend; its client comes from (and is shared through) `factory`.
    pub fn new(settings: &OpenAiSettings, factory: &ClientFactory) -> Result<Self> {
        let name = settings.name.as_str();
        let base = ApiBase::parse(name, &settings.url, "/v1")?;
        let probe_uri = match &settings.health_path {
            Some(path) if path.starts_with('/') => base.absolute(name, path)?,
            Some(path) => base.uri(name, &format!("/{path}"))?,
            None => base.uri(name, "/models")?,
        };
        let auth = settings
            .api_key
            .as_ref()
            .filter(|key| !key.is_empty())
            .map(|key| (header::AUTHORIZATION, format!("Bearer {key}")));
        let remote = Remote::new(
            RemoteSettings {
                name,
                http: settings.http,
                timeouts: settings.timeouts,
                max_connections: settings.max_connections,
                ca_file: settings.ca_file.as_ref(),
                auth: auth.into_iter().collect(),
                headers: &settings.headers,
            },
            factory,
        )?;
        Ok(OpenAiBackend {
            remote,
            chat_uri: base.uri(name, Endpoint::ChatCompletions.path())?,
            completions_uri: base.uri(name, Endpoint::Completions.path())?,
            embeddings_uri: base.uri(name, Endpoint::Embeddings.path())?,
            models_uri: base.uri(name, "/models")?,
            probe_uri,
        })
    }

    async fn send_request(&self, request: BackendRequest) -> Result<BackendResponse, BackendError> {
        let uri = match request.endpoint {
            Endpoint::ChatCompletions => self.chat_uri.clone(),
            Endpoint::Completions => self.completions_uri.clone(),
            Endpoint::Embeddings => self.embeddings_uri.clone(),
            _ => {
                return Err(BackendError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "backend `{}` does not serve {}",
                        self.remote.id,
                        request.endpoint.path()
                    ),
                ));
            }
        };
        let body = match &request.upstream_model {
            Some(model) => rewrite_model(&request.body, model)?,
            None => request.body,
        };
        let stream = request.meta.stream;
        let upstream = self.remote.post(uri, body, stream, &request.headers);
        let exchange = self.remote.exchange(upstream).await?;
        let status = exchange.parts.status;
        if stream && status.is_success() {
            let (parts, body) = self.remote.stream(exchange);
            Ok(BackendResponse {
                status,
                headers: relay_headers(parts.headers),
                body: ResponseBody::Stream(body),
            })
        } else {
            let (parts, body) = self.remote.collect(exchange).await?;
            Ok(BackendResponse {
                status,
                headers: relay_headers(parts.headers),
                body: ResponseBody::Full(body),
            })
        }
    }
}

impl Backend for OpenAiBackend {
    fn id(&self) -> &BackendId {
        &self.remote.id
    }

    fn send(
        &self,
        request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, BackendError>> {
        Box::pin(self.send_request(request))
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>> {
        Box::pin(async move {
            let (status, body) = self.remote.get_json(self.models_uri.clone()).await?;
            if !status.is_success() {
                return Err(status_error(&self.remote.id, status, "listing models"));
            }
            let list: ModelList = serde_json::from_slice(&body).map_err(|_| {
                BackendError::new(
                    ErrorCode::UpstreamInvalid,
                    format!("backend `{}` answered an invalid model list", self.remote.id),
                )
            })?;
            Ok(list.data)
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let (status, _) = self.remote.get_json(self.probe_uri.clone()).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(status_error(&self.remote.id, status, "health probe"))
            }
        })
    }
}

/// The error for a non-success status on a control request (probe, model list). A 503
/// means "warming up" (Overloaded); a 429 is rate limiting.
pub(crate) fn status_error(id: &BackendId, status: StatusCode, what: &str) -> BackendError {
    let code = match status {
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Overloaded,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        _ => ErrorCode::UpstreamStatus,
    };
    BackendError::new(code, format!("backend `{id}` answered {} to {what}", status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_gets_v1_unless_it_has_a_path() {
        let base = ApiBase::parse("b", "http://127.0.0.1:8000", "/v1").unwrap();
        assert_eq!(
            base.uri("b", "/chat/completions").unwrap(),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        let base = ApiBase::parse("b", "https://api.openai.com/v1/", "/v1").unwrap();
        assert_eq!(base.uri("b", "/models").unwrap(), "https://api.openai.com/v1/models");
        let base = ApiBase::parse("b", "https://host/openai/v1beta", "/v1").unwrap();
        assert_eq!(base.uri("b", "/models").unwrap(), "https://host/openai/v1beta/models");
    }

    #[test]
    fn bad_urls_name_the_backend_and_the_problem() {
        for (url, reason) in [
            ("localhost:8000", "scheme"),
            ("ftp://host", "scheme must be http or https"),
            ("http://", "not a url"),
            ("http://host/v1?x=1", "query"),
        ] {
            let err = ApiBase::parse("vllm-a", url, "/v1").err().unwrap().to_string();
            assert!(err.contains("vllm-a") && err.contains(reason), "{url}: {err}");
        }
    }

    #[test]
    fn secrets_are_sensitive_and_not_debug_printed() {
        let headers = static_headers(
            "b",
            Some((header::AUTHORIZATION, "Bearer sk-secret".into())),
            &[("OpenAI-Organization".into(), "org-1".into())],
        )
        .unwrap();
        assert!(headers.values().all(HeaderValue::is_sensitive));
        let settings =
            OpenAiSettings { api_key: Some("sk-secret".into()), ..OpenAiSettings::default() };
        assert!(!format!("{settings:?}").contains("sk-secret"));
        let err = static_headers("b", None, &[("bad header".into(), "v".into())]).unwrap_err();
        assert!(err.to_string().contains("bad header"));
    }
}
