//! `amqps://`: TLS over the TCP stream with rustls. Trusts `?cacertfile=` if given, else the
//! system's roots plus Mozilla's.

use crate::error::Error;
use crate::uri::Endpoint;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName};

pub(crate) async fn wrap(
    tcp: TcpStream,
    endpoint: &Endpoint,
) -> Result<TlsStream<TcpStream>, Error> {
    let err = |reason: String| Error::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    if let Some(path) = &endpoint.ca_cert_file {
        let pem = std::fs::read(path).map_err(|e| err(format!("cacertfile {path:?}: {e}")))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| err(format!("cacertfile {path:?}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| err(format!("cacertfile {path:?}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(err(format!("cacertfile {path:?} holds no certificate")));
        }
    } else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = endpoint
        .server_name
        .clone()
        .unwrap_or_else(|| endpoint.host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| err(format!("{name:?} is not a valid TLS server name")))?;
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| err(format!("TLS handshake failed: {e}")))
}
