//! What a chaos run stands on: the broker (a private node, a private cluster or the one given),
//! the fault proxies in front of it, the dedup store, the work directory — and their removal at
//! the end.

use super::args::{Args, CLUSTER_STORE};
use crate::applied::Db;
use rabbit_once::Endpoint;
use rabbit_once::{Connection, ConnectionConfig};
use rabbit_once_testkit::{BrokerNode, Cluster, FaultProxy};
use std::path::PathBuf;

/// The run's surroundings, made by [`Setup::start`] and removed by [`Setup::clean_up`].
pub(super) struct Setup {
    /// Names the queue, the work directory, the message ids and a fresh PostgreSQL schema.
    pub(super) run_id: String,
    /// Reports and the default SQLite file.
    pub(super) work: PathBuf,
    pub(super) node: Option<BrokerNode>,
    /// With `--cluster`: the private cluster, a fault proxy in front of each node.
    pub(super) cluster: Option<Cluster>,
    /// The fault proxy in front of the broker (without `--cluster`).
    proxy: Option<FaultProxy>,
    /// The broker itself (every node), bypassing the proxies (for the check connection).
    direct_uris: Vec<String>,
    /// The broker through the proxies (one per node): what the children connect to.
    pub(super) via: Vec<Endpoint>,
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
        let cluster = match a.cluster {
            Some(n) => {
                say(format!("starting a private {n}-node RabbitMQ cluster…"));
                let started = std::time::Instant::now();
                let c = Cluster::start(n as usize).await?;
                say(format!(
                    "  {} joined in {:.0} s",
                    c.nodes()
                        .iter()
                        .map(|n| n.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    started.elapsed().as_secs_f64()
                ));
                Some(c)
            }
            None => None,
        };
        let (proxy, direct_uris, via) = match (&cluster, &node) {
            (Some(c), _) => {
                let via = c
                    .proxy_uris()
                    .iter()
                    .map(|u| Endpoint::parse(u))
                    .collect::<Result<Vec<_>, _>>()?;
                (None, c.uris(), via)
            }
            (None, node) => {
                let direct_uri = match node {
                    Some(n) => n.uri(),
                    None => a.conn.uris[0].clone(),
                };
                let target = Endpoint::parse(&direct_uri)?;
                let proxy =
                    FaultProxy::start(format!("{}:{}", target.host(), target.port())).await?;
                let via = target.with_address("127.0.0.1", proxy.port());
                (Some(proxy), vec![direct_uri], vec![via])
            }
        };
        let store = a.store.clone().unwrap_or_else(|| {
            if a.cluster.is_some() {
                CLUSTER_STORE.to_string()
            } else {
                format!("sqlite:{}", work.join("chaos.db").display())
            }
        });
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
            "chaos run {run_id}: {} messages, {} publishers, {} consumers, via {}, store {}",
            a.messages,
            a.publishers,
            a.consumers(),
            via.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" "),
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
            cluster,
            proxy,
            direct_uris,
            via,
            store,
            schema,
            own_schema,
            db,
            queue,
            stage2,
        })
    }

    /// A connection straight to the broker (any node of a cluster), for queue depths and the
    /// clean-up.
    pub(super) async fn check_connection(&self) -> anyhow::Result<Connection> {
        Ok(Connection::connect(
            ConnectionConfig::from_uris(&self.direct_uris)?.name("rabbit-once chaos check"),
        )
        .await?)
    }

    /// A connection straight to the broker for the timeline's sampler: started, not awaited (a
    /// broker down is sampled as gaps until it is back), and tried again at most a second apart
    /// so the gaps end when the broker is back.
    pub(super) fn sampler_connection(&self) -> anyhow::Result<Connection> {
        use std::time::Duration;
        Ok(Connection::start(
            ConnectionConfig::from_uris(&self.direct_uris)?
                .name("rabbit-once chaos sampler")
                .heartbeat(Duration::from_secs(2))
                .backoff(rabbit_once::Backoff::new(
                    Duration::from_millis(50),
                    Duration::from_secs(1),
                    0.5,
                )),
        )?)
    }

    /// The fault proxy in front of node `i` of the cluster, or in front of the broker.
    pub(super) fn proxy(&self, i: usize) -> &FaultProxy {
        match (&self.cluster, &self.proxy) {
            (Some(c), _) => c.proxy(i),
            (None, Some(p)) => p,
            (None, None) => unreachable!("a run without a cluster has a proxy"),
        }
    }

    /// How many brokers the children can reach (nodes of the cluster, or 1).
    pub(super) fn endpoints(&self) -> usize {
        self.via.len()
    }

    /// Deletes the run's queues (not on a private cluster: it goes whole) and its own schema,
    /// removes the work directory unless `keep`, and stops the private node or cluster.
    /// `check` is the run's check connection, if the run got that far.
    pub(super) async fn clean_up(
        self,
        keep: bool,
        check: Option<Connection>,
        say: &dyn Fn(String),
    ) {
        let check = match check {
            Some(c) => Some(c),
            // A private cluster goes with its queues (and deletes on quorum queues are slow).
            None if self.cluster.is_some() => None,
            // Bounded: after a Ctrl-C between a broker kill and its restart nobody answers, and
            // an unbounded wait would leave the node, the schema and the work directory behind.
            None => {
                tokio::time::timeout(std::time::Duration::from_secs(10), self.check_connection())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
        };
        if let Some(check) = check {
            if self.cluster.is_none() {
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
            }
            check.close().await;
        }
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
        if let Some(c) = self.cluster {
            let n = c.len();
            drop(c);
            say(format!("  the {n}-node cluster is removed"));
        }
    }
}
