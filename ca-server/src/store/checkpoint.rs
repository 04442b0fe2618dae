//! WAL checkpoints off the writer thread.
//!
//! Why: with SQLite's default (`wal_autocheckpoint = 1000` pages) the
//! connection whose commit pushes the WAL past 1000 pages copies the WAL
//! into the database file and fsyncs it, inside that commit. On the
//! group-commit writer that stalled every request of the batch, and the
//! stall grew with the store: on a store of 1 M certificates with random
//! serials each batch dirties pages all over the indexes, and the profile
//! put ~15% of the writer's time in checkpoints (BENCHMARKS.md, issue 22).
//!
//! Here a thread of its own runs `wal_checkpoint(PASSIVE)` on its own
//! connection after commits, at most every [`MIN_INTERVAL`]. PASSIVE takes
//! no write lock: the writer keeps committing meanwhile, and once the WAL is
//! fully copied the writer's next transaction starts it over from the top,
//! so the WAL stays bounded. The writer keeps a large automatic threshold
//! as a backstop should this thread fall behind (`lane::WRITER_PRAGMAS`).

use super::lane::open_for_checkpoints;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// At most one checkpoint per this long: each one fsyncs the database file.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Tells the checkpointer that a commit happened. Dropping the hint ends
/// the checkpointer thread (the last connection to close checkpoints).
#[derive(Debug)]
pub(super) struct Hint(SyncSender<()>);

impl Hint {
    /// Never blocks: a hint already waiting covers this commit too.
    pub(super) fn committed(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// Starts the checkpointer for the SQLite file at `path`; returns the hint
/// the writer gives after each commit and the thread to join on close.
pub(super) fn spawn(path: PathBuf) -> std::io::Result<(Hint, std::thread::JoinHandle<()>)> {
    let (tx, rx) = sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".to_owned())
        .spawn(move || run(&path, rx))?;
    Ok((Hint(tx), thread))
}

fn run(path: &std::path::Path, hints: Receiver<()>) {
    let mut conn = None;
    let mut last = Instant::now() - MIN_INTERVAL;
    // recv fails once the writer (the only sender) is gone.
    while hints.recv().is_ok() {
        let wait = MIN_INTERVAL.saturating_sub(last.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        // Commits during the sleep are covered by this checkpoint.
        let _ = hints.try_recv();
        last = Instant::now();
        if let Err(e) = checkpoint(&mut conn, path) {
            // The writer's own automatic checkpoint still bounds the WAL.
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
            conn = None;
        }
    }
}

/// The checkpointer's connection, and the database file it flushes.
struct Conn {
    sqlite: rusqlite::Connection,
    file: std::fs::File,
}

fn checkpoint(conn: &mut Option<Conn>, path: &std::path::Path) -> std::io::Result<()> {
    let conn = match conn {
        Some(c) => c,
        None => conn.insert(Conn {
            sqlite: open_for_checkpoints(path).map_err(std::io::Error::other)?,
            file: std::fs::File::open(path)?,
        }),
    };
    // Answers (busy, frames in the WAL, frames copied so far); busy only
    // means another connection was checkpointing at that moment, and then
    // nothing was copied.
    let copied: i64 = conn
        .sqlite
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(2))
        .map_err(std::io::Error::other)?;
    // SQLite fsyncs the database file only when a checkpoint ends at the
    // WAL's current end. Under steady load this thread never does (the
    // writer commits while it copies), so the copied pages stayed dirty
    // until the writer's backstop checkpoint completed one and its fsync
    // wrote them all inside a commit: 80-100 ms stalls every ~2.5 s on a
    // store of 1 M certificates (BENCHMARKS.md, issue 22). Flushing here
    // after every copy leaves that fsync little to write. (When SQLite has
    // just synced, this one finds the file clean.)
    if copied > 0 {
        conn.file.sync_data()?;
    }
    Ok(())
}
