//! Where log lines go: a thread of their own, not the thread that logged.
//!
//! Why: with `--log info` every request writes a line. Written straight to
//! stderr, each line is a blocking `write(2)` on a runtime worker, and when
//! stderr is a pipe whose reader stalls (journald under load, a `| tee` on a
//! full disk) the pipe fills and every worker blocks on its next line:
//! issuance stops until someone reads the log. Here a worker only appends the
//! formatted line to a buffer under a lock (no system call, no wake-up); a
//! thread of its own takes the buffer every 10 ms (less often while idle)
//! and writes it in one `write(2)`. A full buffer (4 MiB) drops the line and
//! counts it (`ca_log_lines_dropped`): the audit rows in the store stay the
//! durable record, the log is for people.
//!
//! [`flush`] waits (boundedly) until every line queued before it is written;
//! `cli::main` calls it before the process exits.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Bytes of log lines held at most; past it lines are dropped (and counted).
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// How often the writer takes what has queued. Loggers never wake it: a
/// wake-up per line costs more than the write it saves.
const INTERVAL: Duration = Duration::from_millis(10);

/// The longest sleep while nothing is logged.
const IDLE_MAX: Duration = Duration::from_millis(250);

/// How long [`flush`] waits for the writer.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

struct State {
    buf: Vec<u8>,
    capacity: usize,
    /// Write passes completed.
    passes: u64,
    /// A pass is between taking the buffer and finishing its write.
    writing: bool,
    /// [`flush`] is waiting: do not sleep out the interval.
    hurry: bool,
}

struct Sink {
    state: Mutex<State>,
    /// Wakes the writer early (flush).
    work: Condvar,
    /// Signals a finished pass (flush).
    done: Condvar,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static SINK: OnceLock<Sink> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the queue was full, since the process started.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The writer for `tracing_subscriber::fmt`: queues each formatted event.
#[derive(Clone, Copy, Debug)]
pub struct MakeSink;

impl MakeSink {
    /// Starts the sink's thread, writing to stderr, and returns its writer.
    pub fn stderr() -> MakeSink {
        start(Box::new(std::io::stderr()), QUEUE_BYTES);
        MakeSink
    }
}

/// Starts the writing thread once (later calls keep the first).
fn start(out: Box<dyn Write + Send>, capacity: usize) {
    let mut spawn = None;
    let sink = SINK.get_or_init(|| {
        spawn = Some(out);
        Sink {
            state: Mutex::new(State {
                buf: Vec::new(),
                capacity,
                passes: 0,
                writing: false,
                hurry: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
        }
    });
    if let Some(out) = spawn {
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_loop(sink, out));
        if spawned.is_err() {
            // No thread: lines queue until full, then are counted as dropped.
            eprintln!("warning: could not start the log writer thread");
        }
    }
}

fn write_loop(sink: &'static Sink, out: Box<dyn Write + Send>) {
    let mut out = out;
    let mut spare = Vec::new();
    let mut wait = INTERVAL;
    loop {
        let mut state = sink.lock();
        if !state.hurry {
            state = sink
                .work
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.hurry = false;
        std::mem::swap(&mut state.buf, &mut spare);
        state.writing = true;
        drop(state);
        wait = if spare.is_empty() {
            (wait * 2).min(IDLE_MAX)
        } else {
            INTERVAL
        };
        if !spare.is_empty() {
            // A failed write (stderr closed) has nowhere to be reported.
            let _ = out.write_all(&spare);
            let _ = out.flush();
            spare.clear();
        }
        let mut state = sink.lock();
        state.writing = false;
        state.passes += 1;
        drop(state);
        sink.done.notify_all();
    }
}

/// Queues one line; a full queue drops it and counts the drop.
fn queue(line: &[u8]) {
    let Some(sink) = SINK.get() else {
        let _ = std::io::stderr().write_all(line);
        return;
    };
    let mut state = sink.lock();
    if state.buf.len() + line.len() <= state.capacity {
        state.buf.extend_from_slice(line);
        return;
    }
    drop(state);
    DROPPED.fetch_add(1, Ordering::Relaxed);
    crate::metrics::metrics().log_line_dropped();
}

/// Waits (at most two seconds) until every line queued so far is written.
pub fn flush() {
    let Some(sink) = SINK.get() else { return };
    let mut state = sink.lock();
    // A pass under way may have taken its buffer before our last lines.
    let target = state.passes + if state.writing { 2 } else { 1 };
    state.hurry = true;
    sink.work.notify_one();
    let _ = sink
        .done
        .wait_timeout_while(state, FLUSH_WAIT, |s| {
            if s.passes < target {
                s.hurry = true;
            }
            s.passes < target
        })
        .unwrap_or_else(|e| e.into_inner());
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
        start(Box::new(out.clone()), 1024);
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
        // The queue holds some (and the pass that stalled); the rest was dropped.
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
