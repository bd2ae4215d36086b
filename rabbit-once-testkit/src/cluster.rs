//! A private RabbitMQ cluster: N [`BrokerNode`]s on free ports, joined into one cluster, each
//! behind a [`FaultProxy`] of its own, for tests that kill nodes, stop their apps and follow
//! quorum queue leaders. The shared broker on 5672 is never touched.
//!
//! Recipe from `TESTING.md`: boot every node (in parallel), then on nodes 2..N `stop_app`,
//! `join_cluster <node 1>`, `start_app`. The nodes share a `HOME` of their own (so an Erlang
//! cookie of their own, whatever the user's `HOME` holds or lacks), and the whole cluster —
//! nodes, proxies, directories — is torn down when the [`Cluster`] is dropped, also when the
//! test panicked: every VM is killed at once (`kill -9`), nothing of a throwaway cluster is
//! worth a polite stop.

use crate::node::BrokerNode;
use crate::proxy::FaultProxy;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a `rabbitmqctl` query of the cluster may take.
const QUERY: Duration = Duration::from_secs(30);

/// What the harness did last to a node (it does not ask the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// The VM and the RabbitMQ application run.
    Running,
    /// `stop_app`: the VM runs, the application (AMQP, queues) does not.
    AppStopped,
    /// `kill -9`: the VM is gone.
    Killed,
}

/// N joined RabbitMQ nodes of our own, a fault proxy in front of each. Dropping it kills every
/// node, stops the proxies and removes every directory.
#[derive(Debug)]
pub struct Cluster {
    // Field order is drop order: proxies first (clients see their connections cut), then the
    // nodes (killed), then the shared home.
    proxies: Vec<FaultProxy>,
    nodes: Vec<BrokerNode>,
    states: Mutex<Vec<NodeState>>,
    home: HomeDir,
}

/// The cluster's shared `HOME` (its `.erlang.cookie`), removed on drop.
#[derive(Debug)]
struct HomeDir(PathBuf);

impl Drop for HomeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Cluster {
    /// Starts `n` nodes (at least 1) on free ports, joins nodes 2..n to node 1, and puts a
    /// fault proxy in front of each. Returns once every node accepts AMQP connections and
    /// reports all `n` nodes running. Needs a tokio runtime (the proxies).
    pub async fn start(n: usize) -> io::Result<Self> {
        Self::start_with_config(n, "").await
    }

