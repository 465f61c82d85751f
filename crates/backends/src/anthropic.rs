//! The Anthropic adapter: OpenAI chat requests translated to the Messages API and the
//! answers translated back; Anthropic-format requests (`Endpoint::AnthropicMessages`)
//! passed straight through.

use std::fmt;
use std::path::PathBuf;

use http::header::HeaderName;
use http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use switchyard_core::openai::Model;
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BoxFuture, Endpoint,
    ErrorCode, ResponseBody, rewrite_model,
};

use crate::client::{ClientFactory, HttpVersion};
use crate::error::Result;
use crate::openai::{ApiBase, status_error};
use crate::remote::{Remote, RemoteSettings, completion_id, now_unix, response, rfc3339_seconds};
use crate::translate::anthropic::{
    AnthropicToChatStream, DEFAULT_MAX_TOKENS, anthropic_error_to_openai,
    anthropic_to_chat_completion, chat_to_anthropic,
};
use crate::translate::stream::translate;
use crate::translate::{ChunkOptions, translated_status};
use crate::upstream::Timeouts;

/// The `anthropic-version` header sent unless configured otherwise.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// Settings of one Anthropic backend (`type: anthropic`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnthropicSettings {
    /// The backend's name (unique in a configuration).
    pub name: String,
    /// The API base: `https://api.anthropic.com` (default; `/v1` is appended) or a
    /// base with a path such as `https://api.anthropic.com/v1` or a proxy's
    /// `https://gateway.example/anthropic/v1`.
    pub url: String,
    /// API key, sent as `x-api-key`. Never logged.
    pub api_key: Option<String>,
    /// The `anthropic-version` header. Default `2023-06-01`.
    pub anthropic_version: String,
    /// `max_tokens` for OpenAI requests that set no limit (the Messages API requires
    /// one). Default 4096.
    pub default_max_tokens: u32,
    /// Extra static headers sent with every request, e.g. `anthropic-beta` (values
    /// never logged).
    pub headers: Vec<(String, String)>,
    /// HTTP version policy.
    pub http: HttpVersion,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Most requests in flight to this backend at once. Default 500.
    pub max_connections: usize,
    /// Path probed by health checks, relative to the host; default the API base's
    /// `/models?limit=1` (authenticated, costs no tokens).
    pub health_path: Option<String>,
    /// Extra CA certificates (PEM) trusted for this backend.
    pub ca_file: Option<PathBuf>,
}

/// An Anthropic backend.
pub struct AnthropicBackend {
    remote: Remote,
    messages_uri: Uri,
    models_uri: Uri,
    probe_uri: Uri,
    default_max_tokens: u32,
}

#[derive(Deserialize)]
struct ModelsPage {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
    #[serde(default)]
    created_at: String,
}

impl Default for AnthropicSettings {
    fn default() -> Self {
        AnthropicSettings {
            name: String::new(),
            url: "https://api.anthropic.com".into(),
            api_key: None,
            anthropic_version: DEFAULT_ANTHROPIC_VERSION.into(),
            default_max_tokens: DEFAULT_MAX_TOKENS,
            headers: Vec::new(),
            http: HttpVersion::Auto,
            timeouts: Timeouts::default(),
            max_connections: 500,
            health_path: None,
            ca_file: None,
        }
    }
}

