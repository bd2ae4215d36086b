//! `rabbit-once dlq`: dead letters made by `consume --reject-every`, listed without being
//! consumed, replayed one and then all (each applied once), purged only with `--yes`. Real
//! processes, the real broker.

mod common;
#[path = "../../rabbit-once/tests/support/mod.rs"]
mod support;

use common::{assert_status, delete_queues, json, run_on};
use rabbit_once::sqlx;
use std::process::Output;
use support::*;

/// `rabbit-once` with `args` and the shared broker's URI; at most 60 s.
async fn run(args: &[&str]) -> Output {
    run_on(&broker_uri(), args).await
}

async fn depth(q: &str) -> u32 {
    let conn = direct().await;
    let n = conn.queue_info(q).await.unwrap().messages;
    conn.close().await;
    n
}

/// `consume` with the built-in handler until idle; `extra` flags added.
async fn consume(q: &str, store: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "consume",
        "--queue",
        q,
        "--store",
        store,
        "--until-idle",
        "2",
        "--batch",
        "10",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run(&args).await;
    assert_status(&out, 0);
    json(&out)
}

/// The ids in a JSON array of messages (or of ids).
fn ids(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.get("message_id")
                .unwrap_or(m)
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_replay_and_purge_the_dead_letters_of_reject_every() {
    const N: u64 = 12;
    let q = unique("cli-dlq");
    let dead_q = format!("{q}.dead");
    let db = TempDb::new();
    let store = format!("sqlite:{}", db.path.display());
    let out = run(&[
        "publish",
        "--queue",
        &q,
        "--count",
        &N.to_string(),
        "--size",
        "32",
    ])
    .await;
    assert_status(&out, 0);
    let s = consume(&q, &store, &["--reject-every", "4"]).await;
    assert_eq!(s["dead_lettered"], 3, "{s}");

    // List: the three, with the reason and one attempt; nothing consumed.
    let out = run(&["dlq", "list", "--queue", &q, "--json"]).await;
    assert_status(&out, 0);
    let list = json(&out);
    assert_eq!(list["dead_queue"], dead_q.as_str());
    assert_eq!(list["count"], 3);
    for m in list["messages"].as_array().unwrap() {
        assert!(
            m["reason"].as_str().unwrap().contains("--reject-every 4"),
            "{m}"
        );
        assert_eq!(m["attempts"], 1);
        assert_eq!(m["original_routing_key"], q.as_str());
        assert!(m["last_failure"].as_u64().is_some());
    }
    let dead_ids = ids(&list["messages"]);
    assert_eq!(depth(&dead_q).await, 3);
    let text = run(&["dlq", "list", "--queue", &q]).await;
    assert_status(&text, 0);
    let text = String::from_utf8_lossy(&text.stdout);
    for id in &dead_ids {
        assert!(text.contains(id.as_str()), "{text}");
    }

    // A dry run moves nothing; an id that is not there exits 1.
    let out = run(&[
        "dlq",
        "replay",
        "--queue",
        &q,
        "--id",
        &dead_ids[0],
        "--dry-run",
        "--json",
    ])
    .await;
    assert_status(&out, 0);
    assert_eq!(ids(&json(&out)["would_replay"]), [dead_ids[0].as_str()]);
    assert_eq!((depth(&dead_q).await, depth(&q).await), (3, 0));
    let out = run(&["dlq", "replay", "--queue", &q, "--id", "no-such-id"]).await;
    assert_status(&out, 1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("not found: no-such-id"));

    // Replay one: exactly that one moves, and the fixed consumer applies it.
    let out = run(&[
        "dlq",
        "replay",
        "--queue",
        &q,
        "--id",
        &dead_ids[0],
        "--json",
    ])
    .await;
    assert_status(&out, 0);
    assert_eq!(ids(&json(&out)["replayed"]), [dead_ids[0].as_str()]);
    assert_eq!((depth(&dead_q).await, depth(&q).await), (2, 1));
    let s = consume(&q, &store, &[]).await;
    assert_eq!(s["applied"], 1, "{s}");

    // Replay the rest.
    let out = run(&["dlq", "replay", "--queue", &q, "--all", "--json"]).await;
    assert_status(&out, 0);
    let mut rest = ids(&json(&out)["replayed"]);
    rest.sort();
    let mut want = dead_ids[1..].to_vec();
    want.sort();
    assert_eq!(rest, want);
    assert_eq!(depth(&dead_q).await, 0);
    let s = consume(&q, &store, &[]).await;
    assert_eq!(s["applied"], 2, "{s}");
    let pool = sqlx::SqlitePool::connect(&store).await.unwrap();
    let mut applied: Vec<i64> = sqlx::query_scalar("SELECT seq FROM applied")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    applied.sort();
    assert_eq!(
        applied,
        (0..N as i64).collect::<Vec<_>>(),
        "every seq applied once"
    );

    // Purge: refused without --yes (nothing removed), done with it.
    let out = run(&["publish", "--queue", &dead_q, "--count", "2"]).await;
    assert_status(&out, 0);
    let out = run(&["dlq", "purge", "--queue", &q, "--all"]).await;
    assert_status(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(depth(&dead_q).await, 2);
    let out = run(&["dlq", "purge", "--queue", &q, "--all", "--yes", "--json"]).await;
    assert_status(&out, 0);
    assert_eq!(ids(&json(&out)["removed"]).len(), 2);
    assert_eq!(depth(&dead_q).await, 0);

    let conn = direct().await;
    delete_queues(&conn, &q).await;
    conn.close().await;
}
