//! The pooled upstream HTTP client: for `http://` upstreams the lean HTTP/1.1 pool of
//! [`crate::h1`]; otherwise hyper-util's connection pool over rustls, HTTP/1.1 and
//! HTTP/2 by ALPN, HTTP/2 prior knowledge (h2c) on request.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Connection-pool settings shared by every backend (the `http_client` config section).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientSettings {
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per host. Default 100.
    pub pool_max_idle_per_host: usize,
    /// TCP keepalive probe interval on upstream sockets; `None` disables. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// HTTP/2 PING interval on idle upstream connections; `None` disables. Default 30 s.
    pub http2_keep_alive_interval: Option<Duration>,
}

/// How to speak HTTP to a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    /// HTTP/2 when TLS ALPN offers it, HTTP/1.1 otherwise (and on cleartext).
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 with prior knowledge, for cleartext HTTP/2 servers (h2c).
    H2c,
}

/// The upstream client one backend uses. Cheap to clone: clones share the pools.
#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    /// hyper-util's pool: HTTPS (HTTP/2 by ALPN) and h2c.
    pub(crate) inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The lean HTTP/1.1 pool for `http://` upstreams; `None` for h2c clients.
    pub(crate) h1: Option<crate::h1::Pool>,
}

/// What makes two backends need different clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    pub(crate) version: HttpVersion,
    pub(crate) connect_timeout: Duration,
    pub(crate) ca_file: Option<PathBuf>,
}

/// Builds upstream clients and shares one pool between every backend that can use the
/// same client, so connections to one host are pooled once.
#[derive(Debug)]
pub struct ClientFactory {
    settings: ClientSettings,
    clients: Mutex<HashMap<ClientKey, HttpClient>>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 100,
            tcp_keepalive: Some(Duration::from_secs(60)),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
        }
    }
}

impl ClientFactory {
    /// A factory whose clients use `settings`.
    pub fn new(settings: ClientSettings) -> Self {
        ClientFactory { settings, clients: Mutex::new(HashMap::new()) }
    }

    /// The shared client for `key`, built on first use.
    pub(crate) fn client(&self, key: ClientKey) -> Result<HttpClient> {
        let mut clients = self.clients.lock();
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(&self.settings, &key)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

impl Default for ClientFactory {
    fn default() -> Self {
        ClientFactory::new(ClientSettings::default())
    }
}

fn build_client(settings: &ClientSettings, key: &ClientKey) -> Result<HttpClient> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Without NODELAY a reused connection stalls on delayed ACKs when headers and body
    // are written separately.
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(settings.tcp_keepalive);

    let tls = tls_config(key.ca_file.as_ref())?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http();
    let connector = match key.version {
        HttpVersion::Http1 => builder.enable_http1().wrap_connector(http),
        HttpVersion::Auto | HttpVersion::H2c => {
            builder.enable_http1().enable_http2().wrap_connector(http)
        }
    };

    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if let Some(interval) = settings.http2_keep_alive_interval {
        client.http2_keep_alive_interval(interval).http2_keep_alive_while_idle(true);
    }
    if key.version == HttpVersion::H2c {
        client.http2_only(true);
    }
    let h1 = (key.version != HttpVersion::H2c).then(|| {
        crate::h1::Pool::new(crate::h1::PoolSettings {
            connect_timeout: key.connect_timeout,
            idle_timeout: settings.pool_idle_timeout,
            max_idle_per_host: settings.pool_max_idle_per_host,
            tcp_keepalive: settings.tcp_keepalive,
        })
    });
    Ok(HttpClient { inner: client.build(connector), h1 })
}

/// Verifies server certificates against the webpki roots plus an optional extra CA file.
fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let file =
            File::open(path).map_err(|source| Error::CaFile { path: path.clone(), source })?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
            let cert = cert.map_err(|source| Error::CaFile { path: path.clone(), source })?;
            roots.add(cert).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Tls(format!("{}: no PEM certificates found", path.display())));
        }
    }
    // An explicit provider: no process-wide default needs to be installed for tests.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factory_shares_clients_per_key() {
        let factory = ClientFactory::default();
        let key = ClientKey {
            version: HttpVersion::Auto,
            connect_timeout: Duration::from_secs(1),
            ca_file: None,
        };
        factory.client(key.clone()).unwrap();
        factory.client(key.clone()).unwrap();
        factory.client(ClientKey { version: HttpVersion::H2c, ..key }).unwrap();
        assert_eq!(factory.clients.lock().len(), 2);
    }

    #[test]
    fn missing_or_empty_ca_file_is_a_clear_error() {
        let err = tls_config(Some(&PathBuf::from("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("sy-empty-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let err = tls_config(Some(&dir)).unwrap_err();
        assert!(err.to_string().contains("no PEM certificates"), "{err}");
        std::fs::remove_file(dir).ok();
    }
}
