//! The parser's tests: parts, defaults, and errors that never quote a user name or password.

use super::Endpoint;
use super::endpoint::{AuthMechanism, Verify};
use super::parse::{FIXED_REASONS, bad, decode};
use crate::error::Error;
use std::time::Duration;

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

// Over 100 lines only because rustfmt gives each of the 29 cases of the table several lines.
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
    let e = Endpoint::parse("amqp://a%40b.com:x%3Fy%23z%40w%25v%3Au:t@broker:5673/v%40x").unwrap();
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

/// parse → `to_uri` → parse gives the same endpoint.
fn round_trip(uri: &str) -> Endpoint {
    let e = Endpoint::parse(uri).unwrap();
    let again = Endpoint::parse(&e.to_uri()).unwrap_or_else(|err| panic!("{uri}: {err}"));
    assert_eq!(again, e, "{uri}");
    e
}

#[test]
fn to_uri_round_trips() {
    for uri in [
        "amqp://localhost",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "amqp://user:p%40ss@broker.example:5673/%2f?heartbeat=5",
        "amqp://a%40b.com:x%3Fy%23z%40w%25v%3Au:t@broker:5673/v%40x",
        "amqp://u:%2F%3F%23%40@[::1]:5680/%23?heartbeat=3",
        "amqp://alice@h/prod",
        "amqp://alice:@h/prod",
        "amqp://%C3%A9l%C3%A8ve:m%C3%B8t%20de%20passe%26%3D@h/caf%C3%A9",
        "amqp://h?heartbeat=0&connection_timeout=2500&frame_max=131072&channel_max=64",
        "amqp://h?cacertfile=/etc/ca%40x%20y%26z.pem",
    ] {
        round_trip(uri);
    }
}

#[test]
fn to_uri_holds_the_password_encoded_and_display_still_hides_it() {
    let e = Endpoint::parse("amqp://alice:Zq9%2FxK2p%40w@broker/%2f").unwrap();
    assert_eq!(e.to_uri(), "amqp://alice:Zq9%2fxK2p%40w@broker:5672/%2f");
    let moved = e.with_address("127.0.0.1", 40000);
    assert_eq!(
        moved.to_uri(),
        "amqp://alice:Zq9%2fxK2p%40w@127.0.0.1:40000/%2f"
    );
    let back = Endpoint::parse(&moved.to_uri()).unwrap();
    assert_eq!(
        (back.password.as_str(), back.host(), back.port()),
        ("Zq9/xK2p@w", "127.0.0.1", 40000)
    );
    let shown = format!("{moved} {moved:?} {moved:#?}");
    assert_eq!(leaked(&shown, "Zq9/xK2p@w"), None, "{shown}");
    assert!(!shown.contains("xK2p"), "{shown}");
}

#[cfg(feature = "tls")]
#[test]
fn to_uri_round_trips_tls() {
    let e = round_trip(
        "amqps://u:p%3Aw@broker?server_name_indication=rabbit.example&cacertfile=/etc/ssl/ca%20file.pem",
    );
    assert!(e.to_uri().starts_with("amqps://u:p%3aw@broker:5671/%2f?"));
    round_trip("amqps://u:p@[::1]:5999/v?server_name_indication=x&heartbeat=2");
    round_trip("amqps://h");
}

/// Endpoints with random user names, passwords, vhosts and query values (heavy in the
/// characters a URI gives a meaning to, and non-ASCII) survive `to_uri` and `parse`.
#[test]
fn random_endpoints_round_trip() {
    fn text(rng: &mut fastrand::Rng, min: usize) -> String {
        (0..rng.usize(min..=16))
            .map(|_| match rng.u8(..5) {
                0 => ['/', '?', '#', '@', ':', '%', '&', '=', '[', ']', ' '][rng.usize(..11)],
                1 => rng.char('\u{80}'..='\u{2fff}'),
                _ => rng.char(' '..='~'),
            })
            .collect()
    }
    let mut rng = fastrand::Rng::with_seed(0x7e1d);
    let hosts = ["broker", "127.0.0.1", "::1", "rabbit-1.example", "fe80::1"];
    for _ in 0..2000 {
        let tls = cfg!(feature = "tls") && rng.bool();
        let mut e = Endpoint::parse("amqp://h").unwrap();
        e.tls = tls;
        e.host = hosts[rng.usize(..hosts.len())].to_string();
        e.port = rng.u16(1..);
        e.user = text(&mut rng, 0);
        e.password = text(&mut rng, 0);
        e.vhost = text(&mut rng, 1);
        e.heartbeat = rng.bool().then(|| Duration::from_secs(rng.u64(..100_000)));
        e.connect_timeout = rng
            .bool()
            .then(|| Duration::from_millis(rng.u64(..10_000_000)));
        e.frame_max = rng.bool().then(|| rng.u32(..));
        e.channel_max = rng.bool().then(|| rng.u16(..));
        e.ca_cert_file = rng.bool().then(|| text(&mut rng, 0));
        e.server_name = rng.bool().then(|| text(&mut rng, 0));
        if tls {
            e.verify = if rng.bool() {
                Verify::None
            } else {
                Verify::Peer
            };
            if rng.bool() {
                e.cert_file = Some(text(&mut rng, 0));
                e.key_file = Some(text(&mut rng, 0));
                if rng.bool() {
                    e.auth_mechanism = AuthMechanism::External;
                }
            }
        }
        let uri = e.to_uri();
        let again = Endpoint::parse(&uri).unwrap_or_else(|err| panic!("{e:?}: {err}"));
        assert_eq!(again, e);
        assert_eq!(again.password, e.password);
    }
}

