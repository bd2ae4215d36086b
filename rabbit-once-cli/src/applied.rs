//! The built-in handler: inside the consumer's transaction it inserts one row per message into
//! `applied(message_id, seq, consumer_pid, applied_at)` — a table with **no** unique key, so a
//! message applied twice would show as two rows — and, with `--emit-to`, enqueues a copy of
//! each message for the next stage through the outbox in the same transaction. With
//! `--reject-every K` it rejects every K-th seq instead (dead-lettered at once, with a reason),
//! to show and test the dead-letter path. Also the ledger queries over that table.

use crate::common::seq_of;
use rabbit_once::sqlx::{self, Postgres, QueryBuilder, Sqlite, Transaction};
use rabbit_once::{
    Delivery, Handler, HandlerError, Message, Outcome, PostgresOptions, PostgresOutbox,
    PostgresStore, SqliteOutbox, SqliteStore,
};
use std::time::{SystemTime, UNIX_EPOCH};

/// Inserts a row into `applied` per message (and, with an [`Emit`], enqueues its copy).
#[derive(Debug, Clone)]
pub struct Applied {
    pid: i64,
    emit: Option<Emit>,
    reject_every: Option<u64>,
}

/// Where a pipeline stage's handler emits: a copy of each message's body to `queue`, through
/// the outbox of the store the handler's transaction belongs to.
#[derive(Debug, Clone)]
pub struct Emit {
    pub queue: String,
    pub outbox: EmitOutbox,
}

/// The outbox an [`Emit`] writes to: the one on the consumer's own store.
#[derive(Debug, Clone)]
pub enum EmitOutbox {
    Sqlite(SqliteOutbox),
    Postgres(PostgresOutbox),
}

impl Applied {
    /// The handler, stamping each row with this process's id.
    pub fn new() -> Self {
        Applied {
            pid: std::process::id() as i64,
            emit: None,
            reject_every: None,
        }
    }

    /// Rejects every message whose body's seq satisfies `seq % k == k - 1` (the k-th, 2k-th, …
    /// counting seqs from 0): it is dead-lettered at once with a reason naming the seq, and
    /// nothing is written for it. With `k` 1 every message is rejected; 0 (or `None`) rejects
    /// none.
    pub fn reject_every(mut self, k: Option<u64>) -> Self {
        self.reject_every = k.filter(|k| *k > 0);
        self
    }

    /// The rejection of `d`, if `--reject-every` picks it.
    fn rejection(&self, d: &Delivery) -> Option<Outcome> {
        let k = self.reject_every?;
        let seq = seq_of(d.body())?;
        (seq % k == k - 1).then(|| {
            Outcome::reject(format!(
                "rejected on purpose: --reject-every {k} picks seq {seq}"
            ))
        })
    }

    /// The handler of a pipeline stage: it also emits each message to the next stage.
    pub fn emitting(emit: Emit) -> Self {
        Applied {
            emit: Some(emit),
            ..Applied::new()
        }
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn row(d: &Delivery) -> (String, Option<i64>) {
    (
        d.message_id().unwrap_or_default().to_string(),
        seq_of(d.body()).map(|s| s as i64),
    )
}

macro_rules! applied_handler {
    ($db:ty, $outbox:ident) => {
        impl Handler<$db> for Applied {
            async fn handle<'a>(
                &'a self,
                msg: &'a Delivery,
                tx: &'a mut Transaction<'static, $db>,
            ) -> Result<Outcome, HandlerError> {
                if let Some(rejected) = self.rejection(msg) {
                    return Ok(rejected);
                }
                self.handle_batch(&[msg], tx).await?;
                Ok(Outcome::Done)
            }

            async fn handle_batch<'a>(
                &'a self,
                msgs: &'a [&'a Delivery],
                tx: &'a mut Transaction<'static, $db>,
            ) -> Result<Vec<Outcome>, HandlerError> {
                // A batch with a message to reject writes nothing: the consumer rolls it back
                // and runs its messages one at a time through `handle`.
                let rejections: Vec<Option<Outcome>> =
                    msgs.iter().map(|d| self.rejection(d)).collect();
                if rejections.iter().any(Option::is_some) {
                    return Ok(rejections
                        .into_iter()
                        .map(|r| r.unwrap_or(Outcome::Done))
                        .collect());
                }
                let now = now_micros();
                for chunk in msgs.chunks(200) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO applied (message_id, seq, consumer_pid, applied_at) ",
                    );
                    q.push_values(chunk, |mut b, d| {
                        let (id, seq) = row(d);
                        b.push_bind(id)
                            .push_bind(seq)
                            .push_bind(self.pid)
                            .push_bind(now);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                if let Some(emit) = &self.emit {
                    let EmitOutbox::$outbox(outbox) = &emit.outbox else {
                        return Err("the outbox is not on the consumer's store".into());
                    };
                    let copies = msgs
                        .iter()
                        .map(|d| Message::to_queue(&emit.queue, d.body().clone()));
                    outbox.enqueue_all(tx, copies).await?;
                }
                Ok(vec![Outcome::Done; msgs.len()])
            }
        }
    };
}
applied_handler!(Sqlite, Sqlite);
applied_handler!(Postgres, Postgres);

