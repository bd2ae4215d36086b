//! [`Endpoint`]: one broker endpoint parsed from a URI, its display without the password, and
//! the URI rendered back with it.

use crate::error::Error;
use std::fmt;
use std::time::Duration;

/// One broker endpoint, parsed from a URI. `Debug` and `Display` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) vhost: String,
    /// `?heartbeat=` (seconds), overrides the config.
    pub(crate) heartbeat: Option<Duration>,
    /// `?connection_timeout=` (milliseconds), overrides the config.
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) frame_max: Option<u32>,
    pub(crate) channel_max: Option<u16>,
    /// `?cacertfile=`: PEM file of CA certificates to trust (amqps only).
    pub(crate) ca_cert_file: Option<String>,
    /// `?server_name_indication=`: the TLS server name, when it differs from the host.
    pub(crate) server_name: Option<String>,
    /// `?certfile=`: PEM file of the client certificate (chain) to present (amqps only, with
    /// `keyfile`).
    pub(crate) cert_file: Option<String>,
    /// `?keyfile=`: PEM file of the client certificate's private key (amqps only, with
    /// `certfile`).
    pub(crate) key_file: Option<String>,
    /// `?verify=`: whether the server's certificate is checked (`verify_peer`, the default).
    pub(crate) verify: Verify,
    /// `?auth_mechanism=`: how the client authenticates (`plain`, the default, or `external`).
    pub(crate) auth_mechanism: AuthMechanism,
}

/// `?verify=`: whether the client checks the server's certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Verify {
    /// `verify_peer`: the server's certificate must chain to a trusted CA and name the host
    /// (or `server_name_indication`).
    #[default]
    Peer,
    /// `verify_none`: any server certificate is accepted (the connection is encrypted but not
    /// authenticated; for tests and private networks only).
    None,
}

/// `?auth_mechanism=`: the SASL mechanism of `connection.start-ok`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum AuthMechanism {
    /// `plain`: the URI's user name and password.
    #[default]
    Plain,
    /// `external`: the broker takes the user name from the client certificate
    /// (rabbitmq_auth_mechanism_ssl); the URI's password is not sent.
    External,
}

impl Endpoint {
    /// The virtual host (decoded).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    /// The host name or address (an IPv6 address without its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port (default 5672 for `amqp`, 5671 for `amqps`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name (decoded; `guest` when the URI has none).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether this endpoint uses TLS (`amqps`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Same endpoint, another host and port (used to route through a proxy).
    pub fn with_address(mut self, host: impl Into<String>, port: u16) -> Self {
        self.host = host.into();
        self.port = port;
        self
    }

    /// The whole URI back as text, **password included**, e.g. to hand this endpoint (after
    /// [`with_address`](Self::with_address), say) to another process.
    ///
    /// # The result holds the password
    ///
    /// Never log it, print it or put it in an error message: for those, use `Display`
    /// (`{endpoint}`) or `Debug`, which leave the password out.
    ///
    /// The user name, password, vhost and query values are percent-encoded (every byte outside
    /// RFC 3986's unreserved characters), the port is always written, and the query keys the
    /// parser knows are kept, so [`Endpoint::parse`] of the result gives back this endpoint.
    pub fn to_uri(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            encode(&self.host)
        };
        let mut uri = format!(
            "{scheme}://{}:{}@{host}:{}/{}",
            encode(&self.user),
            encode(&self.password),
            self.port,
            encode(&self.vhost)
        );
        let query = [
            ("heartbeat", self.heartbeat.map(|d| d.as_secs().to_string())),
            (
                "connection_timeout",
                self.connect_timeout.map(|d| d.as_millis().to_string()),
            ),
            ("frame_max", self.frame_max.map(|n| n.to_string())),
            ("channel_max", self.channel_max.map(|n| n.to_string())),
            ("cacertfile", self.ca_cert_file.as_deref().map(encode)),
            (
                "server_name_indication",
                self.server_name.as_deref().map(encode),
            ),
            ("certfile", self.cert_file.as_deref().map(encode)),
            ("keyfile", self.key_file.as_deref().map(encode)),
            (
                "verify",
                (self.verify == Verify::None).then(|| "verify_none".to_string()),
            ),
            (
                "auth_mechanism",
                (self.auth_mechanism == AuthMechanism::External).then(|| "external".to_string()),
            ),
        ];
        for (i, (key, value)) in query
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .enumerate()
        {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(key);
            uri.push('=');
            uri.push_str(&value);
        }
        uri
    }
}

/// Percent-encodes every character outside RFC 3986's unreserved set (`%2f` for `/`).
fn encode(v: &str) -> String {
    let mut s = String::new();
    for c in v.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' | '~' => s.push(c),
            _ => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    s.push_str(&format!("%{b:02x}"));
                }
            }
        }
    }
    s
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "{scheme}://{}@{host}:{}/{}",
            self.user,
            self.port,
            encode(&self.vhost)
        )
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl std::str::FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Endpoint::parse(s)
    }
}
