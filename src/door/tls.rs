//! TLS listeners (rustls): the acceptor built from a `[[listener]]`'s certfile / keyfile /
//! cafile / crlfile / require_certificate, and the client-certificate identity for
//! `use_identity_as_username`.
//!
//! As Mosquitto (OpenSSL) does, the server sends `certfile` and then the certificates of
//! `cafile` that complete its chain (each the issuer of the one before, short of a
//! self-signed root), so clients that trust only the root verify it. TLS-PSK is not offered:
//! rustls has no PSK cipher suites.

use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
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
    let mut certs = read_certs(certfile).map_err(err)?;
    let key = read_key(keyfile).map_err(err)?;
    let builder = ServerConfig::builder();
    let builder = match &cfg.cafile {
        Some(cafile) => {
            let authorities = read_certs(cafile).map_err(err)?;
            complete_chain(&mut certs, &authorities);
            let mut roots = RootCertStore::empty();
            for cert in authorities {
                roots
                    .add(cert)
                    .map_err(|e| err(format!("{}: {e}", cafile.display())))?;
            }
            let mut verifier = WebPkiClientVerifier::builder(Arc::new(roots));
            if let Some(crlfile) = &cfg.crlfile {
                // As Mosquitto (X509_V_FLAG_CRL_CHECK): the client's own certificate is
                // checked, and its issuer must have a CRL in the file.
                verifier = verifier
                    .with_crls(read_crls(crlfile).map_err(err)?)
                    .only_check_end_entity_revocation();
            }
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

/// Appends to `chain` the certificates of `authorities` that issued its last one, up to (not
/// including) a self-signed root.
fn complete_chain(
    chain: &mut Vec<CertificateDer<'static>>,
    authorities: &[CertificateDer<'static>],
) {
    let names = |der: &CertificateDer<'_>| {
        x509_parser::parse_x509_certificate(der.as_ref())
            .ok()
            .map(|(_, c)| (c.subject().as_raw().to_vec(), c.issuer().as_raw().to_vec()))
    };
    let by_subject: Vec<_> = authorities
        .iter()
        .filter_map(|a| names(a).map(|n| (n, a)))
        .collect();
    // Bounded by the number of authorities, so a loop of cross-signed certificates ends.
    for _ in 0..by_subject.len() {
        let Some((subject, issuer)) = chain.last().and_then(names) else {
            return;
        };
        if subject == issuer {
            return;
        }
        let Some(((_, up), cert)) = by_subject.iter().find(|((s, _), _)| *s == issuer) else {
            return;
        };
        if *up == issuer {
            // The issuer is a self-signed root: the client has it or cannot use it.
            return;
        }
        if chain.contains(cert) {
            return;
        }
        chain.push((*cert).clone());
    }
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    read_pem(path, "certificate revocation list", |r| {
        rustls_pemfile::crls(r).collect()
    })
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    read_pem(path, "certificate", |r| rustls_pemfile::certs(r).collect())
}

/// Every PEM item that `parse` takes from `path`, at least one; errors name the file.
fn read_pem<T>(
    path: &Path,
    what: &str,
    parse: impl FnOnce(&mut dyn std::io::BufRead) -> std::io::Result<Vec<T>>,
) -> Result<Vec<T>, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let items = parse(&mut BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))?;
    if items.is_empty() {
        return Err(format!("{}: no PEM {what}", path.display()));
    }
    Ok(items)
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
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
