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

/// What to do about `/ ? # @` in a user name or password (a macro so `concat!` can use it).
macro_rules! encode_userinfo {
    () => {
        "percent-encode / ? # @ in the user name and password, \
         e.g. '/' as %2F, '?' as %3F, '#' as %23, '@' as %40"
    };
}
/// An `@` after the host: either a userinfo cut short by a raw `/ ? #`, or a raw `@` in the
/// vhost or a query value.
const AT_AFTER_HOST: &str = concat!(
    "an '@' after the first '/', '?' or '#': ",
    encode_userinfo!(),
    "; write an '@' in the vhost or a query value as %40"
);
/// More than one `@` before the host.
const MANY_ATS: &str = concat!("more than one '@' before the host: ", encode_userinfo!());
/// A raw `#` that is not inside a mis-split userinfo.
const FRAGMENT: &str =
    "an AMQP URI has no #fragment: write a '#' in the vhost or a query value as %23";
const BAD_PERCENT: &str = "a '%' is not followed by two hex digits (write a '%' itself as %25)";
const NOT_UTF8: &str = "not UTF-8 once percent-decoded";
const BAD_SCHEME: &str = "expected amqp:// or amqps://";
const NO_HOST: &str = "missing";
const UNCLOSED_V6: &str = "unclosed '[' in an IPv6 address";
const COLON_IN_HOST: &str = "a ':' in the host: write an IPv6 address in brackets, e.g. [::1]";
const AFTER_V6: &str = "expected ':' and a port after the ']' of an IPv6 address";
const NOT_A_PORT: &str = "not a number from 1 to 65535";
const SLASH_IN_VHOST: &str = "a '/' in the vhost must be written %2f";

/// Every fixed reason text, so tests can tell a fixed message from an echo of the input.
#[cfg(test)]
const FIXED_REASONS: &[&str] = &[
    AT_AFTER_HOST,
    MANY_ATS,
    FRAGMENT,
    BAD_PERCENT,
    NOT_UTF8,
    BAD_SCHEME,
    NO_HOST,
    UNCLOSED_V6,
    COLON_IN_HOST,
    AFTER_V6,
    NOT_A_PORT,
    SLASH_IN_VHOST,
];

/// Percent-decodes one URI component. Errors never repeat the component: it may be a password.
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
                .ok_or_else(|| bad(part, BAD_PERCENT))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(part, NOT_UTF8))
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

/// `amqp` → false, `amqps` → true. The scheme is echoed only when it looks like one
/// (RFC 3986: a letter, then letters, digits, `+ - .`): text before the first `://` of a
/// garbled URI could hold anything, a password included.
fn parse_scheme(scheme: &str) -> Result<bool, Error> {
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "amqp" => false,
        "amqps" => true,
        other => {
            let looks_like_scheme = other.len() <= 16
                && other.starts_with(|c: char| c.is_ascii_alphabetic())
                && other
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            return Err(if looks_like_scheme {
                bad("scheme", format!("{other:?} is not amqp or amqps"))
            } else {
                bad("scheme", BAD_SCHEME)
            });
        }
    };
    if tls && !cfg!(feature = "tls") {
        return Err(bad("scheme", "amqps needs rabbit-once's \"tls\" feature"));
    }
    Ok(tls)
}

/// The text after `://`, cut into its parts. See [`Endpoint::parse`] for the rule.
/// Deliberately not `Debug`: `userinfo` holds the password.
struct Parts<'a> {
    userinfo: Option<&'a str>,
    hostport: &'a str,
    /// After the `/`; `None` when there is no path.
    path: Option<&'a str>,
    query: Option<&'a str>,
}

/// Splits the text after `://` (RFC 3986 §3.2: the authority ends at the first `/`, `?` or
/// `#`) and refuses every shape a userinfo with a raw `/ ? # @` can produce, before anything
/// else is looked at, so that no later error can quote a piece of a password.
fn split(rest: &str) -> Result<Parts<'_>, Error> {
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let ats = authority.matches('@').count();
    if ats > 1 {
        return Err(bad("userinfo", MANY_ATS));
    }
    if let Some(at) = tail.find('@') {
        // No '@' before the host: this '@' most likely ends a userinfo that was cut short.
        let part = if ats == 0 {
            "userinfo"
        } else if tail[..at].contains('?') {
            "query"
        } else {
            "vhost"
        };
        return Err(bad(part, AT_AFTER_HOST));
    }
    if tail.contains('#') {
        return Err(bad("fragment", FRAGMENT));
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let (userinfo, hostport) = match authority.split_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    Ok(Parts {
        userinfo,
        hostport,
        path: path.strip_prefix('/'),
        query,
    })
}

