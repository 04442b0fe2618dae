//! Where log lines go: a thread of their own, not the thread that logged.
//!
//! Why: with `--log info` every request writes a line. Written straight to
//! stderr, each line is a blocking `write(2)` on a runtime worker, and when
//! stderr is a pipe whose reader stalls (journald under load, a `| tee` on a
//! full disk) the pipe fills and every worker blocks on its next line:
//! issuance stops until someone reads the log. Here a worker only queues the
//! formatted line; one thread writes the queue through a buffer, one
//! `write(2)` for all the lines waiting, and flushes when the queue is empty.
//! A full queue drops the line and counts it (`ca_log_lines_dropped`): the
//! audit rows in the store stay the durable record, the log is for people.
//!
//! [`flush`] waits (boundedly) until every line queued before it is written;
//! `cli::main` calls it before the process exits.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Lines queued at most; past it lines are dropped (and counted).
pub const QUEUE_LINES: usize = 16 * 1024;

/// How long [`flush`] waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line before it is written and flushed.
    Flush(SyncSender<()>),
}

struct Sink {
    tx: SyncSender<Msg>,
}

static SINK: OnceLock<Sink> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the queue was full, since the process started.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The writer for `tracing_subscriber::fmt`: queues each formatted event.
/// Starts the writing thread on first use, writing to `out`.
#[derive(Clone, Copy, Debug)]
pub struct MakeSink;

impl MakeSink {
    /// Starts the sink's thread, writing to stderr, and returns its writer.
    pub fn stderr() -> MakeSink {
        start(Box::new(std::io::stderr()), QUEUE_LINES);
        MakeSink
    }
}

/// Starts the writing thread once (later calls keep the first).
fn start(out: Box<dyn Write + Send>, capacity: usize) {
    SINK.get_or_init(|| {
        let (tx, rx) = sync_channel(capacity);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_loop(rx, out));
        if spawned.is_err() {
            // No thread: lines queue until full, then are counted as dropped.
            eprintln!("warning: could not start the log writer thread");
        }
        Sink { tx }
    });
}

fn write_loop(rx: Receiver<Msg>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut acks = Vec::new();
    // Blocks for the first message, then takes whatever else is waiting.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                // A failed write (stderr closed) has nowhere to be reported.
                Msg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// Queues one line; a full queue drops it and counts the drop.
fn queue(line: &[u8]) {
    let Some(sink) = SINK.get() else {
        let _ = std::io::stderr().write_all(line);
        return;
    };
    match sink.tx.try_send(Msg::Line(line.to_vec())) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().log_line_dropped();
        }
    }
}

/// Waits (at most two seconds) until every line queued so far is written.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let (ack, done) = sync_channel(1);
    match sink.tx.try_send(Msg::Flush(ack)) {
        Ok(()) => {}
        // A full queue: the marker waits for room on a thread of its own, so
        // a writer stuck for good cannot hold the exit past the deadline.
        Err(TrySendError::Full(marker)) => {
            let tx = sink.tx.clone();
            let _ = std::thread::Builder::new().spawn(move || tx.send(marker));
        }
        Err(TrySendError::Disconnected(_)) => return,
    }
    let _ = done.recv_timeout(FLUSH_WAIT);
}

/// One event's writer: `fmt` writes the formatted line in one `write_all`,
/// which arrives here as one or more `write`s; the line is queued on drop.
#[derive(Debug)]
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            queue(&self.0);
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeSink {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can read back, and block.
    #[derive(Clone, Default)]
    struct Shared {
        buf: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.buf.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    // One test: the sink is process-wide.
    #[test]
    fn lines_arrive_in_order_and_a_stuck_writer_drops_instead_of_blocking() {
        let out = Shared::default();
        start(Box::new(out.clone()), 64);
        for i in 0..50 {
            let mut l = MakeSink.make_writer_for_test();
            writeln!(l, "line {i}").unwrap();
        }
        flush();
        let text = String::from_utf8(out.buf.lock().unwrap().clone()).unwrap();
        let want: String = (0..50).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
        assert_eq!(dropped(), 0);

        // The writer stalls (a pipe nobody reads): logging must not block.
        // (A liveness bound, not a timing: a blocked logger never finishes.)
        let held = out.gate.lock().unwrap();
        let before = dropped();
        let (finished, logged) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..1000 {
                let mut l = MakeSink.make_writer_for_test();
                writeln!(l, "stalled {i}").unwrap();
            }
            finished.send(()).unwrap();
        });
        logged
            .recv_timeout(Duration::from_secs(60))
            .expect("logging blocked behind a stuck writer");
        let lost = dropped() - before;
        // The queue and the writer's buffer hold some; the rest was dropped.
        assert!(lost > 0, "a stuck writer dropped nothing");
        drop(held);
        flush();
        let text = String::from_utf8(out.buf.lock().unwrap().clone()).unwrap();
        let kept = text.matches("stalled ").count() as u64;
        assert_eq!(kept + lost, 1000, "every line is written or counted");
    }

    impl MakeSink {
        fn make_writer_for_test(&self) -> Line {
            tracing_subscriber::fmt::MakeWriter::make_writer(self)
        }
    }
}
