//! The audit trail leaving the database: `serve --audit-file PATH` (JSON
//! lines, opened `O_APPEND`, 0600) and `--audit-syslog [SOCKET]` (RFC 5424
//! datagrams to `/dev/log`, or a path for tests), each line carrying the
//! row's chain position and hash.
//!
//! Why a tail and not a hook in every write: a row is exported only once
//! it is committed (never one a rolled-back transaction held), in chain
//! order, exactly as stored. The exporter reads the rows after the last
//! position it passed on, every [`POLL`]; appends commit in chain order
//! (the chain head's lock), so nothing is skipped. Each sink has a bounded
//! queue and a thread of its own: a slow or stuck consumer never holds the
//! exporter, let alone issuance. When a queue is full its rows are dropped,
//! counted in `ca_audit_export_dropped_total{kind}`, and the file gets a
//! gap marker line naming the positions missing (the store keeps them all;
//! `audit verify` is the authority). No audit row holds a PSK, so no line
//! can.

use super::Store;
use super::audit_chain::StoredRow;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// How often the exporter looks for new rows.
pub const POLL: Duration = Duration::from_millis(200);
/// Lines a sink may have waiting before rows are dropped.
pub const QUEUE: usize = 10_000;
/// Rows read per query.
const PAGE: i64 = 1_000;

/// `serve`'s audit-trail options.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditTrailArgs {
    /// How often `serve` writes a signed checkpoint of the audit chain (its
    /// head and length, signed with audit-key.pem), so a truncated tail is
    /// detected (`audit verify`). 0s: only `audit checkpoint` writes them.
    #[arg(long, env = "CA_AUDIT_CHECKPOINT_INTERVAL", default_value = "5m")]
    pub audit_checkpoint_interval: humantime::Duration,
    /// Also send every audit row to syslog (RFC 5424, facility log audit)
    /// at this datagram socket [default when given without a value: /dev/log].
    #[arg(long, env = "CA_AUDIT_SYSLOG", value_name = "SOCKET", num_args = 0..=1,
          default_missing_value = "/dev/log")]
    pub audit_syslog: Option<PathBuf>,
    /// Also append every audit row to this file as a JSON line with its
    /// chain position and hash (created 0600; resumes after its last line).
    #[arg(long, env = "CA_AUDIT_FILE", value_name = "PATH")]
    pub audit_file: Option<PathBuf>,
}

/// One line as the sinks write it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ExportLine {
    pub seq: i64,
    pub id: i64,
    pub at: i64,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serial: Option<String>,
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub actor: Option<String>,
    /// For a repeat row: the aggregated row it counts for, how many, the latest.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub repeats_of: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_at: Option<i64>,
    /// The row's chain hash (hex).
    pub hash: String,
}

impl ExportLine {
    fn from_row(r: &StoredRow) -> Option<ExportLine> {
        let repeat = r.repeats_of.is_some();
        Some(ExportLine {
            seq: r.chain_seq?,
            id: r.id,
            at: r.at,
            event: r.event.clone(),
            hostname: r.hostname.clone(),
            serial: r.serial.clone(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            peer: r.peer.clone(),
            actor: r.actor.clone(),
            repeats_of: r.repeats_of,
            count: repeat.then_some(r.repeat_count),
            last_at: if repeat { r.last_at } else { None },
            hash: hex::encode(r.chain_hash.as_deref().unwrap_or_default()),
        })
    }
}

/// One sink's queue and thread.
struct Sink {
    name: &'static str,
    tx: mpsc::Sender<ExportLine>,
    thread: std::thread::JoinHandle<()>,
}

/// The running exporter; [`Exporter::stop`] passes on what is committed and
/// closes the sinks.
pub struct Exporter {
    task: tokio::task::JoinHandle<()>,
    state: std::sync::Arc<tokio::sync::Mutex<Tail>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

struct Tail {
    store: Store,
    after: i64,
    sinks: Vec<Sink>,
}

impl Exporter {
    /// Starts the sinks `args` asks for; `None` if it asks for none.
    pub async fn start(store: &Store, args: &AuditTrailArgs) -> anyhow::Result<Option<Exporter>> {
        use anyhow::Context as _;
        if args.audit_file.is_none() && args.audit_syslog.is_none() {
            return Ok(None);
        }
        let head = store.audit_chain_head().await?.seq;
        let mut sinks = Vec::new();
        // The file resumes after its last line (all of the chain on a new
        // file); syslog starts at the head (it cannot say what it has).
        let mut after = head;
        if let Some(path) = &args.audit_file {
            let (file, last) = open_file(path)
                .with_context(|| format!("opening the audit file {}", path.display()))?;
            after = last.unwrap_or(0).min(head);
            sinks.push(spawn_sink("file", file_writer(file, last)));
        }
        if let Some(socket) = &args.audit_syslog {
            let writer = syslog_writer(socket.clone())
                .with_context(|| format!("opening the syslog socket {}", socket.display()))?;
            sinks.push(spawn_sink("syslog", writer));
        }
        let state = std::sync::Arc::new(tokio::sync::Mutex::new(Tail {
            store: store.clone(),
            after,
            sinks,
        }));
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                let mut timer = tokio::time::interval(POLL);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    timer.tick().await;
                    if let Err(e) = state.lock().await.pump().await {
                        tracing::warn!(error = %e, "reading audit rows to export failed; will retry");
                    }
                }
            }
        });
        Ok(Some(Exporter { task, state }))
    }

    /// Passes on every committed row, then closes the sinks and waits (a
    /// bounded time) for their threads to write what they hold.
    pub async fn stop(self) {
        self.task.abort();
        let mut tail = self.state.lock().await;
        if let Err(e) = tail.pump().await {
            tracing::warn!(error = %e, "exporting the last audit rows failed");
        }
        let threads: Vec<_> = tail.sinks.drain(..).map(|s| s.thread).collect();
        drop(tail);
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::task::spawn_blocking(move || {
                for t in threads {
                    let _ = t.join();
                }
            }),
        )
        .await;
    }
}

