//! A private RabbitMQ node the harness owns: its own ports, node name and data directory, so
//! it can be stopped, restarted and killed without touching the shared broker on 5672.
//!
//! Recipe from `TESTING.md`: call the inner `rabbitmq-server` script directly (the outer one
//! switches user and drops the environment), wait on the pid file, drive it with `rabbitmqctl -n`.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const QUEUES: &str = "/usr/lib/rabbitmq/bin/rabbitmq-queues";

/// A RabbitMQ node of our own. Dropping it stops the node (kill -9 if it must) and removes
/// its directory, also when the test failed.
#[derive(Debug)]
pub struct BrokerNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    keep_dir: bool,
    /// `HOME` for the node and its `rabbitmqctl` calls (where `.erlang.cookie` is read), when
    /// not the process's own: the nodes of a [`Cluster`](crate::Cluster) share one.
    home: Option<PathBuf>,
    /// Drop kills the VM at once instead of stopping it politely first.
    kill_on_drop: bool,
    /// The port of the AMQPS listener of [`start_with_tls`](Self::start_with_tls), if any.
    tls_port: Option<u16>,
}

/// An AMQPS listener for [`BrokerNode::start_with_tls`]: the node's certificate files (PEM)
/// and how it checks clients.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// CA certificates the node trusts for client certificates (`ssl_options.cacertfile`).
    pub cacertfile: PathBuf,
    /// The node's certificate (`ssl_options.certfile`).
    pub certfile: PathBuf,
    /// The node's private key (`ssl_options.keyfile`).
    pub keyfile: PathBuf,
    /// `ssl_options.verify = verify_peer` and `fail_if_no_peer_cert = true`: every client must
    /// present a certificate issued by `cacertfile`'s CA. Otherwise `verify_none`.
    pub require_client_cert: bool,
    /// Enables the `rabbitmq_auth_mechanism_ssl` plugin and offers EXTERNAL (after PLAIN and
    /// AMQPLAIN), the user name taken from the client certificate's CN
    /// (`ssl_cert_login_from = common_name`).
    pub external_auth: bool,
}

