//! The transactional outbox from the command line, with real processes killed by SIGKILL: a
//! publisher that commits through the outbox and is killed at any moment, then started again
//! with `--resume`, leaves every seq published under the one `message_id` its row was given; relay
//! processes killed between a confirm and the delete publish rows twice, and consumers apply them
//! once.

mod common;
#[path = "../../rabbit-once/tests/support/mod.rs"]
mod support;

use common::{delete_queues, json};

use rabbit_once::sqlx;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_rabbit-once");
const N: u64 = 3000;

fn command(args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(BIN);
    c.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// `publish --outbox … --resume` for seqs 0..N, seven messages per transaction.
fn publish_args<'a>(q: &'a str, outbox: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "publish",
        "--queue",
        q,
        "--count",
        "3000",
        "--size",
        "64",
        "--outbox",
        outbox,
        "--tx-size",
        "7",
        "--resume",
        "--rate",
        "3000",
        "--json",
    ];
    v.extend_from_slice(extra);
    v
}

/// Starts `args`, lets it run for 150–600 ms, kills it with SIGKILL, `times` times over.
async fn kill_repeatedly(args: &[&str], times: usize) {
    for _ in 0..times {
        let mut child = command(args).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..600))).await;
        let _ = child.start_kill(); // SIGKILL
        let _ = child.wait().await;
    }
}

