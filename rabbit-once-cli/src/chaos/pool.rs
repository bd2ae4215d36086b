//! The process pool: the publisher and consumer child processes (this binary's `publish` and
//! `consume`), spawned, watched, killed and started again.

use super::args::Args;
use super::ledger::PubReport;
use super::plan::Plan;
use super::setup::Setup;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// One publisher's range of sequence numbers and the processes that have published it.
pub(super) struct PublisherSlot {
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

/// One consumer and the processes that have run it.
pub(super) struct ConsumerSlot {
    child: Option<Child>,
    report: PathBuf,
    generation: u32,
    reports: Vec<PathBuf>,
}

/// What every child is started with: the binary, the proxy's URI, the queue, the store.
pub(super) struct Launcher {
    exe: PathBuf,
    work: PathBuf,
    /// Holds the password: never print it.
    via_uri: String,
    queue: String,
    store: String,
    schema: Option<String>,
    id_prefix: String,
    size: usize,
    per_pub_rate: f64,
    heartbeat: u64,
}

impl Launcher {
    /// Children of this binary, connecting through the proxy, publishing at the plan's rate.
    pub(super) fn new(a: &Args, setup: &Setup, plan: &Plan) -> anyhow::Result<Launcher> {
        Ok(Launcher {
            exe: std::env::current_exe()?,
            work: setup.work.clone(),
            via_uri: setup.via.to_uri(),
            queue: setup.queue.clone(),
            store: setup.store.clone(),
            schema: setup.schema.clone(),
            id_prefix: setup.run_id.clone(),
            size: a.size,
            per_pub_rate: plan.per_publisher_rate(a.publishers),
            heartbeat: plan.heartbeat,
        })
    }

    /// A new `publish` process for the slot, from seq `from` to the end of its range.
    fn spawn_publisher(&self, slot: &mut PublisherSlot, from: u64) -> anyhow::Result<()> {
        slot.generation += 1;
        slot.report = self
            .work
            .join(format!("pub-{}-{}.log", slot.lo, slot.generation));
        slot.reports.push(slot.report.clone());
        let child = Command::new(&self.exe)
            .args(["publish", "--uri", &self.via_uri, "--queue", &self.queue])
            .args([
                "--start",
                &from.to_string(),
                "--count",
                &(slot.hi - from).to_string(),
            ])
            .args([
                "--size",
                &self.size.to_string(),
                "--rate",
                &(self.per_pub_rate as u64).max(1).to_string(),
            ])
            .args([
                "--id-prefix",
                &self.id_prefix,
                "--heartbeat",
                &self.heartbeat.to_string(),
                "--json",
            ])
            .arg("--report")
            .arg(&slot.report)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        slot.child = Some(child);
        Ok(())
    }

    /// A new `consume` process for consumer `j`.
    fn spawn_consumer(&self, slot: &mut ConsumerSlot, j: u64) -> anyhow::Result<()> {
        slot.generation += 1;
        slot.report = self.work.join(format!("con-{j}-{}.log", slot.generation));
        slot.reports.push(slot.report.clone());
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "consume",
            "--uri",
            &self.via_uri,
            "--queue",
            &self.queue,
            "--store",
            &self.store,
        ])
        .args(["--heartbeat", &self.heartbeat.to_string(), "--json"])
        .arg("--report")
        .arg(&slot.report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        if let Some(s) = &self.schema {
            cmd.args(["--schema", s]);
        }
        slot.child = Some(cmd.spawn()?);
        Ok(())
    }
}

/// The running children. Dropping the pool kills them.
pub(super) struct Pool {
    launcher: Launcher,
    publishers: Vec<PublisherSlot>,
    consumers: Vec<ConsumerSlot>,
    /// Messages accepted but not yet confirmed by publisher processes when they were killed.
    pub(super) unconfirmed_at_crash: u64,
}

impl Pool {
    /// Starts the consumers, then the publishers, each publisher with its share of the
    /// `a.messages` sequence numbers.
    pub(super) fn start(launcher: Launcher, a: &Args) -> anyhow::Result<Pool> {
        let mut consumers: Vec<ConsumerSlot> = (0..a.consumers)
            .map(|_| ConsumerSlot {
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
        Ok(Pool {
            launcher,
            publishers,
            consumers,
            unconfirmed_at_crash: 0,
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
                say(format!("  consumer {j} exited with {status}; restarting"));
                self.launcher.spawn_consumer(slot, j as u64)?;
            }
        }
        Ok(())
    }

    /// SIGKILLs a random consumer and starts it again.
    pub(super) async fn kill_consumer(&mut self) -> anyhow::Result<()> {
        let j = fastrand::usize(..self.consumers.len());
        if let Some(c) = self.consumers[j].child.take() {
            kill9(&c);
            let _ = c.wait_with_output().await;
        }
        self.launcher
            .spawn_consumer(&mut self.consumers[j], j as u64)
    }

    /// SIGKILLs a random publisher still publishing and starts it again from its first message
    /// not yet confirmed, as a caller would resend what a crashed process handed back. False
    /// when every publisher has finished.
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
            let _ = c.wait_with_output().await;
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
