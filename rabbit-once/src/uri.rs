//! `amqp://` / `amqps://` URIs: parsing (errors name the bad part) and a display without the password.

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
}

fn bad(part: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidUri {
        part,
        reason: reason.into(),
    }
}

/// Percent-decodes one URI component.
fn decode(part: &'static str, s: &str) -> Result<String, Error> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(part, "a '%' is not followed by two hex digits"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(part, "not UTF-8 once percent-decoded"))
}

fn encode_vhost(v: &str) -> String {
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

impl Endpoint {
    /// Parses `amqp[s]://[user[:password]@]host[:port][/vhost][?key=value&…]`.
    ///
    /// The vhost is percent-decoded (`%2f` is `/`); no path or an empty path means `/`.
    /// Query keys: `heartbeat` (s), `connection_timeout` (ms), `frame_max`, `channel_max`,
    /// `cacertfile`, `server_name_indication`.
    ///
    /// The user name and password must have `/ ? # @` percent-encoded (`%2F %3F %23 %40`): a
    /// generated password with a raw `/` would otherwise end the host part early, and the rest
    /// would be read as a port or — worse — as a vhost on another host, shown in every log line.
    /// So an `@` anywhere after the first `/`, `?` or `#`, or a second `@` before it, is refused
    /// (`part: "userinfo"`), and no error ever repeats a byte of what came before that `@`. (An
    /// `@` in a vhost must be written `%40` for the same reason.) A `#` is refused as well: a URI
    /// for a broker has no fragment, and a raw `#` is most likely part of a password.
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("scheme", "expected amqp:// or amqps://"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "amqp" => false,
            "amqps" => true,
            // Echoed only when it looks like a scheme: text before "://" could be anything.
            other if other.len() <= 10 && other.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                return Err(bad("scheme", format!("{other:?} is not amqp or amqps")));
            }
            _ => return Err(bad("scheme", "expected amqp:// or amqps://")),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let ats = rest[..authority_end].matches('@').count();
        if ats > 1 || rest[authority_end..].contains('@') {
            return Err(bad(
                "userinfo",
                "the user name or password holds a raw '/', '?', '#' or '@': percent-encode \
                 them (%2F, %3F, %23, %40)",
            ));
        }
        if rest.contains('#') {
            return Err(bad(
                "uri",
                "a raw '#' (a password character?) must be percent-encoded as %23",
            ));
        }
        if tls && !cfg!(feature = "tls") {
            return Err(bad("scheme", "amqps needs rabbit-once's \"tls\" feature"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.find('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => ("guest".to_string(), "guest".to_string()),
            Some(ui) => match ui.split_once(':') {
                Some((u, p)) => (decode("username", u)?, decode("password", p)?),
                None => (decode("username", ui)?, String::new()),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("host", "unclosed '[' in an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("port", "unexpected text after the IPv6 address"))?,
                ),
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (decode("host", h)?, Some(p)),
                None => (decode("host", hostport)?, None),
            }
        };
        if host.is_empty() {
            return Err(bad("host", "missing"));
        }
        let port = match port {
            None | Some("") => {
                if tls {
                    5671
                } else {
                    5672
                }
            }
            Some(p) => match p.parse::<u16>() {
                // Not echoed: text in the port's place may be a cut-off password.
                Ok(0) | Err(_) => {
                    return Err(bad("port", "not a port number (1-65535)"));
                }
                Ok(n) => n,
            },
        };
        let vhost = match path {
            None | Some("") => "/".to_string(),
            Some(p) => {
                if p.contains('/') {
                    return Err(bad("vhost", "a '/' in the vhost must be written %2f"));
                }
                decode("vhost", p)?
            }
        };
        let mut ep = Endpoint {
            tls,
            host,
            port,
            user,
            password,
            vhost,
            heartbeat: None,
            connect_timeout: None,
            frame_max: None,
            channel_max: None,
            ca_cert_file: None,
            server_name: None,
        };
        for kv in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = decode("query", v)?;
            let num = |what: &'static str| -> Result<u64, Error> {
                v.parse::<u64>()
                    .map_err(|_| bad(what, format!("{v:?} is not a number")))
            };
            match k {
                "heartbeat" => ep.heartbeat = Some(Duration::from_secs(num("heartbeat")?)),
                "connection_timeout" => {
                    ep.connect_timeout = Some(Duration::from_millis(num("connection_timeout")?))
                }
                "frame_max" => {
                    ep.frame_max = Some(
                        u32::try_from(num("frame_max")?)
                            .map_err(|_| bad("frame_max", "too large"))?,
                    )
                }
                "channel_max" => {
                    ep.channel_max = Some(
                        u16::try_from(num("channel_max")?)
                            .map_err(|_| bad("channel_max", "too large"))?,
                    )
                }
                "cacertfile" => ep.ca_cert_file = Some(v),
                "server_name_indication" => ep.server_name = Some(v),
                other => {
                    return Err(bad("query", format!("unknown parameter {other:?}")));
                }
            }
        }
        Ok(ep)
    }

    /// The virtual host (decoded).
    pub fn vhost(&self) -> &str {
        &self.vhost
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

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
            encode_vhost(&self.vhost)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn part(uri: &str) -> &'static str {
        match Endpoint::parse(uri) {
            Err(Error::InvalidUri { part, .. }) => part,
            other => panic!("{uri}: expected an InvalidUri error, got {other:?}"),
        }
    }

    #[test]
    fn full_uri() {
        let e = Endpoint::parse("amqp://user:p%40ss@broker.example:5673/%2f?heartbeat=5").unwrap();
        assert_eq!(e.host, "broker.example");
        assert_eq!(e.port, 5673);
        assert_eq!(e.user, "user");
        assert_eq!(e.password, "p@ss");
        assert_eq!(e.vhost, "/");
        assert_eq!(e.heartbeat, Some(Duration::from_secs(5)));
        assert!(!e.tls);
    }

    #[test]
    fn defaults() {
        let e = Endpoint::parse("amqp://localhost").unwrap();
        assert_eq!(
            (
                e.port,
                e.user.as_str(),
                e.password.as_str(),
                e.vhost.as_str()
            ),
            (5672, "guest", "guest", "/")
        );
        assert_eq!(Endpoint::parse("amqp://h/").unwrap().vhost, "/");
        assert_eq!(Endpoint::parse("amqp://h/prod").unwrap().vhost, "prod");
        assert_eq!(Endpoint::parse("amqp://h/a%2Fb").unwrap().vhost, "a/b");
        let v6 = Endpoint::parse("amqp://[::1]:5680/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5680));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn amqps_defaults_to_5671() {
        let e = Endpoint::parse("amqps://h?server_name_indication=broker").unwrap();
        assert!(e.tls);
        assert_eq!(e.port, 5671);
        assert_eq!(e.server_name.as_deref(), Some("broker"));
    }

    #[test]
    fn errors_name_the_part() {
        assert_eq!(part("http://h"), "scheme");
        assert_eq!(part("localhost:5672"), "scheme");
        assert_eq!(part("amqp://h:99999"), "port");
        assert_eq!(part("amqp://h:abc/"), "port");
        assert_eq!(part("amqp://"), "host");
        assert_eq!(part("amqp://u:p@/"), "host");
        assert_eq!(part("amqp://h/a/b"), "vhost");
        assert_eq!(part("amqp://h/%zz"), "vhost");
        assert_eq!(part("amqp://u:%G0@h"), "password");
        assert_eq!(part("amqp://h?heartbeat=soon"), "heartbeat");
        assert_eq!(part("amqp://h?colour=red"), "query");
    }

    #[test]
    fn password_is_never_shown() {
        let e = Endpoint::parse("amqp://alice:s3cret-pw@h:5672/v%2fx").unwrap();
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(e.to_string(), "amqp://alice@h:5672/v%2fx");
        let err = Endpoint::parse("amqp://alice:s3cret@h:99999").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("s3cret"));
    }

    /// Every error for `uri` hides `secret`: no run of 5 of its bytes shows in Display or Debug.
    fn hides(uri: &str, secret: &str) -> Error {
        let err = Endpoint::parse(uri).expect_err(uri);
        let shown = format!("{err} {err:?}");
        let b = secret.as_bytes();
        for w in b.windows(5.min(b.len())) {
            let w = String::from_utf8_lossy(w);
            assert!(!shown.contains(w.as_ref()), "{uri}: {shown} shows {w:?}");
        }
        err
    }

    #[test]
    fn unencoded_delimiters_in_a_password_are_refused_without_echo() {
        let e = hides("amqp://alice:Zq9/xK2p@broker:5672/%2f", "Zq9/xK2p");
        assert!(
            matches!(
                e,
                Error::InvalidUri {
                    part: "userinfo",
                    ..
                }
            ),
            "{e:?}"
        );
        // Used to parse: host "alice", user guest, the password as the vhost.
        let e = hides("amqp://alice:8080/SeCrEt@broker", "8080/SeCrEt");
        assert!(
            matches!(
                e,
                Error::InvalidUri {
                    part: "userinfo",
                    ..
                }
            ),
            "{e:?}"
        );
        for uri in [
            "amqp://bob:pa?ss-word-1@h/v",
            "amqp://bob:pa#ss-word-1@h/v",
            "amqp://bob:pa@ss-word-1@h/v",
            "amqp://bob:pass-word-1/@h",
            "amqp://bob:pass-word-1?@h:5672",
            "amqps://bob:p/a/s/s-word-1@h:5671/%2f?heartbeat=5",
            "amqp://bob:pass-word-1#frag",
            "amqp://bob:pass-%zz-word@h",
            "amqp://bob:pass-word-1@h:notaport",
            "amqp://bob:pass-word-1@[::1]x",
            "amqp://bob:pass-word-1@:5672",
            "amqp://bob:pass-word-1@h/v?heartbeat=soon",
            "bob:pass-word-1@amqp://h",
            "amqp://bob%ZZ:pass-word-1@h",
        ] {
            hides(uri, "pass-word-1");
            hides(uri, "ss-word-1");
        }
    }

    #[test]
    fn encoded_delimiters_in_a_password_parse() {
        let e = Endpoint::parse("amqp://alice:Zq9%2FxK2p%3F%23%40@broker:5673/%2f").unwrap();
        assert_eq!(
            (e.user(), e.password.as_str(), e.host(), e.port(), e.vhost()),
            ("alice", "Zq9/xK2p?#@", "broker", 5673, "/")
        );
        assert!(!format!("{e} {e:?}").contains("Zq9"));
    }

    /// 2,000 random passwords of printable ASCII, with `/ ? # @ : %` likely: raw, each either
    /// parses to exactly what was meant or fails without showing any 5 bytes of it; encoded,
    /// each parses to the password.
    #[test]
    fn random_passwords_never_leak_and_encoded_ones_always_parse() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        const SPECIAL: &[u8] = b"/?#@:%&=+[] ";
        for _ in 0..2000 {
            let len = rng.usize(8..24);
            let pw: String = (0..len)
                .map(|_| {
                    if rng.u8(..4) == 0 {
                        SPECIAL[rng.usize(..SPECIAL.len())] as char
                    } else {
                        rng.u8(b'!'..=b'~') as char
                    }
                })
                .collect();
            let raw = format!("amqp://user:{pw}@host:5672/vhost");
            match Endpoint::parse(&raw) {
                Ok(e) => {
                    assert_eq!(
                        (e.host(), e.port(), e.user(), e.vhost()),
                        ("host", 5672, "user", "vhost"),
                        "{raw}"
                    );
                    assert_eq!(e.password, decode("password", &pw).unwrap(), "{raw}");
                    assert!(!format!("{e} {e:?}").contains(&pw));
                }
                Err(_) => {
                    hides(&raw, &pw);
                }
            }
            let encoded: String = pw
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let e = Endpoint::parse(&format!("amqp://user:{encoded}@host:5672/vhost")).unwrap();
            assert_eq!((e.password.as_str(), e.host()), (pw.as_str(), "host"));
        }
    }
}
