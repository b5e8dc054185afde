//! TLS listeners (rustls): the acceptor built from a `[[listener]]`'s certfile / keyfile /
//! cafile / require_certificate, and the client-certificate identity for
//! `use_identity_as_username`.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;

/// Why a TLS listener cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("listener {bind}: {msg}")]
pub struct TlsError {
    /// The listener's address.
    pub bind: std::net::SocketAddr,
    /// What is wrong (the file is named).
    pub msg: String,
}

/// The acceptor for a listener with `certfile` and `keyfile`, or `None` for plain TCP.
pub fn acceptor(cfg: &ListenerConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(certfile), Some(keyfile)) = (&cfg.certfile, &cfg.keyfile) else {
        return Ok(None);
    };
    let err = |msg: String| TlsError {
        bind: cfg.bind,
        msg,
    };
    let certs = read_certs(certfile).map_err(err)?;
    let key = read_key(keyfile).map_err(err)?;
    let builder = ServerConfig::builder();
    let builder = match &cfg.cafile {
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(cafile).map_err(err)? {
                roots
                    .add(cert)
                    .map_err(|e| err(format!("{}: {e}", cafile.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            let verifier = if cfg.require_certificate {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            };
            builder.with_client_cert_verifier(
                verifier.map_err(|e| err(format!("{}: {e}", cafile.display())))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        err(format!(
            "{} / {}: {e}",
            certfile.display(),
            keyfile.display()
        ))
    })?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(file)).collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key", path.display()))
}

/// The common name of the client's certificate, Mosquitto's identity for
/// `use_identity_as_username`.
pub fn identity(conn: &ServerConnection) -> Option<String> {
    let cert = conn.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
