//! What a chaos run stands on: the broker (a private node or the one given), the fault proxy
//! in front of it, the dedup store, the work directory — and their removal at the end.

use super::args::Args;
use crate::applied::Db;
use rabbit_once::Endpoint;
use rabbit_once::{Connection, ConnectionConfig};
use rabbit_once_testkit::{BrokerNode, FaultProxy};
use std::path::PathBuf;

/// The run's surroundings, made by [`Setup::start`] and removed by [`Setup::clean_up`].
pub(super) struct Setup {
    /// Names the queue, the work directory, the message ids and a fresh PostgreSQL schema.
    pub(super) run_id: String,
    /// Reports and the default SQLite file.
    pub(super) work: PathBuf,
    pub(super) node: Option<BrokerNode>,
    pub(super) proxy: FaultProxy,
    /// The broker itself, bypassing the proxy (for the check connection).
    direct_uri: String,
    /// The broker through the proxy: what the children connect to.
    pub(super) via: Endpoint,
    /// `sqlite:PATH` or `postgres://…`, as the children's `--store`.
    pub(super) store: String,
    pub(super) schema: Option<String>,
    /// The schema is this run's own: dropped at the end.
    own_schema: bool,
    pub(super) db: Db,
    pub(super) queue: String,
    /// With `--pipeline`: the second stage's queue and store.
    pub(super) stage2: Option<Stage2>,
}

/// The second stage of a `--pipeline` run: its queue, and the store its consumers apply into
/// (its own `applied` table).
pub(super) struct Stage2 {
    pub(super) queue: String,
    /// `sqlite:PATH` or `postgres://…`, as the stage-2 consumers' `--store`.
    pub(super) store: String,
    pub(super) schema: Option<String>,
    pub(super) db: Db,
}

impl Setup {
    /// Makes the work directory, starts the node (with `--own-broker`) and the proxy, and opens
    /// and prepares the store.
    pub(super) async fn start(a: &Args, say: &dyn Fn(String)) -> anyhow::Result<Setup> {
        let run_id = rabbit_once_testkit::unique("chaos");
        let work = std::env::temp_dir().join(&run_id);
        std::fs::create_dir_all(&work)?;
        let node = if a.own_broker {
            say("starting a private RabbitMQ node…".into());
            Some(BrokerNode::start().await?)
        } else {
            None
        };
        let direct_uri = match &node {
            Some(n) => n.uri(),
            None => a.conn.uris[0].clone(),
        };
        let target = Endpoint::parse(&direct_uri)?;
        let proxy = FaultProxy::start(format!("{}:{}", target.host(), target.port())).await?;
        let via = target.with_address("127.0.0.1", proxy.port());
        let store = a
            .store
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", work.join("chaos.db").display()));
        let own_schema = store.starts_with("postgres") && a.schema.is_none();
        let schema = a
            .schema
            .clone()
            .or_else(|| own_schema.then(|| run_id.replace('-', "_")));
        let db = Db::open(&store, schema.clone()).await?;
        db.prepare().await?;
        let queue = run_id.clone();
        let stage2 = if a.pipeline {
            let store = if store.starts_with("postgres") {
                store.clone()
            } else {
                format!("sqlite:{}", work.join("stage2.db").display())
            };
            let schema = schema.as_ref().map(|s| format!("{s}_2"));
            let db = Db::open(&store, schema.clone()).await?;
            db.prepare().await?;
            Some(Stage2 {
                queue: format!("{run_id}-2"),
                store,
                schema,
                db,
            })
        } else {
            None
        };
        say(format!(
            "chaos run {run_id}: {} messages, {} publishers, {} consumers, via {via}, store {}",
            a.messages,
            a.publishers,
            a.consumers,
            if store.starts_with("sqlite") {
                "SQLite"
            } else {
                "PostgreSQL"
            }
        ));
        Ok(Setup {
            run_id,
            work,
            node,
            proxy,
            direct_uri,
            via,
            store,
            schema,
            own_schema,
            db,
            queue,
            stage2,
        })
    }

    /// A connection straight to the broker, for queue depths and the clean-up.
    pub(super) async fn check_connection(&self) -> anyhow::Result<Connection> {
        Ok(Connection::connect(
            ConnectionConfig::new(&self.direct_uri)?.name("rabbit-once chaos check"),
        )
        .await?)
    }

    /// Deletes the run's queues and its own schema, removes the work directory unless `keep`,
    /// and stops the private node.
    pub(super) async fn clean_up(self, keep: bool, check: Connection, say: &dyn Fn(String)) {
        // The children run `consume` with its default retry policy.
        let stage2 = self.stage2.as_ref().map(|s| s.queue.clone());
        for queue in std::iter::once(self.queue.clone()).chain(stage2) {
            let queues = rabbit_once::ConsumerConfig::new(&queue)
                .retry(crate::consume::retry_policy(5))
                .queues();
            for q in &queues {
                let _ = check.delete_queue(q).await;
            }
        }
        check.close().await;
        if self.own_schema
            && let (Db::Postgres(s), Some(name)) = (&self.db, &self.schema)
        {
            let stage2 = self.stage2.as_ref().and_then(|s| s.schema.clone());
            for name in std::iter::once(name.clone()).chain(stage2) {
                let _ =
                    rabbit_once::sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                        .execute(s.pool())
                        .await;
            }
        }
        if keep {
            say(format!("  work directory kept: {}", self.work.display()));
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
        drop(self.node);
    }
}
