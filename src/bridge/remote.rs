//! Reaching the remote broker: `host[:port]` over TCP, and TLS when the bridge has `cafile`
//! (rustls, the remote's certificate checked against it and, unless `insecure`, its name).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_rustls::TlsConnector;

use super::peer::Stream;
use super::BridgeError;
use crate::config::BridgeConfig;
use crate::door::tls::{read_certs, read_key};

/// How long one address may take to accept the TCP connection and the TLS handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS settings of a bridge with `cafile`, built once at start (the files are read then).
pub fn tls_connector(cfg: &BridgeConfig) -> Result<Option<TlsConnector>, BridgeError> {
    let Some(cafile) = &cfg.cafile else {
        return Ok(None);
    };
    let bad = |msg: String| BridgeError::Tls { msg };
    let mut roots = RootCertStore::empty();
    for cert in read_certs(cafile).map_err(bad)? {
        roots
            .add(cert)
            .map_err(|e| bad(format!("{}: {e}", cafile.display())))?;
    }
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder();
    let builder = if cfg.insecure {
        let inner = WebPkiServerVerifier::builder(roots)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(inner)))
    } else {
        builder.with_root_certificates(roots)
    };
    let config = match (&cfg.certfile, &cfg.keyfile) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert).map_err(bad)?, read_key(key).map_err(bad)?)
            .map_err(|e| bad(format!("{}: {e}", cert.display())))?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(TlsConnector::from(Arc::new(config))))
}

/// Opens a stream to `address` (`host` or `host:port`).
pub async fn dial(
    address: &str,
    tls: Option<&TlsConnector>,
) -> Result<Box<dyn Stream>, BridgeError> {
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
            (h.trim_matches(['[', ']']), p.parse().unwrap_or(1883))
        }
        _ => (address, 1883),
    };
    let io = |error| BridgeError::Io {
        side: "remote",
        error,
    };
    let work = async {
        let tcp = TcpStream::connect((host, port)).await.map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Box::new(tcp) as Box<dyn Stream>);
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|e| BridgeError::Tls {
            msg: format!("{host}: {e}"),
        })?;
        let stream = tls.connect(name, tcp).await.map_err(io)?;
        Ok(Box::new(stream) as Box<dyn Stream>)
    };
    tokio::time::timeout(DIAL_TIMEOUT, work)
        .await
        .map_err(|_| BridgeError::Timeout)?
}

/// `insecure`: the chain must still lead to `cafile`, but the name need not match the host
/// (Mosquitto's `bridge_insecure`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