/// `user[:password]`, percent-decoded; guest/guest when there is no userinfo.
fn parse_userinfo(userinfo: Option<&str>) -> Result<(String, String), Error> {
    Ok(match userinfo {
        None => ("guest".to_string(), "guest".to_string()),
        Some(ui) => match ui.split_once(':') {
            Some((u, p)) => (decode("username", u)?, decode("password", p)?),
            None => (decode("username", ui)?, String::new()),
        },
    })
}

/// `host[:port]` or `[v6][:port]`: the host (decoded, not empty) and the port text, if any.
fn split_host_port(hostport: &str) -> Result<(String, Option<&str>), Error> {
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("host", UNCLOSED_V6))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("port", AFTER_V6))?),
        };
        (h.to_string(), port)
    } else {
        let (h, p) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        let h = decode("host", h)?;
        if h.contains(':') || p.is_some_and(|p| p.contains(':')) {
            return Err(bad("host", COLON_IN_HOST));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(bad("host", NO_HOST));
    }
    Ok((host, port))
}

/// The port, or the scheme's default when there is none. Only a port-sized run of digits
/// (at most 5, like any u16) is quoted back: longer or non-numeric text is not a port, and
/// when the host was forgotten (`amqp://user:password`) it is the password.
fn parse_port(port: Option<&str>, tls: bool) -> Result<u16, Error> {
    match port {
        None | Some("") => Ok(if tls { 5671 } else { 5672 }),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Err(bad("port", format!("{p} is {NOT_A_PORT}")))
            }
            _ => Err(bad("port", NOT_A_PORT)),
        },
    }
}

/// The vhost: no path or an empty one is `/`; a `/` inside must be written `%2f`.
fn parse_vhost(path: Option<&str>) -> Result<String, Error> {
    match path {
        None | Some("") => Ok("/".to_string()),
        Some(p) if p.contains('/') => Err(bad("vhost", SLASH_IN_VHOST)),
        Some(p) => decode("vhost", p),
    }
}

