//! Client certificates over `amqps://`, against a private node whose TLS listener requires
//! them (`verify_peer`, `fail_if_no_peer_cert`) and offers EXTERNAL: PLAIN and EXTERNAL with
//! a certificate, no certificate, a server certificate from another CA, `verify_none`, and
//! certificate / key files that cannot be used. One node for the whole binary (it costs
//! 5–10 s to start), so the scenarios run in one test, each named in its assertions.

mod support;

use rabbit_once::{Connection, Error, Publisher, PublisherConfig, Queue, Topology};
use rabbit_once_testkit::node::TlsListener;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::*;

const GUARD: Duration = Duration::from_secs(120);
/// The user the EXTERNAL scenarios log in as: the CN of `client.pem`.
const CERT_USER: &str = "ronce-tls-user";

/// Runs `openssl` in `dir`, panicking with its stderr if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA: `<name>.pem` and `<name>.key`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-subj",
            &format!("/CN=rabbit-once test {name}"),
        ],
    );
}

/// A certificate `<name>.pem` (key `<name>.key`) for `cn`, issued by the CA `ca`, with the
/// extensions in `ext` (a subjectAltName for a server).
fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    let ext_file = format!("{name}.ext");
    std::fs::write(dir.join(&ext_file), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-extfile",
            &ext_file,
        ],
    );
}