    /// Like [`start`](Self::start), with lines for every node's `rabbitmq.conf`.
    pub async fn start_with_config(n: usize, conf: &str) -> io::Result<Self> {
        if n == 0 {
            return Err(io::Error::other("a cluster needs at least one node"));
        }
        let home = HomeDir(std::env::temp_dir().join(format!(
            "ronce-cluster-{}-{}",
            std::process::id(),
            crate::names::unique("home")
        )));
        std::fs::create_dir_all(&home.0)?;
        write_cookie(&home.0)?;
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let mut node = BrokerNode::unstarted(conf, Some(&home.0))?;
            node.set_kill_on_drop(true);
            nodes.push(node);
        }
        // From here on a failure drops `nodes`, which kills whatever was launched. The VMs
        // boot side by side; waiting for them one after the other costs nothing more.
        for node in &nodes {
            node.launch_vm().await?;
        }
        for node in &nodes {
            node.wait_booted().await?;
        }
        let first = nodes[0].name().to_string();
        for node in &nodes[1..] {
            node.stop_app().await?;
            node.rabbitmqctl(&["join_cluster", &first]).await?;
            node.start_app().await?;
        }
        let mut proxies = Vec::with_capacity(n);
        for node in &nodes {
            proxies.push(FaultProxy::start(node.address()).await?);
        }
        let cluster = Cluster {
            proxies,
            states: Mutex::new(vec![NodeState::Running; n]),
            nodes,
            home,
        };
        let running = cluster.running_nodes().await?;
        if running.len() != n {
            return Err(io::Error::other(format!(
                "the cluster reports {} running nodes, not {n}: {running:?}",
                running.len()
            )));
        }
        Ok(cluster)
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes (never, for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &BrokerNode {
        &self.nodes[i]
    }

    /// Every node, in order.
    pub fn nodes(&self) -> &[BrokerNode] {
        &self.nodes
    }

    /// The fault proxy in front of node `i`.
    pub fn proxy(&self, i: usize) -> &FaultProxy {
        &self.proxies[i]
    }

    /// The shared `HOME` of the nodes (where their `.erlang.cookie` is).
    pub fn home(&self) -> &Path {
        &self.home.0
    }

    /// The index of the node named `name` (`<tag>@localhost`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == name)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f` of node `i`, direct.
    pub fn uri(&self, i: usize) -> String {
        self.nodes[i].uri()
    }

    /// The URI of node `i` through its fault proxy.
    pub fn proxy_uri(&self, i: usize) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f",
            self.proxies[i].port()
        )
    }

    /// Every node's direct URI, in node order.
    pub fn uris(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.uri(i)).collect()
    }

    /// Every node's URI through its proxy, in node order.
    pub fn proxy_uris(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.proxy_uri(i)).collect()
    }

    /// The proxy URIs starting with node `first` and going round: a client given these
    /// connects to `first` while it is up.
    pub fn proxy_uris_from(&self, first: usize) -> Vec<String> {
        (0..self.len())
            .map(|k| self.proxy_uri((first + k) % self.len()))
            .collect()
    }

    /// What the harness last did to node `i`.
    pub fn state(&self, i: usize) -> NodeState {
        self.states.lock().expect("states lock")[i]
    }

    fn set_state(&self, i: usize, s: NodeState) {
        self.states.lock().expect("states lock")[i] = s;
    }

    /// `kill -9` of node `i`'s VM; returns once the process is gone.
    pub async fn kill9(&self, i: usize) -> io::Result<()> {
        self.set_state(i, NodeState::Killed);
        self.nodes[i].kill9().await
    }

    /// Starts node `i`'s VM again after [`kill9`](Self::kill9) (same name, ports and data: it
    /// rejoins the cluster) and waits until it accepts AMQP connections.
    pub async fn restart(&self, i: usize) -> io::Result<()> {
        self.nodes[i].start_again().await?;
        self.set_state(i, NodeState::Running);
        Ok(())
    }

    /// `rabbitmqctl stop_app` on node `i`: its clients are closed with 320, its queue replicas
    /// stop; the VM stays in the cluster.
    pub async fn stop_app(&self, i: usize) -> io::Result<()> {
        self.set_state(i, NodeState::AppStopped);
        self.nodes[i].stop_app().await
    }

    /// `rabbitmqctl start_app` on node `i`, and waits for its AMQP port.
    pub async fn start_app(&self, i: usize) -> io::Result<()> {
        self.nodes[i].start_app().await?;
        self.set_state(i, NodeState::Running);
        Ok(())
    }

    /// Indexes of the nodes the harness believes are running (VM and app).
    pub fn up(&self) -> Vec<usize> {
        let s = self.states.lock().expect("states lock");
        (0..s.len())
            .filter(|&i| s[i] == NodeState::Running)
            .collect()
    }

    /// Runs `rabbitmqctl <args…>` on the first node that is up and answers; its output.
    pub async fn ctl(&self, args: &[&str]) -> io::Result<String> {
        let mut last = io::Error::other("no node of the cluster is up");
        for i in self.up() {
            match self.nodes[i].ctl_output(args, QUERY).await {
                Ok(out) => return Ok(out),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The nodes the cluster reports running (`cluster_status`, asked of a node that is up),
    /// as indexes.
    pub async fn running_nodes(&self) -> io::Result<Vec<usize>> {
        let out = self
            .ctl(&["-q", "cluster_status", "--formatter", "json"])
            .await?;
        // `"running_nodes":["a@localhost","b@localhost"]` — read without a JSON parser.
        let list = out
            .split_once("\"running_nodes\":[")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(list, _)| list)
            .ok_or_else(|| io::Error::other(format!("unexpected cluster_status: {out}")))?;
        let mut running: Vec<usize> = list
            .split(',')
            .filter_map(|s| self.index_of(s.trim().trim_matches('"')))
            .collect();
        running.sort_unstable();
        Ok(running)
    }

    /// Waits until the cluster reports every node running (after a restart or `start_app`: the
    /// node has rejoined). Errors after `timeout`.
    pub async fn wait_all_running(&self, timeout: Duration) -> io::Result<()> {
        let all: Vec<usize> = (0..self.len()).collect();
        let end = Instant::now() + timeout;
        loop {
            let seen = self.running_nodes().await;
            if seen.as_ref().is_ok_and(|r| *r == all) {
                return Ok(());
            }
            if Instant::now() > end {
                return Err(io::Error::other(format!(
                    "not every node running after {timeout:?}: {seen:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The node that leads quorum queue `queue` (vhost `/`) as the cluster reports it
    /// (`list_queues name leader`, asked of a node that is up), as an index; `None` if the
    /// queue is not listed or has no leader the harness knows.
    pub async fn leader(&self, queue: &str) -> io::Result<Option<usize>> {
        let out = self
            .ctl(&["-q", "list_queues", "--no-table-headers", "name", "leader"])
            .await?;
        Ok(out.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(queue)).then(|| self.index_of(it.next()?))?
        }))
    }

    /// Waits until `queue` has a leader on a node that is up and is not `not` (for after a
    /// node was killed: the new leader). Errors after `timeout`.
    pub async fn wait_leader(
        &self,
        queue: &str,
        not: Option<usize>,
        timeout: Duration,
    ) -> io::Result<usize> {
        let end = Instant::now() + timeout;
        loop {
            let seen = self.leader(queue).await;
            if let Ok(Some(i)) = seen
                && Some(i) != not
                && self.state(i) == NodeState::Running
            {
                return Ok(i);
            }
            if Instant::now() > end {
                return Err(io::Error::other(format!(
                    "queue {queue:?} has no leader on a running node (other than {not:?}) \
                     after {timeout:?}; last seen {seen:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The Raft members of quorum queue `queue` and their state, as
    /// `rabbitmq-queues quorum_status` reports them (asked of a node that is up):
    /// `(node index, "leader" | "follower" | "nodedown" | …)`.
    pub async fn quorum_status(&self, queue: &str) -> io::Result<Vec<(usize, String)>> {
        let mut last = io::Error::other("no node of the cluster is up");
        for i in self.up() {
            match self.nodes[i]
                .queues_output(
                    &["-q", "quorum_status", queue, "--formatter", "json"],
                    QUERY,
                )
                .await
            {
                Ok(out) => return Ok(parse_quorum_status(&out, |n| self.index_of(n))),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Reads `rabbitmq-queues quorum_status --formatter json` without a JSON parser: one object per
/// member, `"Node Name":"n@localhost"` and `"Raft State":"leader"` (or
/// `["nodedown","n@localhost"]` for a member on a node that is down: `nodedown`).
fn parse_quorum_status(
    out: &str,
    index_of: impl Fn(&str) -> Option<usize>,
) -> Vec<(usize, String)> {
    let string_after = |l: &str, key: &str| -> Option<String> {
        let rest = l.split_once(key)?.1.trim_start_matches('[');
        let rest = rest.strip_prefix('"')?;
        Some(rest.split('"').next()?.to_string())
    };
    out.lines()
        .filter_map(|l| {
            let node = index_of(&string_after(l, "\"Node Name\":")?)?;
            Some((node, string_after(l, "\"Raft State\":")?))
        })
        .collect()
}

/// A random Erlang cookie, readable by its owner only (Erlang refuses any other mode).
fn write_cookie(home: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Unguessable enough for a throwaway cluster on 127.0.0.1; letters only, as Erlang wants.
    let cookie: String = crate::names::unique("cookie")
        .bytes()
        .map(|b| char::from(b'A' + b % 26))
        .collect();
    let path = home.join(".erlang.cookie");
    std::fs::write(&path, cookie)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400))
}