impl TlsListener {
    /// The `rabbitmq.conf` lines of this listener on `port`.
    fn conf(&self, port: u16) -> String {
        let verify = if self.require_client_cert {
            "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n"
        } else {
            "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n"
        };
        let mut conf = format!(
            "listeners.ssl.default = {port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             {verify}",
            self.cacertfile.display(),
            self.certfile.display(),
            self.keyfile.display(),
        );
        if self.external_auth {
            conf.push_str(
                "auth_mechanisms.1 = PLAIN\n\
                 auth_mechanisms.2 = AMQPLAIN\n\
                 auth_mechanisms.3 = EXTERNAL\n\
                 ssl_cert_login_from = common_name\n",
            );
        }
        conf
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough between parallel tests).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn ctl_err(what: &str, out: &std::process::Output) -> io::Error {
    io::Error::other(format!(
        "rabbitmqctl {what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

impl BrokerNode {
    /// Whether this machine can start private nodes (RabbitMQ's scripts are installed).
    pub fn available() -> bool {
        Path::new(SERVER).exists() && Path::new(CTL).exists()
    }

    /// Starts a node on free ports and waits until it accepts AMQP connections.
    pub async fn start() -> io::Result<Self> {
        Self::start_with_config("").await
    }

    /// Like [`start`](Self::start), with lines for the node's `rabbitmq.conf` (for example a
    /// TLS listener).
    pub async fn start_with_config(conf: &str) -> io::Result<Self> {
        let node = Self::unstarted(conf, None)?;
        node.boot().await?;
        Ok(node)
    }

    /// Like [`start`](Self::start), with an AMQPS listener as well (on its own free port,
    /// [`tls_port`](Self::tls_port)); waits until both listeners accept connections.
    pub async fn start_with_tls(tls: &TlsListener) -> io::Result<Self> {
        let port = free_port()?;
        let mut node = Self::unstarted(&tls.conf(port), None)?;
        node.tls_port = Some(port);
        if tls.external_auth {
            std::fs::write(
                node.dir.join("enabled_plugins"),
                "[rabbitmq_auth_mechanism_ssl].\n",
            )?;
        }
        node.boot().await?;
        Ok(node)
    }

    /// The port of the AMQPS listener, for a node started with
    /// [`start_with_tls`](Self::start_with_tls).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// A node ready to [`boot`](Self::boot) but not started: its name, free ports and data
    /// directory (with `conf` as its `rabbitmq.conf`) exist, its VM does not. `home`, if given,
    /// is the `HOME` of the node and of every `rabbitmqctl` call made for it — the nodes of a
    /// cluster share one, so they share an Erlang cookie whatever the user's own `HOME` holds.
    ///
    /// Dropping it before it was booted only removes its directory.
    pub fn unstarted(conf: &str, home: Option<&Path>) -> io::Result<Self> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "ronce-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(dir.join("rabbitmq.conf"), conf)?;
        Ok(BrokerNode {
            name: format!("{tag}@localhost"),
            port: free_port()?,
            dist_port: free_port()?,
            dir,
            keep_dir: std::env::var_os("RONCE_KEEP_NODE_DIR").is_some(),
            home: home.map(Path::to_path_buf),
            kill_on_drop: false,
            tls_port: None,
        })
    }

    /// Whether dropping the node kills its VM at once (`kill -9`) rather than asking it to
    /// stop first (default: stop politely, kill after 15 s). A cluster torn down at the end of
    /// a test has nothing to save.
    pub fn set_kill_on_drop(&mut self, yes: bool) {
        self.kill_on_drop = yes;
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .envs(self.home.as_ref().map(|h| ("HOME", h)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }

    /// Starts the Erlang VM (first start of an [`unstarted`](Self::unstarted) node, or again
    /// after `kill9`) and waits until it accepts AMQP connections.
    pub async fn boot(&self) -> io::Result<()> {
        self.launch_vm().await?;
        self.wait_booted().await
    }

    /// The first half of [`boot`](Self::boot): launches the VM (`rabbitmq-server -detached`)
    /// and returns without waiting for it to be ready — to boot several nodes side by side.
    pub async fn launch_vm(&self) -> io::Result<()> {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        cmd.arg("-detached");
        let status = tokio::task::spawn_blocking(move || cmd.status())
            .await
            .map_err(io::Error::other)??;
        if !status.success() {
            return Err(io::Error::other(format!(
                "rabbitmq-server -detached: {status}"
            )));
        }
        Ok(())
    }

    /// The second half of [`boot`](Self::boot): waits until the launched VM has started
    /// RabbitMQ and accepts AMQP connections.
    pub async fn wait_booted(&self) -> io::Result<()> {
        let pid = self.dir.join("pid");
        self.ctl_timeout(
            &["wait", pid.to_str().unwrap_or_default()],
            Duration::from_secs(90),
        )
        .await?;
        self.wait_port(Duration::from_secs(60)).await
    }

    async fn ctl(&self, args: &[&str]) -> io::Result<()> {
        self.ctl_timeout(args, Duration::from_secs(60)).await
    }

    async fn ctl_timeout(&self, args: &[&str], timeout: Duration) -> io::Result<()> {
        self.ctl_output(args, timeout).await.map(drop)
    }

    /// Runs `rabbitmq-queues -n <node> <args…>` and returns its standard output, or an
    /// error with its output.
    pub async fn queues_output(&self, args: &[&str], timeout: Duration) -> io::Result<String> {
        self.tool_output(QUEUES, args, timeout).await
    }

    /// Runs `rabbitmqctl -n <node> <args…>` and returns its standard output, or an error
    /// with its output if it failed or did not finish within `timeout`.
    pub async fn ctl_output(&self, args: &[&str], timeout: Duration) -> io::Result<String> {
        self.tool_output(CTL, args, timeout).await
    }

    async fn tool_output(
        &self,
        tool: &str,
        args: &[&str],
        timeout: Duration,
    ) -> io::Result<String> {
        let mut cmd = tokio::process::Command::new(tool);
        cmd.arg("-n").arg(&self.name).args(args);
        cmd.env("RABBITMQ_NODENAME", &self.name)
            .envs(self.home.as_ref().map(|h| ("HOME", h)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| io::Error::other(format!("rabbitmqctl {args:?} timed out")))??;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(ctl_err(&args.join(" "), &out))
        }
    }

    /// Waits until the AMQP port (and the AMQPS one, if any) accepts connections.
    async fn wait_port(&self, timeout: Duration) -> io::Result<()> {
        let end = Instant::now() + timeout;
        for port in std::iter::once(self.port).chain(self.tls_port) {
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() > end {
                    return Err(io::Error::other(format!(
                        "node {} did not open port {port}",
                        self.name
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// The AMQP port.
    /// The node's AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name (`<tag>@localhost`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's own data directory (removed on drop unless `RONCE_KEEP_NODE_DIR` is set).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// `host:port` for a proxy to forward to.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the RabbitMQ application (the VM stays up; connections are closed by the broker
    /// with 320 CONNECTION_FORCED).
    pub async fn stop_app(&self) -> io::Result<()> {
        self.ctl(&["stop_app"]).await
    }

    /// Starts the application again and waits for the AMQP port.
    pub async fn start_app(&self) -> io::Result<()> {
        self.ctl(&["start_app"]).await?;
        self.wait_port(Duration::from_secs(60)).await
    }

    /// `stop_app` then `start_app`.
    pub async fn restart_app(&self) -> io::Result<()> {
        self.stop_app().await?;
        self.start_app().await
    }

    /// Runs `rabbitmqctl -n <node> <args…>` (e.g. `set_vm_memory_high_watermark 0`).
    pub async fn rabbitmqctl(&self, args: &[&str]) -> io::Result<()> {
        self.ctl(args).await
    }

    /// Closes every client connection from the broker's side, with a reason.
    pub async fn close_all_connections(&self, reason: &str) -> io::Result<()> {
        self.ctl(&["close_all_connections", reason]).await
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `kill -9` of the node's VM: no goodbye to anyone. Returns once the process is gone.
    pub async fn kill9(&self) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("no pid file: is the node running?"))?;
        kill(pid, libc::SIGKILL);
        let end = Instant::now() + Duration::from_secs(30);
        while alive(pid) && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts the node again after `kill9` (same name, ports and data).
    pub async fn start_again(&self) -> io::Result<()> {
        self.boot().await
    }

    /// `kill -9`, then start again and wait until ready.
    pub async fn kill9_and_restart(&self) -> io::Result<()> {
        self.kill9().await?;
        self.start_again().await
    }

    /// Queue depth (ready messages) as the broker reports it, via `rabbitmqctl list_queues`.
    pub async fn queue_messages(&self, queue: &str) -> io::Result<Option<u64>> {
        let out = self
            .ctl_output(
                &["-q", "list_queues", "name", "messages"],
                Duration::from_secs(60),
            )
            .await?;
        Ok(out.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            (it.next() == Some(queue)).then(|| it.next()?.parse().ok())?
        }))
    }
}

fn kill(pid: i32, sig: i32) {
    // The `kill` command rather than libc::kill: the workspace forbids unsafe code.
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

impl Drop for BrokerNode {
    fn drop(&mut self) {
        // Best effort, synchronous: stop politely for a few seconds, then kill (at once with
        // `kill_on_drop`, if the VM has written its pid; without a pid it may be booting).
        let mut cmd = Command::new(CTL);
        cmd.args(["-n", &self.name, "stop"])
            .envs(self.home.as_ref().map(|h| ("HOME", h)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let polite = !(self.kill_on_drop && self.pid().is_some());
        let stopped = match polite.then(|| cmd.spawn()) {
            None => false,
            Some(Ok(mut child)) => {
                let end = Instant::now() + Duration::from_secs(15);
                loop {
                    match child.try_wait() {
                        Ok(Some(s)) => break s.success(),
                        Ok(None) if Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        _ => {
                            let _ = child.kill();
                            break false;
                        }
                    }
                }
            }
            Some(Err(_)) => false,
        };
        if let Some(pid) = self.pid()
            && (!stopped || alive(pid))
        {
            kill(pid, libc::SIGKILL);
            // Its files must not be written while the directory is removed.
            let end = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