const CREATE: &str = "CREATE TABLE IF NOT EXISTS applied (
    message_id   TEXT NOT NULL,
    seq          BIGINT,
    consumer_pid BIGINT NOT NULL,
    applied_at   BIGINT NOT NULL
)";

/// `spec` as it may be shown: a `scheme://user:password@host…` URL without its password —
/// neither the one in the authority nor a `password=` query parameter — and without a fragment.
/// A password written without percent-encoding may hold `/`, `?`, `#` or `@`: the user part
/// then ends at the last `@` followed by a plausible host. A URL that cannot be taken apart is
/// not shown at all (`scheme://…(unparseable URL hidden)`): opening fails on exactly those, and
/// the password must not be in that error. A spec without `://` (`sqlite:PATH`, a path) is shown
/// as it is.
pub fn without_password(spec: &str) -> String {
    let Some((scheme, rest)) = spec.split_once("://") else {
        return spec.to_string();
    };
    let hidden = || format!("{scheme}://…(unparseable URL hidden)");
    let end_of_host = |s: &str| s.find(['/', '?', '#']).unwrap_or(s.len());
    let (authority, tail) = rest.split_at(end_of_host(rest));
    let (user, host, tail) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host, tail),
        // A host alone, and no `@` anywhere after it: no user part.
        None if plausible_host(authority) && !tail.contains('@') => (None, authority, tail),
        // What reads as a host and port, then an `@` further on: either a query value with an
        // `@` or a password like `12/3?x` (a port-like start, then `/`, `?` or `#`) — the text
        // cannot tell, so nothing of it is shown.
        None if plausible_host(authority) => return hidden(),
        // The user part runs on past a `/`, `?` or `#` of its password.
        None => {
            let Some((userinfo, after)) = rest.rsplit_once('@') else {
                return hidden();
            };
            let (host, tail) = after.split_at(end_of_host(after));
            (Some(userinfo), host, tail)
        }
    };
    if !plausible_host(host) {
        return hidden();
    }
    let tail = tail.split('#').next().unwrap_or_default();
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    let query: Vec<&str> = query
        .split('&')
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or_default();
            !kv.is_empty() && !key.eq_ignore_ascii_case("password")
        })
        .collect();
    let mut shown = format!("{scheme}://");
    if let Some(userinfo) = user {
        shown += userinfo.split(':').next().unwrap_or_default();
        shown.push('@');
    }
    shown += host;
    shown += path;
    if !query.is_empty() {
        shown.push('?');
        shown += &query.join("&");
    }
    shown
}

/// Whether `s` can be the host part of a URL: hosts (names, IPv4, `[IPv6]`) with optional
/// numeric ports, separated by commas (PostgreSQL takes several); empty for a local socket.
fn plausible_host(s: &str) -> bool {
    s.split(',').all(|one| {
        let (host, port) = match one.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((addr, rest)) if addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') => {
                    ("", rest.strip_prefix(':').unwrap_or(rest))
                }
                _ => return false,
            },
            None => one.split_once(':').unwrap_or((one, "")),
        };
        host.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '%'))
            && port.chars().all(|c| c.is_ascii_digit())
    })
}

