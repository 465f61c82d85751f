//! The Gemini adapter: OpenAI chat requests translated to `generateContent` /
//! `streamGenerateContent?alt=sse` and the answers translated back. The API key
//! travels in the `x-goog-api-key` header, never in a URL; the model is one
//! percent-encoded path segment.

use std::fmt;
use std::path::PathBuf;

use http::header::HeaderName;
use http::{StatusCode, Uri};
use serde::{Deserialize, Serialize};
use switchyard_core::openai::Model;
use switchyard_core::{
    Backend, BackendError, BackendId, BackendRequest, BackendResponse, BoxFuture, Endpoint,
    ErrorCode, ResponseBody,
};

use crate::client::{ClientFactory, HttpVersion};
use crate::error::Result;
use crate::openai::{ApiBase, status_error};
use crate::remote::{Remote, RemoteSettings, completion_id, now_unix, response};
use crate::translate::ChunkOptions;
use crate::translate::gemini::{
    GeminiToChatStream, chat_to_gemini, gemini_error_to_openai, gemini_to_chat_completion,
    model_segment,
};
use crate::translate::stream::translate;
use crate::upstream::Timeouts;

/// Settings of one Gemini backend (`type: gemini`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GeminiSettings {
    /// The backend's name (unique in a configuration).
    pub name: String,
    /// The API base: `https://generativelanguage.googleapis.com` (default; `/v1beta`
    /// is appended) or a base with a path such as
    /// `https://generativelanguage.googleapis.com/v1beta`.
    pub url: String,
    /// API key, sent as `x-goog-api-key` (never as a `?key=` query). Never logged.
    pub api_key: Option<String>,
    /// Extra static headers sent with every request (values never logged).
    pub headers: Vec<(String, String)>,
    /// HTTP version policy.
    pub http: HttpVersion,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Most requests in flight to this backend at once. Default 500.
    pub max_connections: usize,
    /// Path probed by health checks, relative to the host; default the API base's
    /// `/models?pageSize=1` (authenticated, costs no tokens).
    pub health_path: Option<String>,
    /// Extra CA certificates (PEM) trusted for this backend.
    pub ca_file: Option<PathBuf>,
}

/// A Gemini backend.
pub struct GeminiBackend {
    remote: Remote,
    base: ApiBase,
    models_uri: Uri,
    probe_uri: Uri,
}