impl Tail {
    /// Hands every row committed after `after` to each sink's queue.
    async fn pump(&mut self) -> anyhow::Result<()> {
        loop {
            let rows = self.store.audit_rows_after(self.after, PAGE).await?;
            let Some(last) = rows.last().and_then(|r| r.chain_seq) else {
                return Ok(());
            };
            for line in rows.iter().filter_map(ExportLine::from_row) {
                for sink in &self.sinks {
                    if sink.tx.try_send(line.clone()).is_err() {
                        crate::metrics::metrics().audit_export_dropped(sink.name, 1);
                    }
                }
            }
            self.after = last;
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }
}

/// What a sink's thread does with each line.
type Writer = Box<dyn FnMut(&ExportLine) -> std::io::Result<()> + Send>;

fn spawn_sink(name: &'static str, mut write: Writer) -> Sink {
    let (tx, mut rx) = mpsc::channel::<ExportLine>(QUEUE);
    let thread = std::thread::Builder::new()
        .name(format!("audit-{name}"))
        .spawn(move || {
            let mut failing = false;
            while let Some(line) = rx.blocking_recv() {
                match write(&line) {
                    Ok(()) => failing = false,
                    Err(e) => {
                        crate::metrics::metrics().audit_export_dropped(name, 1);
                        if !failing {
                            tracing::warn!(sink = name, error = %e, seq = line.seq, "an audit sink failed; rows are dropped until it recovers");
                        }
                        failing = true;
                    }
                }
            }
        })
        .expect("starting an audit sink thread");
    Sink { name, tx, thread }
}

/// Opens (or creates, 0600) the audit file for appending; the chain
/// position of its last line, if it has one.
fn open_file(path: &Path) -> std::io::Result<(std::fs::File, Option<i64>)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let text = std::fs::read_to_string(path)?;
    let last = text.lines().rev().find_map(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()?
            .get("seq")?
            .as_i64()
    });
    Ok((file, last))
}

/// The file sink: one JSON line per row; a gap marker before a row that
/// does not follow the last one written.
fn file_writer(mut file: std::fs::File, mut last: Option<i64>) -> Writer {
    Box::new(move |line: &ExportLine| {
        let mut out = Vec::with_capacity(256);
        if let Some(prev) = last
            && line.seq != prev + 1
            && line.seq > prev
        {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({"gap": {"after_seq": prev, "next_seq": line.seq,
                    "missing": line.seq - prev - 1}}),
            )?;
            out.push(b'\n');
        }
        serde_json::to_writer(&mut out, line)?;
        out.push(b'\n');
        // One write per line: O_APPEND keeps concurrent writers' lines whole.
        file.write_all(&out)?;
        last = Some(line.seq);
        Ok(())
    })
}

/// RFC 5424 facility 13 (log audit), severity 6 (informational).
const SYSLOG_PRI: u8 = 13 * 8 + 6;

/// One RFC 5424 message: header, no structured data, the JSON line as MSG.
pub fn rfc5424(line: &ExportLine, hostname: &str, pid: u32) -> anyhow::Result<String> {
    Ok(format!(
        "<{SYSLOG_PRI}>1 {} {hostname} ca-server {pid} audit - {}",
        proto::timefmt::rfc3339(line.at),
        serde_json::to_string(line)?
    ))
}

/// The syslog sink: a datagram per row to `socket`.
fn syslog_writer(socket: PathBuf) -> std::io::Result<Writer> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    // A stuck collector costs its own thread at most this per row.
    sock.set_write_timeout(Some(Duration::from_secs(1)))?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".into());
    let pid = std::process::id();
    Ok(Box::new(move |line: &ExportLine| {
        let msg = rfc5424(line, &hostname, pid).map_err(std::io::Error::other)?;
        sock.send_to(msg.as_bytes(), &socket)?;
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: i64) -> ExportLine {
        ExportLine {
            seq,
            id: seq + 10,
            at: 1_800_000_000,
            event: "issued".into(),
            hostname: Some("a.example".into()),
            serial: None,
            outcome: "ok".into(),
            reason: None,
            peer: None,
            actor: None,
            repeats_of: None,
            count: None,
            last_at: None,
            hash: "00".repeat(32),
        }
    }

    #[test]
    fn syslog_lines_are_rfc5424() {
        let msg = rfc5424(&line(3), "ca1", 42).unwrap();
        assert!(
            msg.starts_with("<110>1 2027-01-15T08:00:00Z ca1 ca-server 42 audit - {\"seq\":3,"),
            "{msg}"
        );
    }

    #[test]
    fn the_file_resumes_and_marks_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let (file, last) = open_file(&path).unwrap();
        assert_eq!(last, None);
        let mut w = file_writer(file, last);
        w(&line(1)).unwrap();
        w(&line(2)).unwrap();
        w(&line(5)).unwrap();
        drop(w);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(
            lines[2],
            r#"{"gap":{"after_seq":2,"missing":2,"next_seq":5}}"#
        );
        let (_, last) = open_file(&path).unwrap();
        assert_eq!(last, Some(5));
    }
}
