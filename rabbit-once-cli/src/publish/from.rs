//! `rabbit-once publish --from FILE|-`: one message per line, with confirms. Every line that
//! does not end confirmed is written verbatim to `--failed` — also when the run ends in an
//! error — so the run can be repeated on it.

use super::lines::{self, Defaults};
use super::{Args, Summary, close, kind};
use crate::common::{await_confirmations, connect, stop_signal};
use crate::exit;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use rabbit_once::{ConnectionState, Publisher, PublisherConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};

/// The lines in flight and the lines that failed, by line number; and the counts.
#[derive(Default)]
struct Ledger {
    /// Published, not settled yet.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Ended without a confirm: refused, unroutable, handed back.
    failed: BTreeMap<u64, Vec<u8>>,
    confirmed: u64,
    kinds: BTreeMap<String, u64>,
}

impl Ledger {
    fn fail(&mut self, n: u64, line: Vec<u8>, kind: String) {
        self.failed.insert(n, line);
        *self.kinds.entry(kind).or_insert(0) += 1;
    }
}

/// Why the run stopped before the end of the input.
enum Stop {
    /// A malformed line: its number and what is wrong with it.
    Malformed(u64, String),
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// The connection gave up (credentials refused on a reconnect, …).
    Connection(anyhow::Error),
    /// The input could not be read.
    Unreadable(anyhow::Error),
}

/// The lines of the input, one at a time, without their line endings.
struct Lines {
    input: Box<dyn AsyncBufRead + Unpin + Send>,
    /// The line being read. A read cancelled by a `select!` leaves its bytes here and the next
    /// one goes on from them, so no byte is lost.
    buf: Vec<u8>,
    /// Stdin (`-`): never read past the line the run stopped at (it may never end).
    stdin: bool,
}

impl Lines {
    /// Opens `from` (`-`: stdin); an unreadable file is a usage error.
    async fn open(from: &str) -> anyhow::Result<Self> {
        let input: Box<dyn AsyncBufRead + Unpin + Send> = if from == "-" {
            Box::new(BufReader::new(tokio::io::stdin()))
        } else {
            let file = tokio::fs::File::open(from)
                .await
                .map_err(|e| exit::usage(format!("--from {from}: {e}")))?;
            Box::new(BufReader::new(file))
        };
        Ok(Lines {
            input,
            buf: Vec::new(),
            stdin: from == "-",
        })
    }

    /// The next line (`None` at the end of the input). Cancel-safe.
    async fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        if self.input.read_until(b'\n', &mut self.buf).await? == 0 && self.buf.is_empty() {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        Ok(Some(line))
    }

    /// The lines not read yet, blank ones left out; from stdin none.
    async fn rest(&mut self) -> std::io::Result<Vec<Vec<u8>>> {
        let mut rest = Vec::new();
        if self.stdin {
            return Ok(rest);
        }
        while let Some(line) = self.next().await? {
            if !line.is_empty() {
                rest.push(line);
            }
        }
        Ok(rest)
    }

    /// [`rest`](Self::rest), unless Ctrl-C or SIGTERM comes first; `Err` says why the rest is
    /// missing.
    async fn rest_or_stop(&mut self) -> Result<Vec<Vec<u8>>, String> {
        tokio::select! {
            r = self.rest() => r.map_err(|e| format!("could not read the rest of the input: {e}")),
            _ = stop_signal() => Err("interrupted while reading the rest of the input".into()),
        }
    }
}

/// `--failed`: where the lines left to do go. Its directory is checked before anything is
/// published; the file is replaced in one step at the end (a temporary file in the same
/// directory, synced, renamed over it), so a crash or a full disk never leaves it half written
/// — and `--from F --failed F` never loses F.
struct FailedFile {
    path: PathBuf,
    temp: PathBuf,
}