#[cfg(feature = "tls")]
#[test]
fn client_certificate_keys() {
    let e = Endpoint::parse(
        "amqps://broker/%2f?cacertfile=/ca.pem&certfile=/etc/c%20c.pem&keyfile=/k.pem\
         &verify=verify_peer&auth_mechanism=external",
    )
    .unwrap();
    assert_eq!(e.ca_cert_file.as_deref(), Some("/ca.pem"));
    assert_eq!(e.cert_file.as_deref(), Some("/etc/c c.pem"));
    assert_eq!(e.key_file.as_deref(), Some("/k.pem"));
    assert_eq!(e.verify, Verify::Peer);
    assert_eq!(e.auth_mechanism, AuthMechanism::External);
    // Keys in any order; `EXTERNAL` as RabbitMQ spells it works too.
    let e = Endpoint::parse(
        "amqps://h?auth_mechanism=EXTERNAL&keyfile=k&verify=verify_none&certfile=c",
    )
    .unwrap();
    assert_eq!(
        (e.verify, e.auth_mechanism, e.cert_file.as_deref()),
        (Verify::None, AuthMechanism::External, Some("c"))
    );
    // The defaults: verify the server, log in with PLAIN, no client certificate.
    let e = Endpoint::parse("amqps://h").unwrap();
    assert_eq!(
        (e.verify, e.auth_mechanism, e.cert_file, e.key_file),
        (Verify::Peer, AuthMechanism::Plain, None, None)
    );
    let e = Endpoint::parse("amqps://h?auth_mechanism=plain&certfile=c&keyfile=k").unwrap();
    assert_eq!(e.auth_mechanism, AuthMechanism::Plain);
}

#[cfg(feature = "tls")]
#[test]
fn unknown_verify_or_auth_mechanism_is_a_parse_error() {
    for (uri, part, quoted) in [
        (
            "amqps://u:Pw9x@h?verify=verify_always",
            "verify",
            "\"verify_always\"",
        ),
        ("amqps://u:Pw9x@h?verify=", "verify", "\"\""),
        (
            "amqps://u:Pw9x@h?auth_mechanism=amqplain",
            "auth_mechanism",
            "\"amqplain\"",
        ),
    ] {
        match Endpoint::parse(uri) {
            Err(e @ Error::InvalidUri { .. }) => {
                let text = e.to_string();
                assert!(
                    matches!(e, Error::InvalidUri { part: p, .. } if p == part),
                    "{uri}: {text}"
                );
                assert!(text.contains(quoted), "{uri}: {text}");
                assert!(!text.contains("Pw9x"), "{uri}: {text}");
            }
            other => panic!("{uri}: expected an InvalidUri error, got {other:?}"),
        }
    }
}

#[test]
fn tls_settings_that_do_not_fit_together_are_config_errors() {
    let mut cases = vec![
        (
            "amqp://u:Pw9x@h?certfile=c&keyfile=k",
            "certfile and keyfile need amqps://",
        ),
        (
            "amqp://u:Pw9x@h?verify=verify_none",
            "verify=verify_none needs amqps://",
        ),
        (
            "amqp://u:Pw9x@h?auth_mechanism=external",
            "auth_mechanism=external needs amqps:// and a client certificate",
        ),
    ];
    if cfg!(feature = "tls") {
        cases.extend([
            ("amqps://u:Pw9x@h?certfile=c", "certfile without keyfile"),
            ("amqps://u:Pw9x@h?keyfile=k", "keyfile without certfile"),
            (
                "amqps://u:Pw9x@h?auth_mechanism=external",
                "auth_mechanism=external needs amqps:// and a client certificate",
            ),
            (
                "amqps://u:Pw9x@h?auth_mechanism=external&cacertfile=ca",
                "auth_mechanism=external needs amqps:// and a client certificate",
            ),
        ]);
    }
    for (uri, want) in cases {
        match Endpoint::parse(uri) {
            Err(Error::Config(text)) => {
                assert!(text.contains(want), "{uri}: {text}");
                assert!(!text.contains("Pw9x"), "{uri}: {text}");
            }
            other => panic!("{uri}: expected a Config error, got {other:?}"),
        }
    }
}

#[cfg(feature = "tls")]
#[test]
fn to_uri_round_trips_client_certificates() {
    let e = round_trip(
        "amqps://u:p@broker:5671/%2f?cacertfile=/ca.pem&certfile=/c%26d.pem&keyfile=/k%3D.pem\
         &verify=verify_none&auth_mechanism=external",
    );
    let uri = e.to_uri();
    assert!(
        uri.ends_with(
            "?cacertfile=%2fca.pem&certfile=%2fc%26d.pem&keyfile=%2fk%3d.pem\
             &verify=verify_none&auth_mechanism=external"
        ),
        "{uri}"
    );
    // The defaults are left out: `verify_peer` and `plain` round-trip as no key at all.
    let e = round_trip("amqps://h?verify=verify_peer&auth_mechanism=plain&certfile=c&keyfile=k");
    assert!(
        e.to_uri().ends_with("?certfile=c&keyfile=k"),
        "{}",
        e.to_uri()
    );
    // Display and Debug still leave the password out.
    let e = Endpoint::parse("amqps://alice:Zq9xK2pw@h?certfile=c&keyfile=k").unwrap();
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("Zq9xK2pw"), "{shown}");
}