/// Where the dedup records and the `applied` table live.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Db {
    /// `sqlite:PATH` (or a path) or `postgres://…`; `schema` for PostgreSQL only. An error
    /// names the database without its password.
    pub async fn open(spec: &str, schema: Option<String>) -> anyhow::Result<Db> {
        Self::open_with(spec, schema, 0).await
    }

    /// [`Db::open`], a store sealing its dedup table every `segment_rows` records
    /// (`SqliteOptions::segment_rows`, `PostgresOptions::segment_rows`; 0: never).
    pub async fn open_with(
        spec: &str,
        schema: Option<String>,
        segment_rows: u64,
    ) -> anyhow::Result<Db> {
        use anyhow::Context;
        Self::open_unnamed(spec, schema, segment_rows)
            .await
            .with_context(|| format!("could not open the database {}", without_password(spec)))
    }

    async fn open_unnamed(
        spec: &str,
        schema: Option<String>,
        segment_rows: u64,
    ) -> anyhow::Result<Db> {
        if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
            let store = PostgresStore::connect_with(
                spec,
                PostgresOptions {
                    schema,
                    segment_rows,
                    ..Default::default()
                },
            )
            .await?;
            return Ok(Db::Postgres(store));
        }
        let path = spec
            .strip_prefix("sqlite://")
            .or_else(|| spec.strip_prefix("sqlite:"))
            .unwrap_or(spec);
        if path.is_empty() {
            return Err(crate::exit::usage(
                "--store: give sqlite:PATH or postgres://…",
            ));
        }
        Ok(Db::Sqlite(
            SqliteStore::open_with(
                path,
                rabbit_once::SqliteOptions {
                    segment_rows,
                    ..Default::default()
                },
            )
            .await?,
        ))
    }

    /// Creates the `applied` table (and, through the store, the dedup table).
    pub async fn prepare(&self) -> anyhow::Result<()> {
        use rabbit_once::Store;
        match self {
            Db::Sqlite(s) => {
                s.migrate().await?;
                sqlx::query(CREATE).execute(s.pool()).await?;
            }
            Db::Postgres(s) => {
                s.migrate().await?;
                // Several consumer processes start together: concurrent CREATE TABLE IF NOT
                // EXISTS can collide in PostgreSQL's catalog, so take a lock for it.
                let mut tx = s.pool().begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(7262650564)")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(CREATE).execute(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Every applied `seq` with how many rows it has.
    pub async fn seq_counts(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        let sql = "SELECT seq, COUNT(*) FROM applied WHERE seq IS NOT NULL GROUP BY seq";
        Ok(match self {
            Db::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
            Db::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
        })
    }

    /// Every applied message id with how many rows it has.
    pub async fn id_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let sql = "SELECT message_id, COUNT(*) FROM applied GROUP BY message_id";
        Ok(match self {
            Db::Sqlite(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
            Db::Postgres(s) => sqlx::query_as(sql).fetch_all(s.pool()).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::without_password;

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        assert_eq!(
            without_password("postgres://app:s3cret@db:5432/orders?sslmode=require"),
            "postgres://app@db:5432/orders?sslmode=require"
        );
        assert_eq!(
            without_password("postgres://app@db/orders"),
            "postgres://app@db/orders"
        );
        assert_eq!(without_password("sqlite:/tmp/x.db"), "sqlite:/tmp/x.db");
        assert_eq!(without_password("/tmp/x.db"), "/tmp/x.db");
        // An `@` after what reads as host and port could close a password (`app:5432/x?y@h`):
        // hidden whole rather than risk it.
        assert_eq!(
            without_password("postgres://db:5432/orders?application_name=a@b"),
            "postgres://…(unparseable URL hidden)"
        );
        assert_eq!(
            without_password("postgresql://h1:5432,[::1]:5433/orders"),
            "postgresql://h1:5432,[::1]:5433/orders"
        );
        assert_eq!(without_password("postgres:///orders"), "postgres:///orders");
    }

    #[test]
    fn a_password_in_the_query_is_left_out() {
        assert_eq!(
            without_password("postgres://app@db/orders?password=s3cret&sslmode=require"),
            "postgres://app@db/orders?sslmode=require"
        );
        assert_eq!(
            without_password("postgres://db/orders?sslmode=require&PASSWORD=s3cret"),
            "postgres://db/orders?sslmode=require"
        );
        assert_eq!(
            without_password("postgres://app:x@db/orders?password=s3cret"),
            "postgres://app@db/orders"
        );
    }

    #[test]
    fn a_password_with_unencoded_delimiters_is_left_out() {
        for (spec, shown) in [
            (
                "postgres://app:pa/ss@db:5432/orders",
                "postgres://app@db:5432/orders",
            ),
            (
                "postgres://app:s3c?ret@db/orders",
                "postgres://app@db/orders",
            ),
            (
                "postgres://app:s3c#ret@db/orders",
                "postgres://app@db/orders",
            ),
            ("postgres://app:p@ss@db/orders", "postgres://app@db/orders"),
            (
                "postgres://app:pass@db/orders#frag",
                "postgres://app@db/orders",
            ),
        ] {
            assert_eq!(without_password(spec), shown, "{spec}");
        }
    }

    #[test]
    fn a_url_that_cannot_be_taken_apart_is_hidden() {
        for spec in [
            // A password whose first part reads as a port, then `/`, `?` or `#`: it could as
            // well be a host, port and a query value holding an `@`.
            "postgres://app:123/45@db/orders",
            "postgres://app:12/3?x@db/o",
            "postgres://app:12#x@db",
            "postgres://app:12?x@db/o",
            "postgres://app:no host s3cret",
            "postgres://app:s3cret@db host/orders",
            "postgres://app:s3c/ret@/?@x y",
        ] {
            let shown = without_password(spec);
            assert_eq!(shown, "postgres://…(unparseable URL hidden)", "{spec}");
        }
    }
}
