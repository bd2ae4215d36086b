//! `rabbit-once publish --from FILE|-`: one message per line, with confirms. Every line that
//! does not end confirmed is written verbatim to `--failed`, so the run can be repeated on it.

use super::lines::{self, Defaults};
use super::{Args, Summary, close, kind};
use crate::common::{await_confirmations, connect, stop_signal};
use crate::exit;
use indicatif::{ProgressBar, ProgressStyle};
use rabbit_once::{ConnectionState, Publisher, PublisherConfig};
use std::collections::BTreeMap;
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

/// Where the lines come from.
type Input = Box<dyn AsyncBufRead + Unpin + Send>;

/// Reads the next line without its line ending (`None` at the end of the input).
async fn next_line(input: &mut Input) -> anyhow::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    if input.read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(Some(buf))
}

/// Publishes the lines of `from` (`-`: stdin) and prints the summary. Exit 0 if every line was
/// confirmed, 1 if some were not (they are in `--failed`), 2 on a malformed line (the lines
/// before it were published; that line and the rest are in `--failed`).
pub async fn run(a: &Args, from: &str) -> anyhow::Result<ExitCode> {
    let mut input: Input = if from == "-" {
        Box::new(BufReader::new(tokio::io::stdin()))
    } else {
        let file = tokio::fs::File::open(from)
            .await
            .map_err(|e| exit::usage(format!("--from {from}: {e}")))?;
        Box::new(BufReader::new(file))
    };
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
        .config(&format!(
            "rabbit-once publish --from {}",
            std::process::id()
        ))?
        .topology(a.topology());
    let conn = connect(&a.conn, config).await?;
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
    let mut stop = std::pin::pin!(stop_signal());
    let (mut n, mut read, mut interrupted) = (0u64, 0u64, false);
    // The first line not published (malformed, or in hand at an interruption) and the reason.
    let mut stopped_at: Option<(u64, Vec<u8>, Option<String>)> = None;
    loop {
        let Some(line) = next_line(&mut input).await? else {
            break;
        };
        n += 1;
        if line.is_empty() {
            continue;
        }
        read += 1;
        let msg = match lines::message(&line, a.format, &defaults) {
            Ok(m) => m,
            Err(why) => {
                stopped_at = Some((n, line, Some(why)));
                break;
            }
        };
        let published = tokio::select! {
            p = publisher.publish(msg) => p,
            _ = &mut stop => {
                interrupted = true;
                stopped_at = Some((n, line, None));
                break;
            }
        };
        match published {
            Ok(c) => {
                ledger.lock().expect("ledger").pending.insert(n, line);
                let _ = tx.send((n, c));
            }
            Err(e) => {
                if let ConnectionState::Failed(err) = conn.state() {
                    return Err(anyhow::Error::from(err).context("the connection gave up"));
                }
                // Refused before sending (too large, an invalid property): that line fails.
                eprintln!("line {n}: refused: {}", e.error);
                ledger.lock().expect("ledger").fail(n, line, kind(&e.error));
            }
        }
    }
    // What was not published: the line it stopped at and, from a file, the rest of it (stdin
    // is not read further: it may never end).
    let mut unread: Vec<Vec<u8>> = Vec::new();
    if let Some((_, line, _)) = &stopped_at {
        unread.push(line.clone());
        if from != "-" {
            while let Some(line) = next_line(&mut input).await? {
                if !line.is_empty() {
                    unread.push(line);
                }
            }
        }
    }

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

    let l = std::mem::take(&mut *ledger.lock().expect("ledger"));
    if let Some(path) = &a.failed {
        let mut out = Vec::new();
        for line in l.failed.values().chain(l.pending.values()).chain(&unread) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        std::fs::write(path, out)
            .map_err(|e| anyhow::anyhow!("could not write --failed {}: {e}", path.display()))?;
    }
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
        not_published: unread.len() as u64,
    };
    if let ConnectionState::Failed(err) = conn.state() {
        eprintln!("the connection gave up: {err}");
    }
    conn.close().await;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        s.print();
    }
    let not_confirmed = l.failed.len() + l.pending.len();
    if not_confirmed > 0 {
        match &a.failed {
            Some(p) => eprintln!(
                "{not_confirmed} lines not confirmed: written to {}",
                p.display()
            ),
            None => eprintln!(
                "{not_confirmed} lines not confirmed (give --failed FILE to keep them for a retry)"
            ),
        }
    }
    if let Some((n, _, Some(why))) = stopped_at {
        return Err(exit::usage(format!(
            "--from line {n}: {why}. Lines before it (messages: {}) were published, see the \
             summary; none from it on",
            read - 1
        )));
    }
    Ok(if not_confirmed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
