//! Tests that stop, restart, kill or alarm a broker: each on a private RabbitMQ node of its own
//! (own ports, name and data directory), never the shared one. One at a time: a node costs
//! ~150 MB and most of a core while it starts.

mod support;

use rabbit_once::{Connection, Event, Publisher, PublisherConfig, Queue, Topology};
use std::collections::BTreeSet;
use std::time::Duration;
use support::*;
use tokio::sync::Mutex;

static ONE_NODE_AT_A_TIME: Mutex<()> = Mutex::const_new(());
const GUARD: Duration = Duration::from_secs(120);

async fn node() -> BrokerNode {
    assert!(
        BrokerNode::available(),
        "RabbitMQ's scripts are needed for private nodes"
    );
    BrokerNode::start().await.expect("private node starts")
}

async fn wait_event(events: &mut rabbit_once::Events, want: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(GUARD, async {
        loop {
            match events.recv().await {
                Some(e) if want(&e) => return e,
                Some(_) => {}
                None => panic!("event stream ended"),
            }
        }
    })
    .await
    .expect("event arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_for_a_broker_that_is_down_at_start() {
    let _one = ONE_NODE_AT_A_TIME.lock().await;
    let node = node().await;
    node.stop_app().await.unwrap();
    let q = unique("node-late");
    let conn =
        Connection::start(config(&node.uri()).topology(Topology::new().queue(Queue::new(&q))))
            .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let mut cs = Vec::new();
    for i in 0..1000 {
        cs.push(p.publish(seq_message(&q, i, 100)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!conn.state().is_connected());
    assert_eq!(
        (p.stats().accepted, p.stats().confirmed),
        (1000, 0),
        "accepted, waiting"
    );

    node.start_app().await.unwrap();
    for c in cs {
        tokio::time::timeout(GUARD, c).await.unwrap().unwrap();
    }
    assert_eq!(p.stats().confirmed, 1000);
    let got = drain(&conn, &q, 1000, Duration::from_secs(3)).await;
    let seqs: Vec<u64> = got.iter().map(|(_, b)| seq_of(b)).collect();
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>(), "in order, once");
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
}

/// Publishes persistent messages without pause while `fault` runs (once 1,000 are confirmed),
/// and 1,000 more after the connection is back; checks that every message is confirmed and the
/// durable queue holds every seq (duplicates allowed: those are re-publishes).
async fn publish_through(node: &BrokerNode, fault: impl AsyncFnOnce(&BrokerNode)) {
    let q = unique("node-fault");
    let conn =
        Connection::start(config(&node.uri()).topology(Topology::new().queue(Queue::new(&q))))
            .unwrap();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = {
        let (p, q, stop) = (p.clone(), q.clone(), stop.clone());
        tokio::spawn(async move {
            let (tx, waiter) = confirm_all(GUARD, |_| {});
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tx.send((i, p.publish(seq_message(&q, i, 200)).await.unwrap()))
                    .unwrap();
                i += 1;
            }
            drop(tx);
            (i, waiter.await.unwrap())
        })
    };
    assert!(eventually(GUARD, || p.stats().confirmed >= 1000).await);
    fault(node).await;
    assert!(
        eventually(GUARD, || conn.reconnects() >= 1).await,
        "the fault cost a session"
    );
    let after = p.stats().confirmed;
    assert!(eventually(GUARD, || p.stats().confirmed >= after + 1000).await);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (n, ids) = tokio::time::timeout(GUARD, publishing)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids.len() as u64, n, "every accepted message confirmed");
    let got = drain(&conn, &q, n as usize, Duration::from_secs(3)).await;
    let mut seen = BTreeSet::new();
    for (id, b) in &got {
        let s = seq_of(b);
        assert_eq!(Some(id), ids.get(&s), "same message_id on re-publish");
        seen.insert(s);
    }
    assert_eq!(seen, (0..n).collect(), "every confirmed message survived");
    assert!((got.len() as u64 - n) <= p.stats().republished);
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_and_kill_nine_lose_no_confirmed_message() {
    let _one = ONE_NODE_AT_A_TIME.lock().await;
    let node = node().await;
    publish_through(&node, async |node| {
        node.restart_app().await.unwrap();
    })
    .await;
    publish_through(&node, async |node| {
        node.kill9_and_restart().await.unwrap();
    })
    .await;
    publish_through(&node, async |node| {
        node.close_all_connections("test closes connections")
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_connection_pauses_publishing_until_unblocked() {
    let _one = ONE_NODE_AT_A_TIME.lock().await;
    let node = node().await;
    let q = unique("node-blocked");
    let conn =
        Connection::connect(config(&node.uri()).topology(Topology::new().queue(Queue::new(&q))))
            .await
            .unwrap();
    let mut events = conn.events();
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    p.publish_confirmed(seq_message(&q, 0, 10)).await.unwrap();

    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0"])
        .await
        .unwrap();
    let mut c = p.publish(seq_message(&q, 1, 10)).await.unwrap();
    wait_event(&mut events, |e| matches!(e, Event::Blocked { .. })).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut c)
            .await
            .is_err(),
        "not confirmed while blocked"
    );
    let more = p.publish(seq_message(&q, 2, 10)).await.unwrap();
    assert!(
        eventually(GUARD, || p.stats().buffered == 2).await,
        "publish still accepts into the buffer: {:?}",
        p.stats()
    );

    node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"])
        .await
        .unwrap();
    wait_event(&mut events, |e| matches!(e, Event::Unblocked)).await;
    tokio::time::timeout(GUARD, c).await.unwrap().unwrap();
    tokio::time::timeout(GUARD, more).await.unwrap().unwrap();
    assert_eq!(conn.queue_info(&q).await.unwrap().messages, 3);
    p.close(Duration::from_secs(5)).await;
    conn.close().await;
}

/// A throwaway CA and a server certificate for `localhost`, made with the `openssl` command.
fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
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
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=rabbit-once test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    let p = |f: &str| dir.join(f).display().to_string();
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_publishes_and_consumes_over_tls_and_refuses_an_unknown_ca() {
    let _one = ONE_NODE_AT_A_TIME.lock().await;
    let certs = std::env::temp_dir().join(unique("ronce-tls"));
    std::fs::create_dir_all(&certs).unwrap();
    let (ca, cert, key) = make_certs(&certs);
    let tls_port = rabbit_once_testkit::free_port().unwrap();
    let node = BrokerNode::start_with_config(&format!(
        "listeners.ssl.default = {tls_port}\n\
         ssl_options.cacertfile = {ca}\n\
         ssl_options.certfile = {cert}\n\
         ssl_options.keyfile = {key}\n\
         ssl_options.verify = verify_none\n\
         ssl_options.fail_if_no_peer_cert = false\n"
    ))
    .await
    .expect("node with a TLS listener");
    assert!(
        eventually(GUARD, || std::net::TcpStream::connect((
            "127.0.0.1",
            tls_port
        ))
        .is_ok())
        .await
    );

    let q = unique("node-tls");
    let uri = format!("amqps://guest:guest@localhost:{tls_port}/%2f?cacertfile={ca}");
    let conn = Connection::connect(config(&uri).topology(Topology::new().queue(Queue::new(&q))))
        .await
        .expect("connects over TLS");
    let p = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let mut cs = Vec::new();
    for i in 0..200 {
        cs.push(p.publish(seq_message(&q, i, 1000)).await.unwrap());
    }
    for c in cs {
        c.await.unwrap();
    }
    let got = drain(&conn, &q, 200, Duration::from_secs(3)).await;
    assert_eq!(
        got.iter().map(|(_, b)| seq_of(b)).collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );
    p.close(Duration::from_secs(5)).await;
    conn.close().await;

    // Without our CA the server's certificate is not trusted: a clear TLS error, never a
    // silent plaintext fallback.
    let untrusted = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let cfg = config(&untrusted).max_attempts(Some(1));
    let err = tokio::time::timeout(GUARD, Connection::connect(cfg))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    drop(node);
    let _ = std::fs::remove_dir_all(&certs);
}