/// Runs `args` to its end and returns its JSON summary; it must succeed.
async fn run_to_end(args: &[&str]) -> serde_json::Value {
    let out = command(args).output().await.unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

/// `sent` holds exactly the seqs 0..N, and the queue's messages cover them all, every copy of a
/// seq with the id its row was given, the first copies in seq order. Returns the duplicates.
fn check_ledger(sent: &[(i64, String)], got: &[(String, bytes::Bytes)]) -> usize {
    let seqs: Vec<i64> = sent.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (0..N as i64).collect::<Vec<_>>(),
        "sent holds 0..N once each"
    );
    let ids: BTreeMap<i64, &str> = sent.iter().map(|(s, id)| (*s, id.as_str())).collect();
    let mut first_copies = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (id, body) in got {
        let seq = seq_of(body) as i64;
        assert_eq!(
            Some(&id.as_str()),
            ids.get(&seq),
            "seq {seq}: one stable message_id"
        );
        if seen.insert(seq) {
            first_copies.push(seq);
        }
    }
    assert_eq!(seen.len() as u64, N, "every committed seq was published");
    assert!(
        first_copies.windows(2).all(|w| w[0] < w[1]),
        "first copies arrive in commit order"
    );
    got.len() - N as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_publisher_killed_and_resumed_publishes_every_seq_under_one_id() {
    let q = unique("cli-outbox-sqlite");
    let db = TempDb::new();
    let outbox = format!("sqlite:{}", db.path.display());
    let uri = broker_uri();
    let args = publish_args(&q, &outbox, &["--uri", &uri]);
    kill_repeatedly(&args, 5).await;
    let summary = run_to_end(&args).await;
    assert_eq!(summary["pending"], 0, "{summary}");

    let pool = sqlx::SqlitePool::connect(&outbox).await.unwrap();
    let sent: Vec<(i64, String)> = sqlx::query_as("SELECT seq, message_id FROM sent ORDER BY seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    let conn = direct().await;
    let got = drain(&conn, &q, N as usize, Duration::from_secs(5)).await;
    let duplicates = check_ledger(&sent, &got);
    eprintln!(
        "5 kills: {} messages, {duplicates} published twice",
        got.len()
    );
    conn.delete_queue(&q).await.unwrap();
    conn.close().await;
}

/// PostgreSQL: the publisher only commits (`--no-relay`) and is killed and resumed; two relay
/// processes share the outbox (one publishes, one stands by), both killed again and again — so rows confirmed and not yet deleted are published twice. An idempotent consumer
/// applies every seq exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relays_killed_publish_twice_and_the_consumer_applies_once() {
    let q = unique("cli-outbox-pg");
    let schema = PgSchema::new();
    let pg = pg_url();
    let uri = broker_uri();
    let publish = publish_args(
        &q,
        &pg,
        &["--schema", &schema.name, "--no-relay", "--uri", &uri],
    );
    let relay = [
        "relay",
        "--outbox",
        &pg,
        "--schema",
        &schema.name,
        "--uri",
        &uri,
        "--poll-ms",
        "200",
    ];
    // The queue exists before the relays start (rows to a missing queue would be refused and
    // held, which another test covers).
    let conn = direct().await;
    conn.declare(&rabbit_once::Topology::new().queue(rabbit_once::Queue::new(&q)))
        .await
        .unwrap();
    let publisher = tokio::spawn({
        let publish: Vec<String> = publish.iter().map(|s| s.to_string()).collect();
        async move {
            let publish: Vec<&str> = publish.iter().map(String::as_str).collect();
            kill_repeatedly(&publish, 3).await;
            run_to_end(&publish).await
        }
    });
    // Two relays, each killed and started again six times: whichever publishes is killed.
    tokio::join!(kill_repeatedly(&relay, 6), kill_repeatedly(&relay, 6));
    let summary = publisher.await.unwrap();
    assert_eq!(summary["first_seq"].as_u64().map(|f| f <= N), Some(true));
    let rest = run_to_end(&[&relay[..], &["--until-empty", "--json"]].concat()).await;
    assert_eq!(rest["pending"], 0, "{rest}");

    let delivered = consume_once(&pg, &schema.name, &q, &uri, N).await;
    eprintln!(
        "relays killed 6 times: {delivered} deliveries, {} published twice",
        delivered - N
    );
    delete_queues(&conn, &q).await;
    conn.close().await;
}

/// Runs `rabbit-once consume` on `q` with the dedup store in `schema` until idle: it must apply
/// each of the `n` seqs in `sent` exactly once, under the id `sent` gives it, and skip every other
/// delivery as a duplicate. Returns the deliveries.
async fn consume_once(pg: &str, schema: &str, q: &str, uri: &str, n: u64) -> u64 {
    let consumed = run_to_end(&[
        "consume",
        "--queue",
        q,
        "--store",
        pg,
        "--schema",
        schema,
        "--until-idle",
        "3",
        "--json",
        "--uri",
        uri,
    ])
    .await;
    let pool = sqlx::PgPool::connect(pg).await.unwrap();
    let sent: Vec<(i64, String)> = sqlx::query_as(&format!(
        "SELECT seq, message_id FROM \"{schema}\".sent ORDER BY seq"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    let applied: Vec<(i64, String, i64)> = sqlx::query_as(&format!(
        "SELECT seq, MIN(message_id), COUNT(*) FROM \"{schema}\".applied GROUP BY seq ORDER BY seq"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    assert_eq!(
        (sent.len() as u64, applied.len() as u64),
        (n, n),
        "every seq applied: {consumed}"
    );
    for ((seq, id, copies), (sent_seq, sent_id)) in applied.iter().zip(&sent) {
        assert_eq!(
            (seq, id, *copies),
            (sent_seq, sent_id, 1),
            "applied once, same id"
        );
    }
    let delivered = consumed["delivered"].as_u64().unwrap();
    assert_eq!(consumed["applied"].as_u64(), Some(n), "{consumed}");
    assert_eq!(
        consumed["duplicates"].as_u64(),
        Some(delivered - n),
        "{consumed}"
    );
    delivered
}

/// The relay dies after the broker confirmed its rows and before it deleted them (here: deletes
/// fail until the test allows them, then the relay is killed): the next relay publishes every
/// one of them again, under the same ids, and the consumer applies each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_relay_killed_between_confirm_and_delete_publishes_twice_applied_once() {
    const ROWS: u64 = 400;
    let q = unique("cli-outbox-twice");
    let schema = PgSchema::new();
    let (pg, uri) = (pg_url(), broker_uri());
    let conn = direct().await;
    conn.declare(&rabbit_once::Topology::new().queue(rabbit_once::Queue::new(&q)))
        .await
        .unwrap();
    run_to_end(&[
        "publish",
        "--queue",
        &q,
        "--count",
        "400",
        "--size",
        "64",
        "--outbox",
        &pg,
        "--schema",
        &schema.name,
        "--tx-size",
        "50",
        "--no-relay",
        "--json",
        "--uri",
        &uri,
    ])
    .await;
    let pool = sqlx::PgPool::connect(&pg).await.unwrap();
    let s = &schema.name;
    for sql in [
        format!(
            "CREATE FUNCTION \"{s}\".no_delete() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'deletes blocked by the test'; END $$"
        ),
        format!(
            "CREATE TRIGGER no_delete BEFORE DELETE ON \"{s}\".rabbit_once_outbox \
             FOR EACH STATEMENT EXECUTE FUNCTION \"{s}\".no_delete()"
        ),
    ] {
        sqlx::query(&sql).execute(&pool).await.unwrap();
    }
    let relay = ["relay", "--outbox", &pg, "--schema", s, "--uri", &uri];
    let mut first = command(&relay).spawn().unwrap();
    let mut all_confirmed = false;
    for _ in 0..300 {
        // A persistent message is counted once the broker took it, before its confirm; the
        // status below shows the rows were still not deleted.
        if conn.queue_info(&q).await.unwrap().messages as u64 == ROWS {
            all_confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(all_confirmed, "the first relay published every row");
    first.start_kill().unwrap(); // SIGKILL: confirmed, never deleted
    first.wait().await.unwrap();
    let status = run_to_end(&["outbox", "status", "--outbox", &pg, "--schema", s, "--json"]).await;
    assert_eq!(status["pending"], ROWS, "{status}");
    sqlx::query(&format!(
        "DROP TRIGGER no_delete ON \"{s}\".rabbit_once_outbox"
    ))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let second = run_to_end(&[&relay[..], &["--until-empty", "--json"]].concat()).await;
    assert_eq!(
        (second["relayed"].as_u64(), second["pending"].as_u64()),
        (Some(ROWS), Some(0))
    );
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages as u64,
        2 * ROWS,
        "published twice"
    );
    let delivered = consume_once(&pg, s, &q, &uri, ROWS).await;
    assert_eq!(delivered, 2 * ROWS, "and applied once");
    delete_queues(&conn, &q).await;
    conn.close().await;
}

/// A row the broker refuses (its exchange does not exist) is shown by `outbox status` with its
/// reason; `relay --until-empty` publishes the rest and exits 1 naming it; refused again it is
/// parked; once the cause is fixed an operator requeues it, and it goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_row_is_reported_parked_and_requeued_from_the_command_line() {
    let q = unique("cli-outbox-refused");
    let db = TempDb::new();
    let spec = format!("sqlite:{}", db.path.display());
    let uri = broker_uri();
    let store = rabbit_once::SqliteStore::open(&db.path).await.unwrap();
    let outbox = rabbit_once::SqliteOutbox::new(store.pool().clone());
    outbox.migrate().await.unwrap();
    let conn = direct().await;
    conn.declare(&rabbit_once::Topology::new().queue(rabbit_once::Queue::new(&q)))
        .await
        .unwrap();
    let mut tx = rabbit_once::Store::begin(&store).await.unwrap();
    let nowhere = rabbit_once::Message::new(format!("{q}-missing-exchange"), "k", "lost?")
        .with_message_id("refused-1");
    outbox.enqueue(&mut tx, nowhere).await.unwrap();
    let good = (0..10).map(|i| rabbit_once::Message::to_queue(&q, format!("{i}")));
    outbox.enqueue_all(&mut tx, good).await.unwrap();
    tx.commit().await.unwrap();

    let relay = [
        "relay",
        "--outbox",
        &spec,
        "--uri",
        &uri,
        "--until-empty",
        "--json",
        "--retry-after",
        "1",
    ];
    let out = command(&relay).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "only a refused row is left");
    assert_eq!(json(&out)["pending"], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused-1"));
    let status = run_to_end(&["outbox", "status", "--outbox", &spec, "--json"]).await;
    assert_eq!(
        (status["pending"].as_u64(), status["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let row = &status["failed_rows"][0];
    assert_eq!(row["message_id"], "refused-1");
    assert!(row["attempts"].as_u64() >= Some(1), "{row}");
    let reason = row["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("exchange") && reason.contains("does not exist"),
        "{reason}"
    );
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        10,
        "the rest flowed"
    );

    // Refused once more (once its retry is due), it is parked: out of the outbox, kept; the
    // relay still exits 1.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let park = [&relay[..], &["--park-after", "1"]].concat();
    let out = command(&park).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "a parked row is not published");
    assert_eq!(
        (
            json(&out)["pending"].as_u64(),
            json(&out)["parked"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let status = run_to_end(&["outbox", "status", "--outbox", &spec, "--json"]).await;
    assert_eq!(
        status["parked_rows"][0]["message_id"], "refused-1",
        "{status}"
    );

    // The cause fixed (the exchange exists, bound to the queue), an operator requeues it.
    let exchange = format!("{q}-missing-exchange");
    conn.declare(
        &rabbit_once::Topology::new()
            .exchange(rabbit_once::Exchange::new(
                &exchange,
                rabbit_once::ExchangeKind::Direct,
            ))
            .binding(rabbit_once::Binding::queue(&q, &exchange, "k")),
    )
    .await
    .unwrap();
    let out = command(&["outbox", "requeue", "--outbox", &spec, "--id", "refused-1"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command(&["outbox", "discard", "--outbox", &spec, "--id", "no-such-id"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "no such row");
    let out = run_to_end(&relay).await;
    assert_eq!(
        (out["pending"].as_u64(), out["parked"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        conn.queue_info(&q).await.unwrap().messages,
        11,
        "and it went out"
    );
    store.pool().close().await;
    conn.delete_queue(&q).await.unwrap();
    conn.delete_exchange(&exchange).await.unwrap();
    conn.close().await;
}
