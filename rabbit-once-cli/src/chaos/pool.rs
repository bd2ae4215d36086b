//! The process pool: the publisher, consumer and relay child processes (this binary's
//! `publish`, `consume` and `relay`), spawned, watched, killed and started again.

use super::args::Args;
use super::ledger::PubReport;
use super::plan::Plan;
use super::setup::Setup;
use super::timeline::{Happened, Role, Timeline};
use crate::outbox::OutboxArgs;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One publisher's range of sequence numbers and the processes that have published it.
pub(super) struct PublisherSlot {
    /// The publisher's number, from 0.
    index: u64,
    lo: u64,
    hi: u64,
    child: Option<Child>,
    /// The current process's report.
    report: PathBuf,
    generation: u32,
    done: bool,
    /// Every process's report, the current one last.
    reports: Vec<PathBuf>,
}

impl PublisherSlot {
    /// Its name in the timeline and the report (the same at start, exit and kill).
    fn label(&self) -> String {
        format!("publisher {}..{}", self.lo, self.hi)
    }
}

/// One consumer and the processes that have run it.
pub(super) struct ConsumerSlot {
    /// With `--pipeline`: a stage-2 consumer (else stage 1, which emits to stage 2).
    stage2: bool,
    child: Option<Child>,
    report: PathBuf,
    generation: u32,
    reports: Vec<PathBuf>,
}

impl ConsumerSlot {
    /// The name of consumer `j` in the timeline and the report (the same at start, exit and
    /// kill).
    fn label(&self, j: u64) -> String {
        format!("{}consumer {j}", if self.stage2 { "stage-2 " } else { "" })
    }
}

/// What every child is started with: the binary, the proxies' URIs, the queue, the store.
pub(super) struct Launcher {
    exe: PathBuf,
    work: PathBuf,
    /// The broker through each proxy (one per node of a cluster). Holds the password: never
    /// print it.
    via_uris: Vec<String>,
    /// With `--cluster`: the queues are quorum queues (`--quorum` for every child).
    quorum: bool,
    /// Publisher processes (consumer `j` is child `publishers + j` in the endpoint rotation).
    publishers: u64,
    /// Consumer processes, both stages (relay `i` is child `publishers + consumers + i`).
    consumers: u64,
    queue: String,
    store: String,
    schema: Option<String>,
    id_prefix: String,
    size: usize,
    per_pub_rate: f64,
    heartbeat: u64,
    /// With `--outbox`: messages per transaction.
    outbox_tx: Option<u64>,
    /// `--segment-rows` for the consumers (0: none).
    segment_rows: u64,
    /// With `--pipeline`: the second stage's queue, store and schema.
    stage2: Option<(String, String, Option<String>)>,
    /// Where each start, kill and exit is marked.
    timeline: Timeline,
}

impl Launcher {
    /// Children of this binary, connecting through the proxy, publishing at the plan's rate.
    pub(super) fn new(
        a: &Args,
        setup: &Setup,
        plan: &Plan,
        timeline: Timeline,
    ) -> anyhow::Result<Launcher> {
        Ok(Launcher {
            exe: std::env::current_exe()?,
            work: setup.work.clone(),
            via_uris: setup.via.iter().map(|e| e.to_uri()).collect(),
            quorum: setup.cluster.is_some(),
            publishers: a.publishers,
            consumers: a.consumers() + if a.pipeline { a.stage2_consumers } else { 0 },
            segment_rows: a.segment_rows,
            queue: setup.queue.clone(),
            store: setup.store.clone(),
            schema: setup.schema.clone(),
            id_prefix: setup.run_id.clone(),
            size: a.size,
            per_pub_rate: plan.per_publisher_rate(a.publishers),
            heartbeat: plan.heartbeat,
            outbox_tx: a.outbox.then_some(a.tx_size),
            stage2: setup
                .stage2
                .as_ref()
                .map(|s| (s.queue.clone(), s.store.clone(), s.schema.clone())),
            timeline,
        })
    }

    /// With `--outbox` on PostgreSQL: every publisher shares the run's schema, where relay
    /// processes can help.
    pub(super) fn shared_outbox(&self) -> bool {
        self.outbox_tx.is_some() && self.store.starts_with("postgres")
    }