impl fmt::Debug for AnthropicSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicSettings")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("anthropic_version", &self.anthropic_version)
            .field("default_max_tokens", &self.default_max_tokens)
            .field("headers", &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("http", &self.http)
            .field("timeouts", &self.timeouts)
            .field("max_connections", &self.max_connections)
            .field("health_path", &self.health_path)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl AnthropicBackend {
    /// Build the backend; its client comes from (and is shared through) `factory`.
    pub fn new(settings: &AnthropicSettings, factory: &ClientFactory) -> Result<Self> {
        let name = settings.name.as_str();
        let url = if settings.url.is_empty() { "https://api.anthropic.com" } else { &settings.url };
        let base = ApiBase::parse(name, url, "/v1")?;
        let probe_uri = match &settings.health_path {
            Some(path) if path.starts_with('/') => base.absolute(name, path)?,
            Some(path) => base.uri(name, &format!("/{path}"))?,
            None => base.uri(name, "/models?limit=1")?,
        };
        let mut auth = Vec::with_capacity(2);
        if let Some(key) = settings.api_key.as_ref().filter(|key| !key.is_empty()) {
            auth.push((HeaderName::from_static("x-api-key"), key.clone()));
        }
        let version = if settings.anthropic_version.is_empty() {
            DEFAULT_ANTHROPIC_VERSION
        } else {
            &settings.anthropic_version
        };
        auth.push((HeaderName::from_static("anthropic-version"), version.to_owned()));
        let remote = Remote::new(
            RemoteSettings {
                name,
                http: settings.http,
                timeouts: settings.timeouts,
                max_connections: settings.max_connections,
                ca_file: settings.ca_file.as_ref(),
                auth,
                headers: &settings.headers,
            },
            factory,
        )?;
        Ok(AnthropicBackend {
            remote,
            messages_uri: base.uri(name, "/messages")?,
            models_uri: base.uri(name, "/models?limit=1000")?,
            probe_uri,
            default_max_tokens: settings.default_max_tokens.max(1),
        })
    }

    async fn chat(&self, request: BackendRequest) -> Result<BackendResponse, BackendError> {
        let body = chat_to_anthropic(
            &request.body,
            request.upstream_model.as_deref(),
            self.default_max_tokens,
        )?;
        let stream = request.meta.stream;
        let upstream = self.remote.post(self.messages_uri.clone(), body, stream, &request.headers);
        let exchange = self.remote.exchange(upstream).await?;
        let status = exchange.parts.status;
        if !status.is_success() {
            let (parts, body) = self.remote.collect(exchange).await?;
            let (status, body) = anthropic_error_to_openai(status, &body);
            return Ok(response(status, parts.headers, ResponseBody::Full(body)));
        }
        let options = ChunkOptions {
            id: completion_id(),
            model: request.upstream_model.as_deref().unwrap_or(&request.meta.model).to_owned(),
            created: now_unix(),
            include_usage: request.meta.include_usage,
        };
        if stream {
            let (parts, body) = self.remote.stream(exchange);
            let body = translate(body, AnthropicToChatStream::new(options));
            Ok(response(status, parts.headers, ResponseBody::Stream(body)))
        } else {
            let (parts, body) = self.remote.collect(exchange).await?;
            let body = anthropic_to_chat_completion(&body, options.created)
                .map_err(|e| self.remote.invalid(e))?;
            Ok(response(status, parts.headers, ResponseBody::Full(body)))
        }
    }

    async fn passthrough(&self, request: BackendRequest) -> Result<BackendResponse, BackendError> {
        let body = match &request.upstream_model {
            Some(model) => rewrite_model(&request.body, model)?,
            None => request.body,
        };
        let stream = request.meta.stream;
        let upstream = self.remote.post(self.messages_uri.clone(), body, stream, &request.headers);
        let exchange = self.remote.exchange(upstream).await?;
        let status = exchange.parts.status;
        if stream && status.is_success() {
            let (parts, body) = self.remote.stream(exchange);
            Ok(response(status, parts.headers, ResponseBody::Stream(body)))
        } else {
            let (parts, body) = self.remote.collect(exchange).await?;
            Ok(response(translated_status(status), parts.headers, ResponseBody::Full(body)))
        }
    }

    async fn list_models(&self) -> Result<Vec<Model>, BackendError> {
        let (status, body) = self.remote.get_json(self.models_uri.clone()).await?;
        if !status.is_success() {
            return Err(control_error(&self.remote.id, status, "listing models"));
        }
        let page: ModelsPage = serde_json::from_slice(&body).map_err(|_| {
            BackendError::new(
                ErrorCode::UpstreamInvalid,
                format!("backend `{}` answered an invalid model list", self.remote.id),
            )
        })?;
        Ok(page
            .data
            .into_iter()
            .map(|entry| {
                let mut model = Model::new(entry.id, "anthropic");
                model.created = rfc3339_seconds(&entry.created_at);
                model
            })
            .collect())
    }
}

/// A control-request failure; an authentication failure is named as such so the
/// health view says why a backend with a bad key is down.
fn control_error(id: &BackendId, status: StatusCode, what: &str) -> BackendError {
    match status.as_u16() {
        401 | 403 => BackendError::new(
            ErrorCode::UpstreamStatus,
            format!("backend `{id}` rejected the api key ({}) while {what}", status.as_u16()),
        ),
        529 => status_error(id, StatusCode::SERVICE_UNAVAILABLE, what),
        _ => status_error(id, status, what),
    }
}

impl Backend for AnthropicBackend {
    fn id(&self) -> &BackendId {
        &self.remote.id
    }

    fn send(
        &self,
        request: BackendRequest,
    ) -> BoxFuture<'_, Result<BackendResponse, BackendError>> {
        Box::pin(async move {
            match request.endpoint {
                Endpoint::ChatCompletions => self.chat(request).await,
                Endpoint::AnthropicMessages => self.passthrough(request).await,
                other => Err(BackendError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "anthropic backend `{}` does not serve {}",
                        self.remote.id,
                        other.path()
                    ),
                )),
            }
        })
    }

    fn models(&self) -> BoxFuture<'_, Result<Vec<Model>, BackendError>> {
        Box::pin(self.list_models())
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let (status, _) = self.remote.get_json(self.probe_uri.clone()).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(control_error(&self.remote.id, status, "health probe"))
            }
        })
    }

    fn supports(&self, endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::ChatCompletions | Endpoint::AnthropicMessages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_default_to_the_public_api_and_append_v1() {
        let factory = ClientFactory::default();
        let backend = AnthropicBackend::new(
            &AnthropicSettings { name: "a".into(), ..AnthropicSettings::default() },
            &factory,
        )
        .unwrap();
        assert_eq!(backend.messages_uri, "https://api.anthropic.com/v1/messages");
        assert_eq!(backend.probe_uri, "https://api.anthropic.com/v1/models?limit=1");
        let backend = AnthropicBackend::new(
            &AnthropicSettings {
                name: "a".into(),
                url: "http://127.0.0.1:9/v1/".into(),
                ..AnthropicSettings::default()
            },
            &factory,
        )
        .unwrap();
        assert_eq!(backend.messages_uri, "http://127.0.0.1:9/v1/messages");
        assert!(backend.supports(Endpoint::AnthropicMessages));
        assert!(!backend.supports(Endpoint::Embeddings));
    }

    #[test]
    fn the_key_is_not_debug_printed() {
        let settings = AnthropicSettings {
            api_key: Some("sk-ant-secret".into()),
            ..AnthropicSettings::default()
        };
        assert!(!format!("{settings:?}").contains("sk-ant-secret"));
    }
}
