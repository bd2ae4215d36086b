//! [`Endpoint::parse`]: the URI cut into its parts, each part checked and decoded by a small function.

use super::Endpoint;
use super::endpoint::{AuthMechanism, Verify};
use crate::error::Error;
use std::time::Duration;

pub(super) fn bad(part: &'static str, reason: impl Into<String>) -> Error {
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
pub(super) const FIXED_REASONS: &[&str] = &[
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
pub(super) fn decode(part: &'static str, s: &str) -> Result<String, Error> {
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
    /// and for `amqps` the keys RabbitMQ's own clients use: `cacertfile` (PEM CA certificates
    /// to trust instead of the system's), `server_name_indication` (the TLS server name when
    /// it is not the host), `certfile` and `keyfile` (PEM client certificate and its key;
    /// both or neither), `verify` (`verify_peer`, the default, or `verify_none`: any server
    /// certificate accepted) and `auth_mechanism` (`plain`, the default, or `external`: the
    /// broker takes the user name from the client certificate, and no password is sent).
    ///
    /// `certfile`, `keyfile` or `verify_none` on `amqp://`, one of `certfile` / `keyfile`
    /// without the other, and `auth_mechanism=external` without a client certificate are
    /// [`Error::Config`]. The files are read when connecting (so a renewed certificate is
    /// picked up at the next reconnect).
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
            cert_file: None,
            key_file: None,
            verify: Verify::Peer,
            auth_mechanism: AuthMechanism::Plain,
        };
        for kv in parts
            .query
            .unwrap_or("")
            .split('&')
            .filter(|s| !s.is_empty())
        {
            ep.apply_query(kv)?;
        }
        ep.check_tls_settings()?;
        Ok(ep)
    }

    /// The TLS and authentication keys must make sense together (whatever their order).
    fn check_tls_settings(&self) -> Result<(), Error> {
        let config = |what: &str| Err(Error::Config(format!("{self}: {what}")));
        if !self.tls {
            if self.cert_file.is_some() || self.key_file.is_some() {
                return config("certfile and keyfile need amqps://");
            }
            if self.verify == Verify::None {
                return config("verify=verify_none needs amqps://");
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return config("certfile without keyfile: give both"),
            (None, Some(_)) => return config("keyfile without certfile: give both"),
            _ => {}
        }
        if self.auth_mechanism == AuthMechanism::External && self.cert_file.is_none() {
            return config(
                "auth_mechanism=external needs amqps:// and a client certificate \
                 (certfile and keyfile): the broker takes the user name from it",
            );
        }
        Ok(())
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
            "certfile" => self.cert_file = Some(v),
            "keyfile" => self.key_file = Some(v),
            "verify" => {
                self.verify = match v.as_str() {
                    "verify_peer" => Verify::Peer,
                    "verify_none" => Verify::None,
                    other => {
                        return Err(bad(
                            "verify",
                            format!("{other:?} is not verify_peer or verify_none"),
                        ));
                    }
                }
            }
            "auth_mechanism" => {
                self.auth_mechanism = match v.to_ascii_lowercase().as_str() {
                    "plain" => AuthMechanism::Plain,
                    "external" => AuthMechanism::External,
                    _ => {
                        return Err(bad(
                            "auth_mechanism",
                            format!("{v:?} is not plain or external"),
                        ));
                    }
                }
            }
            other => return Err(bad("query", format!("unknown parameter {other:?}"))),
        }
        Ok(())
    }
}