/// The throwaway PKI of this test, in a directory removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `ca` (the node's), `other-ca`; `server` (localhost, by `ca`); `client` (CN
    /// [`CERT_USER`], by `ca`); `stranger` (a CN that is no user, by `ca`); `rogue` (CN
    /// [`CERT_USER`], by `other-ca`).
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("ronce-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        make_cert(
            &dir,
            "ca",
            "server",
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        );
        let client_ext = "extendedKeyUsage=clientAuth\n";
        make_cert(&dir, "ca", "client", CERT_USER, client_ext);
        make_cert(&dir, "ca", "stranger", "nobody-here", client_ext);
        make_cert(&dir, "other-ca", "rogue", CERT_USER, client_ext);
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// `&cacertfile=…&certfile=…&keyfile=…` for the certificate `name` (trusting `ca`).
    fn client(&self, ca: &str, name: &str) -> String {
        format!(
            "cacertfile={}&certfile={}&keyfile={}",
            self.path(&format!("{ca}.pem")),
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key"))
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects once (no retry), within [`GUARD`]: the connection, or why it failed.
async fn connect_once(uri: &str, queue: &str) -> Result<Connection, Error> {
    let cfg = config(uri)
        .max_attempts(Some(1))
        .topology(Topology::new().queue(Queue::new(queue)));
    tokio::time::timeout(GUARD, Connection::connect(cfg))
        .await
        .expect("connect answers, never hangs")
}

/// Connects to `uri`, which the broker refuses at the TLS layer, until the refusal is read as
/// such (at most 5 tries). Under TLS 1.3 the broker's alert comes after the handshake, and on a
/// loaded machine the socket can be reset before the client has read it: that try ends in a
/// `Connect` error (reset), retried like any — never in a session.
async fn refused(uri: &str, what: &str) -> Error {
    for _ in 0..5 {
        let err = connect_once(uri, &unique("tls-refused"))
            .await
            .expect_err(&format!("{what} is refused"));
        match &err {
            Error::GaveUp { last, .. } if matches!(**last, Error::Connect { .. }) => {
                assert!(last.to_string().contains("reset"), "{err:?}");
            }
            _ => return err,
        }
    }
    panic!("{what}: the broker's alert was never read in 5 tries");
}

/// Publishes one message to `queue` with confirms and reads it back.
async fn round_trip(conn: &Connection, queue: &str, seq: u64) {
    let p = Publisher::new(conn, PublisherConfig::default()).unwrap();
    let confirm = p.publish(seq_message(queue, seq, 64)).await.unwrap();
    tokio::time::timeout(GUARD, confirm)
        .await
        .expect("confirmed in time")
        .expect("confirmed");
    let got = drain(conn, queue, 1, Duration::from_secs(5)).await;
    assert_eq!(
        got.iter().map(|(_, b)| seq_of(b)).collect::<Vec<_>>(),
        vec![seq]
    );
    p.close(Duration::from_secs(5)).await;
}

/// The users of the node's client connections, as `rabbitmqctl list_connections` has them.
async fn connection_users(node: &BrokerNode) -> Vec<String> {
    let out = node
        .ctl_output(&["-q", "list_connections", "user"], GUARD)
        .await
        .unwrap();
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "user")
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_against_a_node_that_requires_them() {
    assert!(
        BrokerNode::available(),
        "RabbitMQ's scripts are needed for private nodes"
    );
    let pki = Pki::new();
    let node = BrokerNode::start_with_tls(&TlsListener {
        cacertfile: pki.dir.join("ca.pem"),
        certfile: pki.dir.join("server.pem"),
        keyfile: pki.dir.join("server.key"),
        require_client_cert: true,
        external_auth: true,
    })
    .await
    .expect("node with a TLS listener that requires client certificates");
    let port = node.tls_port().unwrap();
    node.rabbitmqctl(&["add_user", CERT_USER, "unused-Xq7-password"])
        .await
        .unwrap();
    node.rabbitmqctl(&["clear_password", CERT_USER])
        .await
        .unwrap();
    node.rabbitmqctl(&["set_permissions", "-p", "/", CERT_USER, ".*", ".*", ".*"])
        .await
        .unwrap();
    let base = format!("amqps://guest:guest@localhost:{port}/%2f");

    // 1. A client certificate and PLAIN: the certificate opens TLS, guest/guest logs in.
    let q = unique("tls-plain");
    let conn = connect_once(&format!("{base}?{}", pki.client("ca", "client")), &q)
        .await
        .expect("client certificate + PLAIN connects");
    round_trip(&conn, &q, 1).await;
    assert_eq!(connection_users(&node).await, vec!["guest".to_string()]);
    conn.close().await;

    // 2. EXTERNAL: no password in the URI; the broker takes the user from the certificate.
    let q = unique("tls-external");
    let uri = format!(
        "amqps://localhost:{port}/%2f?{}&auth_mechanism=external",
        pki.client("ca", "client")
    );
    let conn = connect_once(&uri, &q)
        .await
        .expect("client certificate + EXTERNAL connects");
    round_trip(&conn, &q, 2).await;
    assert_eq!(connection_users(&node).await, vec![CERT_USER.to_string()]);
    conn.close().await;

    // 2b. EXTERNAL with a certificate whose CN is no user: refused, for good.
    let uri = format!(
        "amqps://localhost:{port}/%2f?{}&auth_mechanism=external",
        pki.client("ca", "stranger")
    );
    let err = connect_once(&uri, &unique("tls-stranger"))
        .await
        .expect_err("an unknown CN is refused");
    assert!(
        matches!(err, Error::AuthenticationFailed { .. }) && !err.is_recoverable(),
        "{err:?}"
    );
    assert!(err.to_string().contains("EXTERNAL"), "{err}");

    // 3. No client certificate: the broker refuses the TLS handshake; a clear, final error.
    let ca_only = format!("{base}?cacertfile={}", pki.path("ca.pem"));
    let err = refused(&ca_only, "no client certificate").await;
    assert!(
        matches!(err, Error::AuthenticationFailed { .. }) && !err.is_recoverable(),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the broker requires a client certificate: give certfile and keyfile"),
        "{err}"
    );

    // 3b. A client certificate from a CA the broker does not trust: refused, final.
    let err = refused(
        &format!("{base}?{}", pki.client("ca", "rogue")),
        "a certificate from an unknown CA",
    )
    .await;
    assert!(
        matches!(err, Error::AuthenticationFailed { .. }) && !err.is_recoverable(),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the broker does not accept the client certificate"),
        "{err}"
    );

    // 4. Trusting another CA than the server's: the server's certificate is refused.
    let err = connect_once(
        &format!("{base}?{}", pki.client("other-ca", "client")),
        &unique("tls-wrongca"),
    )
    .await
    .expect_err("a server certificate from an untrusted CA is refused");
    let text = err.to_string();
    // A transient kind (the fix is often on the broker's side): retried until max_attempts.
    assert!(
        matches!(&err, Error::GaveUp { last, .. } if matches!(**last, Error::Connect { .. })),
        "{err:?}"
    );
    assert!(
        text.contains("TLS handshake failed")
            && text.contains("UnknownIssuer")
            && text.contains("the broker's certificate is not trusted"),
        "{text}"
    );
    assert!(!text.contains("guest:guest"), "{text}");

    // 4b. verify_none: the same wrong CA is not checked (encrypted, unauthenticated server).
    let q = unique("tls-verify-none");
    let conn = connect_once(
        &format!(
            "{base}?{}&verify=verify_none",
            pki.client("other-ca", "client")
        ),
        &q,
    )
    .await
    .expect("verify_none connects whatever the server's certificate");
    round_trip(&conn, &q, 3).await;
    conn.close().await;

    // 5. A key that is not the certificate's: a configuration error naming both files.
    let mismatched = format!(
        "{base}?cacertfile={}&certfile={}&keyfile={}",
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("stranger.key")
    );
    let err = connect_once(&mismatched, &unique("tls-mismatch"))
        .await
        .expect_err("a key of another certificate is refused");
    let text = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert!(
        text.contains(&format!(
            "keyfile {:?} is not the key of certfile {:?}",
            pki.path("stranger.key"),
            pki.path("client.pem")
        )),
        "{text}"
    );
    assert_no_key_material(&text, &pki.dir.join("stranger.key"));

    // 6. Certificates renewed under a working connection, the key file caught half-written when
    //    the connection must reconnect: it keeps trying (a session worked with these settings)
    //    and takes the files again once they are whole.
    let q = unique("tls-rotation");
    let (pem, key) = (pki.path("rotating.pem"), pki.path("rotating.key"));
    std::fs::copy(pki.path("client.pem"), &pem).unwrap();
    std::fs::copy(pki.path("client.key"), &key).unwrap();
    let uri = format!(
        "{base}?cacertfile={}&certfile={pem}&keyfile={key}",
        pki.path("ca.pem")
    );
    let conn = tokio::time::timeout(
        GUARD,
        Connection::connect(config(&uri).topology(Topology::new().queue(Queue::new(&q)))),
    )
    .await
    .unwrap()
    .expect("connects with the first certificate");
    round_trip(&conn, &q, 6).await;
    std::fs::write(&key, "").unwrap(); // the renewal has begun
    node.rabbitmqctl(&["close_all_connections", "rotation test"])
        .await
        .unwrap();
    assert!(
        eventually(GUARD, || !conn.state().is_connected()).await,
        "the broker closed it"
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // attempts with the half-written key
    assert!(
        conn.state().terminal_error().is_none(),
        "keeps trying: {:?}",
        conn.state()
    );
    std::fs::copy(pki.path("client.key"), &key).unwrap(); // the renewal is done
    assert!(
        eventually(GUARD, || conn.state().is_connected()).await,
        "reconnects with the whole files: {:?}",
        conn.state()
    );
    round_trip(&conn, &q, 7).await;
    conn.close().await;

    drop(node);
}

/// Certificate and key files that cannot be used fail the connection at once with an error
/// naming the file, never quoting a key. No broker is needed: the files are read before the
/// TCP connection (a listener that only accepts, and a closed port).
#[tokio::test]
async fn unusable_certificate_files_are_named_in_a_config_error() {
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let uri = |cert: &str, key: &str, ca: &str| {
        format!(
            "amqps://guest:s3cret-pw@localhost:{port}/%2f?cacertfile={}&certfile={}&keyfile={}",
            pki.path(ca),
            pki.path(cert),
            pki.path(key)
        )
    };
    let missing = pki.path("absent.pem");
    let cases = [
        (
            uri("absent.pem", "client.key", "ca.pem"),
            format!("certfile {missing:?}: No such file or directory"),
        ),
        (
            uri("client.pem", "absent.pem", "ca.pem"),
            format!("keyfile {missing:?}: No such file or directory"),
        ),
        (
            uri("client.pem", "client.key", "absent.pem"),
            format!("cacertfile {missing:?}: No such file or directory"),
        ),
        (
            uri("client.key", "client.key", "ca.pem"),
            format!(
                "certfile {:?}: holds no PEM certificate",
                pki.path("client.key")
            ),
        ),
        (
            uri("client.pem", "client.pem", "ca.pem"),
            format!(
                "keyfile {:?}: holds no PEM private key",
                pki.path("client.pem")
            ),
        ),
    ];
    // Also when no broker answers: the files are read before connecting.
    let closed = rabbit_once_testkit::free_port().unwrap();
    let cases = cases.into_iter().chain([(
        format!(
            "amqps://localhost:{closed}/%2f?certfile={}&keyfile={}",
            pki.path("client.pem"),
            pki.path("absent.pem")
        ),
        format!("keyfile {missing:?}: No such file or directory"),
    )]);
    for (uri, want) in cases {
        let err = connect_once(&uri, &unique("tls-files"))
            .await
            .expect_err("unusable files are refused");
        let text = err.to_string();
        assert!(
            matches!(err, Error::Config(_)) && !err.is_recoverable(),
            "{err:?}"
        );
        assert!(text.contains(&want), "want {want:?} in {text}");
        assert!(!text.contains("s3cret-pw"), "{text}");
        assert_no_key_material(&text, &pki.dir.join("client.key"));
    }
}

/// No line of the key file (its base64 body) shows in `text`.
fn assert_no_key_material(text: &str, key_file: &Path) {
    let key = std::fs::read_to_string(key_file).unwrap();
    for line in key.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material in: {text}");
    }
    assert!(!text.contains("PRIVATE KEY-----"), "{text}");
}