impl Endpoint {
    /// Parses `amqp[s]://[user[:password]@]host[:port][/vhost][?key=value&…]`.
    ///
    /// The vhost is percent-decoded (`%2f` is `/`); no path or an empty path means `/`.
    /// Query keys: `heartbeat` (s), `connection_timeout` (ms), `frame_max`, `channel_max`,
    /// `cacertfile`, `server_name_indication`.
    ///
    /// # User names and passwords with `/ ? # @`
    ///
    /// As in RFC 3986, the host part ends at the first `/`, `?` or `#`, so those characters
    /// and `@` must be percent-encoded in the user name and password (`%2F %3F %23 %40`).
    /// A generated password that is not encoded would otherwise move the split: `/` or `?`
    /// in it makes the rest of the password a vhost or a query, and the URI would connect
    /// to the wrong host as guest and show the password in every log line naming the vhost.
    /// So the parser refuses, before looking at anything else:
    ///
    /// - more than one `@` before the first `/ ? #`;
    /// - any `@` after the first `/ ? #`. This also refuses a raw `@` in a vhost or query
    ///   value, which RFC 3986 would allow: such an `@` cannot be told apart from the end of
    ///   a password holding a `/`, and `%40` always works, so it must be written `%40`;
    /// - any `#`: an AMQP URI has no fragment, and dropping one would connect to another
    ///   vhost than the text says (write `%23`).
    ///
    /// No error repeats any part of the user name or password: the reasons say what to
    /// encode; only the scheme, a digits-only port, and query keys and values are quoted,
    /// and those are taken from after a split that the rule above has made unambiguous.
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| bad("scheme", BAD_SCHEME))?;
        let tls = parse_scheme(scheme)?;
        let parts = split(rest)?;
        let (user, password) = parse_userinfo(parts.userinfo)?;
        let (host, port) = split_host_port(parts.hostport)?;
        let port = parse_port(port, tls)?;
        let vhost = parse_vhost(parts.path)?;
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
        for kv in parts
            .query
            .unwrap_or("")
            .split('&')
            .filter(|s| !s.is_empty())
        {
            ep.apply_query(kv)?;
        }
        Ok(ep)
    }

    /// One `key=value` of the query.
    fn apply_query(&mut self, kv: &str) -> Result<(), Error> {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = decode("query", v)?;
        let num = |what: &'static str| -> Result<u64, Error> {
            v.parse::<u64>()
                .map_err(|_| bad(what, format!("{v:?} is not a number")))
        };
        match k {
            "heartbeat" => self.heartbeat = Some(Duration::from_secs(num("heartbeat")?)),
            "connection_timeout" => {
                self.connect_timeout = Some(Duration::from_millis(num("connection_timeout")?))
            }
            "frame_max" => {
                self.frame_max = Some(
                    u32::try_from(num("frame_max")?).map_err(|_| bad("frame_max", "too large"))?,
                )
            }
            "channel_max" => {
                self.channel_max = Some(
                    u16::try_from(num("channel_max")?)
                        .map_err(|_| bad("channel_max", "too large"))?,
                )
            }
            "cacertfile" => self.ca_cert_file = Some(v),
            "server_name_indication" => self.server_name = Some(v),
            other => return Err(bad("query", format!("unknown parameter {other:?}"))),
        }
        Ok(())
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

    /// Display and Debug of an error, everything a log line could show.
    fn shown(e: &Error) -> String {
        format!("{e} | {e:?}")
    }

    /// The first 3-byte window of `secret` that `text` contains, if any.
    fn leaked<'a>(text: &str, secret: &'a str) -> Option<&'a str> {
        (0..secret.len().saturating_sub(2))
            .filter_map(|i| secret.get(i..i + 3))
            .find(|w| text.contains(w))
    }

    /// Percent-encodes every byte outside RFC 3986's unreserved set.
    fn encode_all(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    #[test]
    fn reported_passwords_with_a_slash_are_refused_without_echo() {
        for uri in [
            "amqp://alice:Zq9/xK2p@broker:5672/%2f",
            "amqp://alice:8080/SeCrEt@broker",
        ] {
            let err = Endpoint::parse(uri).unwrap_err();
            let text = shown(&err);
            assert_eq!(part(uri), "userinfo", "{text}");
            for secret in ["Zq9", "xK2p", "SeCrEt", "8080/SeCrEt", "8080"] {
                assert!(!text.contains(secret), "{uri}: {text}");
            }
            assert!(
                text.contains("percent-encode / ? # @ in the user name and password"),
                "{text}"
            );
            assert!(text.contains("%2F"), "{text}");
        }
    }

    #[test]
    fn malformed_uris_never_echo_the_userinfo() {
        // (uri, userinfo as written, the part the error must name)
        let cases = [
            (
                "amqp://Ub7x:Zq9/xK2p@broker:5672/%2f",
                "Ub7x:Zq9/xK2p",
                "userinfo",
            ),
            (
                "amqp://Ub7x:8080/SeCrEt@broker",
                "Ub7x:8080/SeCrEt",
                "userinfo",
            ),
            (
                "amqp://Ub7x:Qw?Rt7Yu@broker/%2f",
                "Ub7x:Qw?Rt7Yu",
                "userinfo",
            ),
            (
                "amqp://Ub7x:Qw#Rt7Yu@broker/%2f",
                "Ub7x:Qw#Rt7Yu",
                "userinfo",
            ),
            (
                "amqp://Ub7x:Qw@Rt7Yu@broker/%2f",
                "Ub7x:Qw@Rt7Yu",
                "userinfo",
            ),
            (
                "amqp://Ub7x:Qw/Rt7?Yu#Io@broker",
                "Ub7x:Qw/Rt7?Yu#Io",
                "userinfo",
            ),
            (
                "amqp://Ub/7x:QwRt7Yu@broker:5672",
                "Ub/7x:QwRt7Yu",
                "userinfo",
            ),
            (
                "amqp://Ub7x:Qw:Rt/7Yu@broker:5672",
                "Ub7x:Qw:Rt/7Yu",
                "userinfo",
            ),
            (
                "amqp://Ub7x:Qw/Rt7Yu@[::1]:5672/%2f",
                "Ub7x:Qw/Rt7Yu",
                "userinfo",
            ),
            (
                "amqp://Ub7x:Qw%zzRt7Yu@broker/%2f",
                "Ub7x:Qw%zzRt7Yu",
                "password",
            ),
            ("amqp://Ub7x:Qw%4Rt7Yu@broker", "Ub7x:Qw%4Rt7Yu", "password"),
            (
                "amqp://Ub7x:Qw%ffRt7Yu@broker",
                "Ub7x:Qw%ffRt7Yu",
                "password",
            ),
            (
                "amqp://U%zzb7x:QwRt7Yu@broker",
                "U%zzb7x:QwRt7Yu",
                "username",
            ),
            ("amqp://Ub7x:QwRt7Yu@broker:99999/", "Ub7x:QwRt7Yu", "port"),
            ("amqp://Ub7x:QwRt7Yu@broker:12ab/", "Ub7x:QwRt7Yu", "port"),
            ("amqp://Ub7x:QwRt7Yu@/%2f", "Ub7x:QwRt7Yu", "host"),
            ("amqp://Ub7x:QwRt7Yu@", "Ub7x:QwRt7Yu", "host"),
            // The host was forgotten: the password is where the port should be.
            ("amqp://Ub7x:QwRt7Yu", "Ub7x:QwRt7Yu", "port"),
            ("amqp://Ub7x:QwRt7Yu/%2f", "Ub7x:QwRt7Yu", "port"),
            ("amqp://Ub7x:QwRt7Yu@[::1", "Ub7x:QwRt7Yu", "host"),
            ("amqp://Ub7x:QwRt7Yu@[::1]x", "Ub7x:QwRt7Yu", "port"),
            ("amqp://Ub7x:QwRt7Yu@broker:5672:99", "Ub7x:QwRt7Yu", "host"),
            ("amqp://Ub7x:QwRt7Yu@broker/a/b", "Ub7x:QwRt7Yu", "vhost"),
            ("amqp://Ub7x:QwRt7Yu@broker/v@x", "Ub7x:QwRt7Yu", "vhost"),
            (
                "amqp://Ub7x:QwRt7Yu@broker/v#frag",
                "Ub7x:QwRt7Yu",
                "fragment",
            ),
            (
                "amqp://Ub7x:QwRt7Yu@broker?cacertfile=a@b",
                "Ub7x:QwRt7Yu",
                "query",
            ),
            (
                "amqp://Ub7x:QwRt7Yu@broker?heartbeat=soon",
                "Ub7x:QwRt7Yu",
                "heartbeat",
            ),
            ("amqp:/Ub7x:QwRt7Yu@broker", "Ub7x:QwRt7Yu", "scheme"),
            ("Ub7x:QwRt7Yu@amqp://broker", "Ub7x:QwRt7Yu", "scheme"),
        ];
        for (uri, userinfo, want) in cases {
            let err = Endpoint::parse(uri).unwrap_err();
            let text = shown(&err);
            assert_eq!(part(uri), want, "{uri}: {text}");
            assert_eq!(leaked(&text, userinfo), None, "{uri}: {text}");
        }
    }

    #[test]
    fn encoded_special_characters_parse() {
        let e = Endpoint::parse("amqp://alice:Zq9%2FxK2p@broker:5672/%2f").unwrap();
        assert_eq!(
            (e.user(), e.password.as_str(), e.host(), e.port(), e.vhost()),
            ("alice", "Zq9/xK2p", "broker", 5672, "/")
        );
        let e = Endpoint::parse("amqp://alice:8080%2FSeCrEt@broker").unwrap();
        assert_eq!(
            (e.user(), e.password.as_str(), e.host(), e.port(), e.vhost()),
            ("alice", "8080/SeCrEt", "broker", 5672, "/")
        );
        let e =
            Endpoint::parse("amqp://a%40b.com:x%3Fy%23z%40w%25v%3Au:t@broker:5673/v%40x").unwrap();
        assert_eq!(
            (e.user(), e.password.as_str(), e.host(), e.port(), e.vhost()),
            ("a@b.com", "x?y#z@w%v:u:t", "broker", 5673, "v@x")
        );
        let e = Endpoint::parse("amqp://u:%2F%3F%23%40@[::1]:5680/%23?heartbeat=3").unwrap();
        assert_eq!(
            (e.password.as_str(), e.host(), e.port(), e.vhost()),
            ("/?#@", "::1", 5680, "#")
        );
        assert_eq!(e.heartbeat, Some(Duration::from_secs(3)));
        let e = Endpoint::parse("amqp://h?cacertfile=/etc/ca%40x.pem").unwrap();
        assert_eq!(e.ca_cert_file.as_deref(), Some("/etc/ca@x.pem"));
    }

    #[test]
    fn debug_and_display_hide_passwords_with_special_characters() {
        let e = Endpoint::parse("amqp://alice:Zq9%2FxK2p%40w@broker/%2f").unwrap();
        assert_eq!(e.password, "Zq9/xK2p@w");
        for text in [e.to_string(), format!("{e:?}"), format!("{e:#?}")] {
            assert_eq!(leaked(&text, "Zq9/xK2p@w"), None, "{text}");
            assert_eq!(leaked(&text, "Zq9%2FxK2p%40w"), None, "{text}");
        }
        assert_eq!(e.to_string(), "amqp://alice@broker:5672/%2f");
    }

    /// Random printable-ASCII passwords, heavy in `/ ? # @ : %`, pasted raw into a URI:
    /// either they parse to exactly what was written, or the error quotes none of them.
    /// Percent-encoded, they always parse to the password.
    #[test]
    fn random_passwords_parse_exactly_or_fail_without_echo() {
        // All the text an error can hold that does not come from the URI.
        let mut vocabulary = FIXED_REASONS.join(" ");
        for part in ["userinfo", "username", "password", "vhost", "query"] {
            vocabulary += &shown(&bad(part, ""));
        }
        let mut rng = fastrand::Rng::with_seed(0x5ec2e7);
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..2000 {
            let len = rng.usize(1..=24);
            let raw: String = (0..len)
                .map(|_| {
                    if rng.u8(..4) == 0 {
                        ['/', '?', '#', '@', ':', '%'][rng.usize(..6)]
                    } else {
                        rng.char(' '..='~')
                    }
                })
                .collect();
            match Endpoint::parse(&format!("amqp://user:{raw}@host:5672/vhost")) {
                Ok(e) => {
                    parsed += 1;
                    assert!(!raw.contains(['/', '?', '#', '@']), "{raw:?} parsed");
                    assert_eq!(
                        (e.host(), e.port(), e.user(), e.vhost()),
                        ("host", 5672, "user", "vhost"),
                        "{raw:?}"
                    );
                    // A '%' and two hex digits is an encoding, not a literal.
                    if !raw.contains('%') {
                        assert_eq!(e.password, raw);
                    } else {
                        assert_eq!(e.password, decode("password", &raw).unwrap(), "{raw:?}");
                    }
                }
                Err(err) => {
                    refused += 1;
                    let Error::InvalidUri { reason, .. } = &err else {
                        panic!("{raw:?}: {err:?}");
                    };
                    assert!(FIXED_REASONS.contains(&reason.as_str()), "{raw:?}: {err}");
                    let text = shown(&err);
                    // Skip windows that are in the fixed text anyway (e.g. a password with "the").
                    let echoed = (0..raw.len().saturating_sub(2))
                        .map(|i| &raw[i..i + 3])
                        .find(|w| text.contains(w) && !vocabulary.contains(w));
                    assert_eq!(echoed, None, "{raw:?}: {text}");
                }
            }
            let encoded = format!("amqp://user:{}@host:5672/vhost", encode_all(&raw));
            let e = Endpoint::parse(&encoded).unwrap();
            assert_eq!(
                (e.host(), e.port(), e.user(), e.password.as_str(), e.vhost()),
                ("host", 5672, "user", raw.as_str(), "vhost")
            );
        }
        assert!(
            parsed > 100 && refused > 100,
            "{parsed} parsed, {refused} refused"
        );
    }
}