impl FailedFile {
    /// Creates the directory of `path` if missing and makes sure a file can be created in it
    /// (a usage error, exit 2, if not).
    fn prepare(path: &Path) -> anyhow::Result<Self> {
        let bad = |why: String| exit::usage(format!("--failed {}: {why}", path.display()));
        let Some(name) = path.file_name() else {
            return Err(bad("not a file name".into()));
        };
        if path.is_dir() {
            return Err(bad("is a directory".into()));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| bad(format!("cannot create its directory: {e}")))?;
        let temp = dir.join(format!(
            ".{}.rabbit-once-{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        std::fs::File::create(&temp)
            .map_err(|e| bad(format!("cannot write in its directory: {e}")))?;
        let _ = std::fs::remove_file(&temp);
        Ok(FailedFile {
            path: path.to_path_buf(),
            temp,
        })
    }

    /// Replaces the file with `lines`, each followed by a newline.
    fn write<'a>(&self, lines: impl Iterator<Item = &'a Vec<u8>>) -> anyhow::Result<()> {
        let written = (|| {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&self.temp)?);
            for line in lines {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            if let Ok(meta) = std::fs::metadata(&self.path) {
                file.set_permissions(meta.permissions())?;
            }
            file.sync_all()?;
            std::fs::rename(&self.temp, &self.path)?;
            if let Some(dir) = self.temp.parent() {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            std::io::Result::Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        written.with_context(|| {
            format!(
                "could not write --failed {} (left as it was)",
                self.path.display()
            )
        })
    }
}

/// Publishes the lines of `from` (`-`: stdin) and prints the summary. Exit 0 if every line was
/// confirmed, 1 if some were not (they are in `--failed`), 2 on a malformed line (the lines
/// before it were published; that line and the rest are in `--failed`), and the error's own
/// status when the connection gives up or the input cannot be read (what is left is in
/// `--failed` all the same).
pub async fn run(a: &Args, from: &str) -> anyhow::Result<ExitCode> {
    let failed_file = a.failed.as_deref().map(FailedFile::prepare).transpose()?;
    let mut lines = Lines::open(from).await?;
    let defaults = Defaults {
        exchange: a.exchange.clone().unwrap_or_default(),
        routing_key: a
            .routing_key
            .clone()
            .or_else(|| a.queue.clone())
            .unwrap_or_default(),
        transient: a.transient,
        mandatory: !a.no_mandatory,
    };
    let config = a
        .conn
        .config("rabbit-once publish --from")?
        .topology(a.topology());
    let conn = match connect(&a.conn, config).await {
        Ok(conn) => conn,
        Err(e) => {
            // Nothing was published: all of it is left to do.
            let rest = lines.rest_or_stop().await;
            // An error writing --failed is said on stderr; the connection's error decides.
            let _ = keep(failed_file.as_ref(), &BTreeMap::new(), rest, lines.stdin);
            return Err(e);
        }
    };
    let publisher = Publisher::new(
        &conn,
        PublisherConfig::default()
            .window(a.window)
            .max_buffered(a.window.max(10_000)),
    )?;
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {pos} settled {msg}").expect("template"));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (tx, collector) = {
        let (pb, ledger) = (pb.clone(), ledger.clone());
        await_confirmations((), move |_, n: u64, outcome| {
            let mut l = ledger.lock().expect("ledger");
            let line = l.pending.remove(&n).unwrap_or_default();
            match outcome {
                Ok(_) => l.confirmed += 1,
                Err(e) => l.fail(n, line, kind(&e.error)),
            }
            pb.inc(1);
        })
    };

    let started = Instant::now();
    let mut signal = std::pin::pin!(stop_signal());
    let (mut n, mut read) = (0u64, 0u64);
    let mut stop: Option<Stop> = None;
    // The line read but not published when the run stopped.
    let mut in_hand: Option<Vec<u8>> = None;
    loop {
        let next = tokio::select! {
            l = lines.next() => l,
            _ = &mut signal => {
                stop = Some(Stop::Interrupted);
                break;
            }
        };
        let line = match next {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                let e = anyhow::Error::from(e)
                    .context(format!("could not read --from {from} after line {n}"));
                stop = Some(Stop::Unreadable(e));
                break;
            }
        };
        n += 1;
        if line.is_empty() {
            continue;
        }
        read += 1;
        let msg = match lines::message(&line, a.format, &defaults) {
            Ok(m) => m,
            Err(why) => {
                in_hand = Some(line);
                stop = Some(Stop::Malformed(n, why));
                break;
            }
        };
        let published = tokio::select! {
            p = publisher.publish(msg) => p,
            _ = &mut signal => {
                in_hand = Some(line);
                stop = Some(Stop::Interrupted);
                break;
            }
        };
        match published {
            Ok(c) => {
                ledger.lock().expect("ledger").pending.insert(n, line);
                let _ = tx.send((n, c));
            }
            Err(e) => {
                if let ConnectionState::Failed(_) = conn.state() {
                    // The error itself, not its text: its kind decides the exit status.
                    in_hand = Some(line);
                    let e = anyhow::Error::from(e.error).context("the connection gave up");
                    stop = Some(Stop::Connection(e));
                    break;
                }
                // Refused before sending (too large, an invalid property): that line fails.
                eprintln!("line {n}: refused: {}", e.error);
                ledger.lock().expect("ledger").fail(n, line, kind(&e.error));
            }
        }
    }
    // What was not published: the line in hand and, from a file, the rest of it (not after a
    // read error: the rest cannot be read).
    let rest = match &stop {
        None => Ok(Vec::new()),
        Some(Stop::Unreadable(_)) => Err("the rest of the input could not be read".to_string()),
        Some(_) => lines.rest_or_stop().await,
    };
    let interrupted = matches!(stop, Some(Stop::Interrupted));
    let closed = close(&publisher, a.close_timeout, interrupted).await;
    drop(tx);
    let handed_back = match closed {
        Some(n) => {
            collector.await?; // every confirmation has settled: the last ones are counted
            n
        }
        None => {
            // Stopped a second time: no more waiting; what is pending is not confirmed.
            collector.abort();
            let mut l = ledger.lock().expect("ledger");
            let pending = std::mem::take(&mut l.pending);
            let count = pending.len() as u64;
            l.failed.extend(pending);
            count
        }
    };
    pb.finish_and_clear();
    if stop.is_none()
        && let ConnectionState::Failed(e) = conn.state()
    {
        // Every line was handed over before the connection gave up: the lines in flight
        // failed with it.
        stop = Some(Stop::Connection(
            anyhow::Error::from(e).context("the connection gave up"),
        ));
    }

    let mut l = std::mem::take(&mut *ledger.lock().expect("ledger"));
    let mut left = std::mem::take(&mut l.failed);
    left.append(&mut l.pending);
    let not_confirmed = left.len();
    let rest = rest.map(|rest| in_hand.into_iter().chain(rest).collect::<Vec<_>>());
    let not_published = rest.as_ref().map_or(0, |r| r.len() as u64);
    let kept = keep(
        failed_file.as_ref(),
        &left,
        rest,
        lines.stdin && stop.is_some(),
    );
    let stats = publisher.stats();
    let s = Summary {
        published: stats.accepted,
        confirmed: l.confirmed,
        failed: l.kinds,
        republished: stats.republished,
        reconnects: conn.reconnects(),
        handed_back,
        seconds: started.elapsed().as_secs_f64(),
        interrupted,
        not_published,
    };
    conn.close().await;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        s.print();
    }
    match stop {
        Some(Stop::Malformed(n, why)) => Err(exit::usage(format!(
            "--from line {n}: {why}. Lines before it (messages: {}) were published, see the \
             summary; none from it on",
            read - 1
        ))),
        Some(Stop::Connection(e) | Stop::Unreadable(e)) => Err(e),
        Some(Stop::Interrupted) | None => {
            kept?;
            Ok(if not_confirmed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// Writes what is left to do to `--failed` (if given): the lines not confirmed (`left`), then
/// those not published (`rest`, or why they are missing; `stdin_cut`: stdin was not read to
/// its end). Says on stderr how many lines are left and where they are; an error writing the
/// file is returned (and said).
fn keep(
    file: Option<&FailedFile>,
    left: &BTreeMap<u64, Vec<u8>>,
    rest: Result<Vec<Vec<u8>>, String>,
    stdin_cut: bool,
) -> anyhow::Result<()> {
    let (rest, missing) = match rest {
        Ok(rest) => (rest, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let count = left.len() + rest.len();
    let Some(file) = file else {
        if count > 0 {
            eprintln!(
                "{count} lines left to do (not confirmed or not published; give --failed FILE \
                 to keep them for a retry)"
            );
        }
        return Ok(());
    };
    if let Err(e) = file.write(left.values().chain(&rest)) {
        eprintln!("{e:#}");
        return Err(e);
    }
    let path = file.path.display();
    if count > 0 || missing.is_some() {
        eprintln!("{count} lines left to do (not confirmed or not published): written to {path}");
    }
    if let Some(why) = missing {
        eprintln!("{why}: {path} does not hold the lines after those");
    } else if stdin_cut {
        eprintln!("stdin was not read further: what follows in it is not in {path}");
    }
    Ok(())
}
