//! SQLite's hot path on threads of its own.
//!
//! Why: through sqlx every statement is a hand-off to the connection's
//! worker thread and back, and a batch travelled as one JSON parameter that
//! SQLite parsed again for each column. The profile of a keep-alive load
//! showed a third of the server's CPU there. A lane is an OS thread that
//! owns one plain SQLite connection (rusqlite, on the same libsqlite3 that
//! sqlx links) and runs a whole batch (the group-commit transaction, or the
//! lookups of the batched reader) with prepared statements and direct
//! binds: one wake-up per batch instead of several per statement.
//!
//! Everything else (migrations, the CLI, revocation, CRLs, PostgreSQL) stays
//! on sqlx; the lanes only take over the two batching queues on a SQLite
//! file. Durability is the same: the connection runs `synchronous = FULL`
//! and answers a request only after the commit that holds its row.

use super::{Store, StoreError, StoreResult};
use rusqlite::Connection;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// One lane's connection, opened on first use and again after an error.
pub(super) struct Lane {
    store: Store,
    path: PathBuf,
    conn: Option<Connection>,
}

impl Lane {
    /// The connection, unless the store is known to be down.
    pub(super) fn conn(&mut self) -> StoreResult<&mut Connection> {
        self.store.pool()?; // fails at once while the store is known to be down
        match self.conn {
            Some(ref mut conn) => Ok(conn),
            None => Ok(self.conn.insert(open(&self.path)?)),
        }
    }

    /// Drops the connection after an error: the next batch opens a fresh one.
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }
}

/// Opens a connection with the settings the pool's connections get.
fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    // The file exists (migrations ran); never create one here.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Each PRAGMA may answer with a row; execute_batch ignores it.
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    Ok(conn)
}

impl From<rusqlite::Error> for StoreError {
    /// Counted like every sqlx error (see `From<sqlx::Error>`).
    fn from(e: rusqlite::Error) -> StoreError {
        crate::metrics::metrics().store_error("database");
        StoreError::Unavailable(Box::new(e))
    }
}

/// Starts a lane named `name` that takes batches of up to `max` items from
/// `rx` and hands each to `work`, until the store closes. `work` answers
/// every item it is given.
pub(super) fn spawn<T: Send + 'static>(
    name: &str,
    store: &Store,
    path: PathBuf,
    mut rx: mpsc::Receiver<T>,
    max: usize,
    mut work: impl FnMut(&mut Lane, &mut Vec<T>) + Send + 'static,
) {
    // The queue and the closing signal are tokio channels; the thread waits
    // on them with the runtime's handle (no I/O, so any thread may).
    let runtime = tokio::runtime::Handle::current();
    let mut closing = store.closing.subscribe();
    let mut lane = Lane {
        store: store.clone(),
        path,
        conn: None,
    };
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut batch = Vec::with_capacity(max);
            while runtime.block_on(super::next_batch(&mut rx, &mut closing, &mut batch, max)) {
                work(&mut lane, &mut batch);
                batch.clear();
            }
            // Returning closes the connection before `Store::close` closes
            // the pool, so the last connection to go checkpoints the WAL.
        })
        .expect("starting a store thread");
    store
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(thread);
}

impl Store {
    /// Waits for the lanes to finish their batch and close their connections.
    pub(super) async fn join_lanes(&self) {
        let threads: Vec<_> =
            std::mem::take(&mut *self.lanes.lock().unwrap_or_else(|e| e.into_inner()));
        if threads.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
