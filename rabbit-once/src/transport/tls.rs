//! `amqps://`: TLS over the TCP stream with rustls (ring). Trusts `?cacertfile=` if given, else
//! the system's roots plus Mozilla's; presents `?certfile=` / `?keyfile=` as the client
//! certificate when given; `?verify=verify_none` accepts any server certificate.
//!
//! The files are read at every connect, so a renewed certificate is picked up at the next
//! reconnect. A file that is missing, unreadable or holds nothing usable is an
//! [`Error::Config`] naming the file (retrying would not help); a key file's contents are never
//! quoted. What the server does not like (no or an unknown client certificate, an untrusted
//! server certificate) is an [`Error::Connect`] saying "TLS handshake failed".

use crate::error::Error;
use crate::uri::{Endpoint, Verify};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, RootCertStore};

/// TLS over `tcp` with `config` (from [`client_config`]), checking the server's name: the
/// host, or `server_name_indication`.
pub(crate) async fn wrap(
    tcp: TcpStream,
    endpoint: &Endpoint,
    config: ClientConfig,
) -> Result<TlsStream<TcpStream>, Error> {
    let err = |reason: String| Error::Connect {
        endpoint: endpoint.to_string(),
        reason,
    };
    let name = endpoint
        .server_name
        .clone()
        .unwrap_or_else(|| endpoint.host.clone());
    let server_name = ServerName::try_from(name.clone())
        .map_err(|_| err(format!("{name:?} is not a valid TLS server name")))?;
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| handshake_error(endpoint, &e))
}

/// What a failed TLS handshake means. The server refusing our certificate (or its absence)
/// is an [`Error::AuthenticationFailed`]: retrying with the same settings cannot succeed, as
/// with a wrong password. Anything else (our refusal of the server's certificate included: the
/// fix is often on the server's side) is an [`Error::Connect`], retried with backoff.
fn handshake_error(endpoint: &Endpoint, e: &std::io::Error) -> Error {
    refusal(endpoint, e).unwrap_or_else(|| {
        let hint = match rustls_error(e) {
            Some(rustls::Error::InvalidCertificate(_)) => {
                " (the broker's certificate is not trusted: check cacertfile, \
                 server_name_indication and the certificate's dates)"
            }
            Some(rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure))
                if endpoint.cert_file.is_none() =>
            {
                " (a broker that requires a client certificate answers so: give certfile and \
                 keyfile)"
            }
            _ => "",
        };
        Error::Connect {
            endpoint: endpoint.to_string(),
            reason: format!("TLS handshake failed: {e}{hint}"),
        }
    })
}

fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The broker's TLS alert refusing our client certificate, or the lack of one, as an
/// [`Error::AuthenticationFailed`]. Under TLS 1.3 the alert comes after the client has
/// finished its side of the handshake, with the first read, so reads during the AMQP
/// handshake are checked too.
pub(crate) fn refusal(endpoint: &Endpoint, e: &std::io::Error) -> Option<Error> {
    use rustls::AlertDescription as A;
    let Some(rustls::Error::AlertReceived(alert)) = rustls_error(e) else {
        return None;
    };
    let what = match alert {
        A::CertificateRequired | A::NoCertificate => {
            "the broker requires a client certificate: give certfile and keyfile"
        }
        A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::UnsupportedCertificate => {
            "the broker does not accept the client certificate (not issued by a CA it trusts, \
             or not usable for client authentication)"
        }
        A::CertificateExpired => "the broker says the client certificate has expired",
        A::CertificateRevoked => "the broker says the client certificate is revoked",
        A::AccessDenied => "the broker denied access to the client certificate",
        _ => return None,
    };
    Some(Error::AuthenticationFailed {
        endpoint: endpoint.to_string(),
        user: match &endpoint.cert_file {
            Some(path) => format!("(client certificate {path})"),
            None => "(no client certificate)".to_string(),
        },
        reason: format!("TLS handshake refused: {what} (received fatal alert {alert:?})"),
    })
}

/// A setting's file could not be used: names the key and the file, never its contents.
fn file_error(endpoint: &Endpoint, key: &str, path: &str, what: impl std::fmt::Display) -> Error {
    Error::Config(format!("{endpoint}: {key} {path:?}: {what}"))
}

fn read_file(endpoint: &Endpoint, key: &str, path: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| file_error(endpoint, key, path, e))
}

/// The rustls client configuration for this endpoint: roots, client certificate, verifier.
/// Reads the files (at every connect, so a renewed certificate is picked up).
pub(crate) fn client_config(endpoint: &Endpoint) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("{endpoint}: TLS: {e}")))?;
    let builder = match endpoint.verify {
        Verify::Peer => builder.with_root_certificates(roots(endpoint)?),
        Verify::None => {
            tracing::warn!(
                %endpoint,
                "verify=verify_none: the broker's TLS certificate is not checked; the connection \
                 is encrypted but anyone in the middle could pose as the broker"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
        }
    };
    match (&endpoint.cert_file, &endpoint.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = client_certs(endpoint, cert_file)?;
            let key = client_key(endpoint, key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(_) => Error::Config(format!(
                        "{endpoint}: keyfile {key_file:?} is not the key of certfile \
                         {cert_file:?} (they do not match)"
                    )),
                    other => file_error(
                        endpoint,
                        "keyfile",
                        key_file,
                        format!("not usable with certfile {cert_file:?}: {other}"),
                    ),
                })
        }
        // `Endpoint::parse` refuses one without the other.
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `cacertfile`'s certificates, or the system's roots plus Mozilla's.
fn roots(endpoint: &Endpoint) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    let Some(path) = &endpoint.ca_cert_file else {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        return Ok(roots);
    };
    let pem = read_file(endpoint, "cacertfile", path)?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| file_error(endpoint, "cacertfile", path, e))?;
        roots
            .add(cert)
            .map_err(|e| file_error(endpoint, "cacertfile", path, e))?;
    }
    if roots.is_empty() {
        return Err(file_error(
            endpoint,
            "cacertfile",
            path,
            "holds no PEM certificate",
        ));
    }
    Ok(roots)
}

/// `certfile`: the client certificate, then any intermediates.
fn client_certs(endpoint: &Endpoint, path: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_file(endpoint, "certfile", path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(endpoint, "certfile", path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            endpoint,
            "certfile",
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// `keyfile`: the first private key in it. Errors say what is wrong, never what is in it.
fn client_key(endpoint: &Endpoint, path: &str) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read_file(endpoint, "keyfile", path)?;
    let bad = |what: &str| file_error(endpoint, "keyfile", path, what);
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) if pem.windows(9).any(|w| w == b"ENCRYPTED") => Err(bad(
            "holds an encrypted private key: give an unencrypted one \
             (e.g. openssl pkey -in KEY -out PLAIN_KEY)",
        )),
        Ok(None) => Err(bad(
            "holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)",
        )),
        Err(_) => Err(bad("is not a well-formed PEM file")),
    }
}

/// `verify=verify_none`: any server certificate passes; its handshake signatures are still
/// checked (so the session is at least bound to the key the server presented).
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