    /// The outbox of the publisher whose range starts at `lo`: the run's PostgreSQL schema, or a
    /// SQLite file of its own.
    pub(super) fn outbox_of(&self, lo: u64) -> OutboxArgs {
        if self.shared_outbox() {
            OutboxArgs {
                spec: self.store.clone(),
                schema: self.schema.clone(),
            }
        } else {
            OutboxArgs {
                spec: format!(
                    "sqlite:{}",
                    self.work.join(format!("outbox-{lo}.db")).display()
                ),
                schema: None,
            }
        }
    }

    /// Makes a `publish` child commit through its outbox (named in its environment, not its
    /// command line: a PostgreSQL URL may hold a password) and resume after its last commit (so
    /// it always starts from the beginning of its range).
    fn outbox_flags(&self, cmd: &mut Command, lo: u64, tx_size: u64) {
        let o = self.outbox_of(lo);
        cmd.env("RABBIT_ONCE_PUBLISH_OUTBOX", o.spec)
            .arg("--resume")
            .args(["--tx-size", &tx_size.to_string()]);
        if let Some(schema) = o.schema {
            cmd.args(["--schema", &schema]);
        }
    }

    /// A child process running `rabbit-once <subcommand>` against the broker through the
    /// proxies. Its configuration is its command line alone: no `RABBIT_ONCE_*` variable of ours
    /// reaches it, but for the URIs and databases (in the environment, not in `ps`) and a connect wait without
    /// end (a child started while the broker is down waits for it, as the run expects).
    ///
    /// Child `k` is given every endpoint, starting with endpoint `k` and going round: on a
    /// cluster the children spread over the nodes, and each moves on to the next node when its
    /// own fails. On a cluster every child declares the queues as quorum queues (`--quorum`;
    /// a relay declares the queues it publishes to, see [`Self::spawn_relay`]).
    fn child(&self, subcommand: &str, k: u64) -> Command {
        let mut cmd = Command::new(&self.exe);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("RABBIT_ONCE_") {
                cmd.env_remove(name);
            }
        }
        let n = self.via_uris.len();
        let uris: Vec<&str> = (0..n)
            .map(|i| self.via_uris[(k as usize + i) % n].as_str())
            .collect();
        cmd.env("RABBIT_ONCE_URI", uris.join(","))
            .env("RABBIT_ONCE_CONNECT_WAIT", "0")
            .arg(subcommand);
        if self.quorum {
            cmd.arg("--quorum");
        }
        cmd
    }

    /// Marks child `slot` of `role` as started (`again`: restarted).
    fn started(&self, role: Role, slot: String, again: bool) {
        let happened = if again {
            Happened::Restarted
        } else {
            Happened::Started
        };
        self.timeline.process(role, slot, happened);
    }

    /// Relay process `i` on the run's shared outbox (`again`: a restart), given every endpoint
    /// in an order of its own like the other children. It declares the queues its rows go to
    /// (the work queue; with `--pipeline` stage 2's too, whose rows the stage-1 consumers emit
    /// into the same outbox) as the publishers and consumers do — on a cluster as quorum
    /// queues with the consumers' arguments — so a relay that comes first finds them.
    fn spawn_relay(&self, i: usize, again: bool) -> anyhow::Result<Child> {
        self.started(Role::Relay, format!("relay {i}"), again);
        let o = self.outbox_of(0);
        let mut cmd = self.child("relay", self.publishers + self.consumers + i as u64);
        cmd.args(["--declare", &self.queue]);
        if let Some((stage2, _, _)) = &self.stage2 {
            cmd.args(["--declare", stage2]);
        }
        cmd.env("RABBIT_ONCE_OUTBOX", &o.spec) // not on the command line: it may hold a password
            .args([
                "--heartbeat",
                &self.heartbeat.to_string(),
                "--poll-ms",
                "200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(s) = &o.schema {
            cmd.args(["--schema", s]);
        }
        Ok(cmd.spawn()?)
    }

    /// A new `publish` process for the slot, from seq `from` to the end of its range (with
    /// `--outbox`: over the whole range, resuming after its last commit).
    fn spawn_publisher(&self, slot: &mut PublisherSlot, from: u64) -> anyhow::Result<()> {
        slot.generation += 1;
        self.started(Role::Publisher, slot.label(), slot.generation > 1);
        slot.report = self
            .work
            .join(format!("pub-{}-{}.log", slot.lo, slot.generation));
        slot.reports.push(slot.report.clone());
        let mut cmd = self.child("publish", slot.index);
        cmd.args(["--queue", &self.queue])
            .args(["--size", &self.size.to_string()])
            .args(["--rate", &(self.per_pub_rate as u64).max(1).to_string()])
            .args(["--heartbeat", &self.heartbeat.to_string(), "--json"]);
        if let Some(tx_size) = self.outbox_tx {
            // Ids are given at enqueue and kept in the row: no prefix. No report: the `sent`
            // table is the record of what was committed.
            self.outbox_flags(&mut cmd, slot.lo, tx_size);
            cmd.args(["--start", &slot.lo.to_string()])
                .args(["--count", &(slot.hi - slot.lo).to_string()]);
        } else {
            cmd.args(["--start", &from.to_string()])
                .args(["--count", &(slot.hi - from).to_string()])
                .args(["--id-prefix", &self.id_prefix])
                .arg("--report")
                .arg(&slot.report);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        slot.child = Some(child);
        Ok(())
    }

    /// A new `consume` process for consumer `j`.
    /// (Stage 1 of a `--pipeline` run emits to stage 2; a stage-2 consumer applies stage 2.)
    fn spawn_consumer(&self, slot: &mut ConsumerSlot, j: u64) -> anyhow::Result<()> {
        slot.generation += 1;
        let stage = if slot.stage2 { "s2-" } else { "" };
        self.started(Role::Consumer, slot.label(j), slot.generation > 1);
        slot.report = self
            .work
            .join(format!("con-{stage}{j}-{}.log", slot.generation));
        slot.reports.push(slot.report.clone());
        let (queue, store, schema) = match (&self.stage2, slot.stage2) {
            (Some((queue, store, schema)), true) => (queue, store, schema),
            _ => (&self.queue, &self.store, &self.schema),
        };
        let mut cmd = self.child("consume", self.publishers + j);
        // The store in the environment, not on the command line (`ps`): it may hold a password.
        cmd.args(["--queue", queue]).env("RABBIT_ONCE_STORE", store);
        if let (Some((next, _, _)), false) = (&self.stage2, slot.stage2) {
            cmd.args(["--emit-to", next]);
        }
        if let Some(s) = schema {
            cmd.args(["--schema", s]);
        }
        if self.segment_rows > 0 {
            cmd.args(["--segment-rows", &self.segment_rows.to_string()]);
        }
        cmd.args(["--heartbeat", &self.heartbeat.to_string(), "--json"])
            .arg("--report")
            .arg(&slot.report)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        slot.child = Some(cmd.spawn()?);
        Ok(())
    }
}

/// The running children. Dropping the pool kills them.
pub(super) struct Pool {
    launcher: Launcher,
    publishers: Vec<PublisherSlot>,
    consumers: Vec<ConsumerSlot>,
    /// With `--outbox` on PostgreSQL: the relay processes.
    relays: Vec<Option<Child>>,
    /// Messages accepted but not yet confirmed by publisher processes when they were killed
    /// (not counted with `--outbox`: a killed publisher's commits stay in its outbox).
    pub(super) unconfirmed_at_crash: u64,
    /// Relay processes that exited on their own (not killed by a fault) and were started again.
    pub(super) relay_exits: u64,
}

impl Pool {
    /// Starts the consumers, then the publishers, each publisher with its share of the
    /// `a.messages` sequence numbers.
    pub(super) fn start(launcher: Launcher, a: &Args) -> anyhow::Result<Pool> {
        let stage2 = if launcher.stage2.is_some() {
            a.stage2_consumers
        } else {
            0
        };
        let mut consumers: Vec<ConsumerSlot> = (0..a.consumers() + stage2)
            .map(|i| ConsumerSlot {
                stage2: i >= a.consumers(),
                child: None,
                report: PathBuf::new(),
                generation: 0,
                reports: Vec::new(),
            })
            .collect();
        for (j, slot) in consumers.iter_mut().enumerate() {
            launcher.spawn_consumer(slot, j as u64)?;
        }
        let per = a.messages.div_ceil(a.publishers);
        let mut publishers: Vec<PublisherSlot> = (0..a.publishers)
            .map(|i| PublisherSlot {
                index: i,
                lo: i * per,
                hi: ((i + 1) * per).min(a.messages),
                child: None,
                report: PathBuf::new(),
                generation: 0,
                done: false,
                reports: Vec::new(),
            })
            .filter(|s| s.lo < s.hi)
            .collect();
        for slot in publishers.iter_mut() {
            let lo = slot.lo;
            launcher.spawn_publisher(slot, lo)?;
        }
        let relays = if launcher.shared_outbox() {
            (0..a.relays as usize)
                .map(|i| launcher.spawn_relay(i, false).map(Some))
                .collect::<anyhow::Result<_>>()?
        } else {
            Vec::new()
        };
        Ok(Pool {
            launcher,
            publishers,
            consumers,
            relays,
            unconfirmed_at_crash: 0,
            relay_exits: 0,
        })
    }

    /// Some publisher has not finished its range yet.
    pub(super) fn publishing(&self) -> bool {
        self.publishers.iter().any(|s| !s.done)
    }

    /// Publishers that exited: done if they succeeded, else started again from their first
    /// message not yet confirmed.
    pub(super) fn reap_publishers(&mut self, say: &dyn Fn(String)) -> anyhow::Result<()> {
        for slot in self.publishers.iter_mut().filter(|s| !s.done) {
            if let Some(status) = slot
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                slot.child = None;
                if status.success() {
                    slot.done = true;
                } else {
                    self.launcher
                        .timeline
                        .process(Role::Publisher, slot.label(), Happened::Exited);
                    let from = slot.first_unconfirmed();
                    say(format!(
                        "  publisher for {}..{} exited with {status}; restarting from {from}",
                        slot.lo, slot.hi
                    ));
                    self.launcher.spawn_publisher(slot, from)?;
                }
            }
        }
        Ok(())
    }

    /// Consumers that exited are started again (a consumer only exits when something failed).
    pub(super) fn restart_exited_consumers(&mut self, say: &dyn Fn(String)) -> anyhow::Result<()> {
        for (j, slot) in self.consumers.iter_mut().enumerate() {
            if let Some(status) = slot
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                say(format!(
                    "  {} exited with {status}; restarting",
                    slot.label(j as u64)
                ));
                self.launcher.timeline.process(
                    Role::Consumer,
                    slot.label(j as u64),
                    Happened::Exited,
                );
                self.launcher.spawn_consumer(slot, j as u64)?;
            }
        }
        Ok(())
    }

    /// SIGKILLs a random (stage-1) consumer and starts it again.
    pub(super) async fn kill_consumer(&mut self) -> anyhow::Result<()> {
        let stage1 = self.consumers.iter().filter(|c| !c.stage2).count();
        let j = fastrand::usize(..stage1.max(1));
        if let Some(c) = self.consumers[j].child.take() {
            kill9(&c);
            self.launcher.timeline.process(
                Role::Consumer,
                self.consumers[j].label(j as u64),
                Happened::Killed,
            );
            let _ = c.wait_with_output().await;
        }
        self.launcher
            .spawn_consumer(&mut self.consumers[j], j as u64)
    }

    /// SIGKILLs a random publisher still publishing and starts it again from its first message
    /// not yet confirmed, as a caller would resend what a crashed process handed back (with
    /// `--outbox`: after its last commit; what it committed is in its outbox). False when every
    /// publisher has finished.
    pub(super) async fn kill_publisher(&mut self, say: &dyn Fn(String)) -> anyhow::Result<bool> {
        let live: Vec<usize> = (0..self.publishers.len())
            .filter(|&i| !self.publishers[i].done)
            .collect();
        if live.is_empty() {
            return Ok(false);
        }
        let slot = &mut self.publishers[live[fastrand::usize(..live.len())]];
        if let Some(c) = slot.child.take() {
            kill9(&c);
            self.launcher
                .timeline
                .process(Role::Publisher, slot.label(), Happened::Killed);
            let _ = c.wait_with_output().await;
        }
        if self.launcher.outbox_tx.is_some() {
            say(format!(
                "  publisher for {}..{} SIGKILLed; it resumes after its last commit",
                slot.lo, slot.hi
            ));
            self.launcher.spawn_publisher(slot, slot.lo)?;
            return Ok(true);
        }
        let r = PubReport::read(&slot.report);
        let lost_here = r
            .accepted
            .iter()
            .filter(|s| !r.confirmed.contains_key(s))
            .count() as u64;
        self.unconfirmed_at_crash += lost_here;
        let from = slot.first_unconfirmed();
        say(format!(
            "  publisher for {}..{} SIGKILLed with {lost_here} accepted but unconfirmed; the caller resends from {from}",
            slot.lo, slot.hi
        ));
        self.launcher.spawn_publisher(slot, from)?;
        Ok(true)
    }

    /// SIGKILLs a random relay process and starts it again; false when there is none.
    pub(super) async fn kill_relay(&mut self) -> anyhow::Result<bool> {
        if self.relays.is_empty() {
            return Ok(false);
        }
        let i = fastrand::usize(..self.relays.len());
        if let Some(c) = self.relays[i].take() {
            kill9(&c);
            self.launcher
                .timeline
                .process(Role::Relay, format!("relay {i}"), Happened::Killed);
            let _ = c.wait_with_output().await;
        }
        self.relays[i] = Some(self.launcher.spawn_relay(i, true)?);
        Ok(true)
    }

    /// Relay processes that exited are started again.
    pub(super) fn restart_exited_relays(&mut self, say: &dyn Fn(String)) -> anyhow::Result<()> {
        for (i, slot) in self.relays.iter_mut().enumerate() {
            if let Some(status) = slot.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                say(format!("  relay {i} exited with {status}; restarting"));
                self.relay_exits += 1;
                self.launcher
                    .timeline
                    .process(Role::Relay, format!("relay {i}"), Happened::Exited);
                *slot = Some(self.launcher.spawn_relay(i, true)?);
            }
        }
        Ok(())
    }

    /// Stops the relay processes (SIGTERM: each settles what it has in flight).
    pub(super) async fn stop_relays(&mut self) {
        for c in self.relays.iter_mut().filter_map(Option::take) {
            term(&c);
            let _ = tokio::time::timeout(Duration::from_secs(20), c.wait_with_output()).await;
        }
    }

    /// With `--outbox`: every publisher's outbox (one, when they share PostgreSQL).
    pub(super) fn outboxes(&self) -> Vec<OutboxArgs> {
        if self.launcher.outbox_tx.is_none() {
            return Vec::new();
        }
        if self.launcher.shared_outbox() {
            return vec![self.launcher.outbox_of(0)];
        }
        self.publishers
            .iter()
            .map(|s| self.launcher.outbox_of(s.lo))
            .collect()
    }

    /// Waits for the publishers to finish their ranges (restarting any that fail); true if the
    /// deadline passed first.
    pub(super) async fn wait_for_publishers(
        &mut self,
        deadline: Instant,
        say: &dyn Fn(String),
    ) -> anyhow::Result<bool> {
        let mut timed_out = false;
        while !timed_out && self.publishing() {
            self.reap_publishers(say)?;
            self.restart_exited_relays(say)?;
            timed_out = Instant::now() > deadline;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(timed_out)
    }

    /// Asks every consumer to stop (SIGTERM: it drains and writes its last report) and waits up
    /// to 20 s for each.
    pub(super) async fn stop_consumers(&mut self) {
        for slot in self.consumers.iter_mut() {
            if let Some(c) = slot.child.take() {
                term(&c);
                let _ = tokio::time::timeout(Duration::from_secs(20), c.wait_with_output()).await;
            }
        }
    }

    /// Every publisher process's report.
    pub(super) fn publisher_reports(&self) -> impl Iterator<Item = &Path> {
        self.publishers
            .iter()
            .flat_map(|s| s.reports.iter().map(PathBuf::as_path))
    }

    /// Every consumer process's report.
    pub(super) fn consumer_reports(&self) -> impl Iterator<Item = &Path> {
        self.consumers
            .iter()
            .flat_map(|s| s.reports.iter().map(PathBuf::as_path))
    }
}

impl PublisherSlot {
    /// The first seq of the slot's range that no process of this slot has had confirmed.
    fn first_unconfirmed(&self) -> u64 {
        let mut confirmed = HashSet::new();
        for p in &self.reports {
            confirmed.extend(PubReport::read(p).confirmed.into_keys());
        }
        (self.lo..self.hi)
            .find(|s| !confirmed.contains(s))
            .unwrap_or(self.hi.saturating_sub(1))
    }
}

fn kill9(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

fn term(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}