#[derive(Deserialize)]
struct ModelsPage {
    #[serde(default)]
    models: Vec<ModelEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModelEntry {
    name: String,
    #[serde(default)]
    supported_generation_methods: Option<Vec<String>>,
}

impl Default for GeminiSettings {
    fn default() -> Self {
        GeminiSettings {
            name: String::new(),
            url: "https://generativelanguage.googleapis.com".into(),
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

impl fmt::Debug for GeminiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiSettings")
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

impl GeminiBackend {
    /// Build the backend; its client comes from (and is shared through) `factory`.
    pub fn new(settings: &GeminiSettings, factory: &ClientFactory) -> Result<Self> {
        let name = settings.name.as_str();
        let url = if settings.url.is_empty() {
            "https://generativelanguage.googleapis.com"
        } else {
            &settings.url
        };
        let base = ApiBase::parse(name, url, "/v1beta")?;
        let probe_uri = match &settings.health_path {
            Some(path) if path.starts_with('/') => base.absolute(name, path)?,
            Some(path) => base.uri(name, &format!("/{path}"))?,
            None => base.uri(name, "/models?pageSize=1")?,
        };
        let auth = settings
            .api_key
            .iter()
            .filter(|key| !key.is_empty())
            .map(|key| (HeaderName::from_static("x-goog-api-key"), key.clone()))
            .collect();
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
        Ok(GeminiBackend {
            models_uri: base.uri(name, "/models?pageSize=1000")?,
            probe_uri,
            base,
            remote,
        })
    }

    /// `{base}/models/{model}:generateContent` or `:streamGenerateContent?alt=sse`.
    fn generate_uri(&self, model: &str, stream: bool) -> Result<Uri, BackendError> {
        let action = if stream { ":streamGenerateContent?alt=sse" } else { ":generateContent" };
        let suffix = format!("/models/{}{action}", model_segment(model));
        self.base.uri(self.remote.id.as_str(), &suffix).map_err(|_| {
            BackendError::new(ErrorCode::InvalidRequest, "the model name cannot be used in a url")
        })
    }

    async fn chat(&self, request: BackendRequest) -> Result<BackendResponse, BackendError> {
        let translated = chat_to_gemini(&request.body, request.upstream_model.as_deref())?;
        let stream = request.meta.stream;
        let uri = self.generate_uri(&translated.model, stream)?;
        let upstream = self.remote.post(uri, translated.body, stream, &request.headers);
        let exchange = self.remote.exchange(upstream).await?;
        let status = exchange.parts.status;
        if !status.is_success() {
            let (parts, body) = self.remote.collect(exchange).await?;
            let (status, body) = gemini_error_to_openai(status, &body);
            return Ok(response(status, parts.headers, ResponseBody::Full(body)));
        }
        let options = ChunkOptions {
            id: completion_id(),
            model: translated.model,
            created: now_unix(),
            include_usage: request.meta.include_usage,
        };
        if stream {
            let (parts, body) = self.remote.stream(exchange);
            let body = translate(body, GeminiToChatStream::new(options));
            Ok(response(status, parts.headers, ResponseBody::Stream(body)))
        } else {
            let (parts, body) = self.remote.collect(exchange).await?;
            let body = gemini_to_chat_completion(&body, &options).map_err(|e| {
                if e.code == ErrorCode::UpstreamInvalid { self.remote.invalid(e) } else { e }
            })?;
            Ok(response(status, parts.headers, ResponseBody::Full(body)))
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
            .models
            .into_iter()
            .filter(|m| {
                m.supported_generation_methods
                    .as_ref()
                    .is_none_or(|methods| methods.iter().any(|x| x == "generateContent"))
            })
            .map(|m| {
                let id = m.name.strip_prefix("models/").unwrap_or(&m.name).to_owned();
                Model::new(id, "google")
            })
            .collect())
    }
}

/// A control-request failure; an invalid key (Gemini answers 400 `API_KEY_INVALID`)
/// is named as such.
fn control_error(id: &BackendId, status: StatusCode, what: &str) -> BackendError {
    match status.as_u16() {
        400 | 401 | 403 => BackendError::new(
            ErrorCode::UpstreamStatus,
            format!(
                "backend `{id}` refused the request ({}) while {what}: check the api key",
                status.as_u16()
            ),
        ),
        _ => status_error(id, status, what),
    }
}

impl Backend for GeminiBackend {
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
                other => Err(BackendError::new(
                    ErrorCode::Unsupported,
                    format!("gemini backend `{}` does not serve {}", self.remote.id, other.path()),
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
        endpoint == Endpoint::ChatCompletions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_urls_keep_the_model_in_one_segment() {
        let factory = ClientFactory::default();
        let backend = GeminiBackend::new(
            &GeminiSettings { name: "g".into(), ..GeminiSettings::default() },
            &factory,
        )
        .unwrap();
        assert_eq!(
            backend.generate_uri("gemini-2.0-flash", false).unwrap(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
        );
        let uri = backend.generate_uri("../../v1/files?key=x#y", true).unwrap();
        assert_eq!(
            uri,
            "https://generativelanguage.googleapis.com/v1beta/models/..%2F..%2Fv1%2Ffiles%3Fkey%3Dx%23y:streamGenerateContent?alt=sse"
        );
        assert_eq!(uri.query(), Some("alt=sse"));
        assert_eq!(
            backend.probe_uri,
            "https://generativelanguage.googleapis.com/v1beta/models?pageSize=1"
        );
    }

    #[test]
    fn the_key_is_not_debug_printed() {
        let settings =
            GeminiSettings { api_key: Some("AIza-secret".into()), ..GeminiSettings::default() };
        assert!(!format!("{settings:?}").contains("AIza-secret"));
    }
}
