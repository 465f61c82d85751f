//! TLS termination: a rustls server configuration from PEM files, TLS 1.2 and 1.3 only,
//! HTTP/2 and HTTP/1.1 offered by ALPN.
//!
//! The handshake runs on the connection's own task (never in the accept loop), bounded
//! by `server.header_read_timeout`, so a slow or silent client holds only its own slot.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_config::TlsConfig;
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// Build the acceptor for `tls`. Errors name the file, never its contents.
pub(crate) fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor> {
    let certs = read_certs(&tls.cert)?;
    let key = read_key(&tls.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("server.tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Config(format!(
                "server.tls: the certificate in {} and the key in {} do not work together: {e}",
                tls.cert.display(),
                tls.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn open(path: &Path, what: &str) -> Result<BufReader<std::fs::File>> {
    std::fs::File::open(path).map(BufReader::new).map_err(|source| Error::Io {
        context: format!("cannot read the TLS {what} {}", path.display()),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut open(path, "certificate")?)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|source| Error::Io {
            context: format!("cannot parse the TLS certificate {}", path.display()),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "server.tls.cert: {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut open(path, "key")?)
        .map_err(|source| Error::Io {
            context: format!("cannot parse the TLS key {}", path.display()),
            source,
        })?
        .ok_or_else(|| {
            Error::Config(format!("server.tls.key: {} holds no PEM private key", path.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_from_pem_files_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
        let tls = TlsConfig { cert: cert_path.clone(), key: key_path.clone() };
        assert!(acceptor(&tls).is_ok());

        let swapped = TlsConfig { cert: key_path.clone(), key: cert_path.clone() };
        let err = acceptor(&swapped).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = TlsConfig { cert: dir.path().join("nope.pem"), key: key_path };
        let err = acceptor(&missing).err().unwrap().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        assert!(!err.contains("PRIVATE KEY"));
    }
}
