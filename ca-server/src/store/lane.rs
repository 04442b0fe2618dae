//! SQLite's hot path without sqlx.
//!
//! Why: through sqlx every statement is a hand-off to the connection's
//! worker thread and back, and a batch travelled as one JSON parameter that
//! SQLite parsed again for each column. The profile of a keep-alive load
//! showed a third of the server's CPU there. Here the SQLite connections
//! are plain ones (rusqlite, on the same libsqlite3 that sqlx links) with
//! the pool's settings, running prepared statements with direct binds:
//!
//! - the group-commit writer is a lane: an OS thread that owns one
//!   connection and runs each batch's transaction (one wake-up per batch
//!   instead of several per statement). A request alone in flight that
//!   finds it idle (nothing queued, no batch running, the write lock free)
//!   runs its transaction of one on the lane's connection instead
//!   (`writer::commit_inline`): the fsync then blocks that runtime worker,
//!   but only while no other issuance is in flight;
//! - the server's PSK and compromised-key reads run inline on the calling
//!   thread, on a few kept connections ([`Readers`]).
//!
//! Everything else (migrations, the CLI, revocation, CRLs, PostgreSQL)
//! stays on sqlx. Durability is the same: the writer runs
//! `synchronous = FULL` and a request is answered only after the commit
//! that holds its row.

use super::{Store, StoreError, StoreResult};
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// One lane's connection, opened on first use and again after an error.
#[derive(Debug)]
pub(super) struct Lane {
    store: Store,
    path: PathBuf,
    conn: Option<Connection>,
    /// The checkpointer to tell after each commit.
    checkpoints: super::checkpoint::Hint,
}

impl Lane {
    /// The connection, unless the store is known to be down.
    pub(super) fn conn(&mut self) -> StoreResult<&mut Connection> {
        self.store.pool()?; // fails at once while the store is known to be down
        match self.conn {
            Some(ref mut conn) => Ok(conn),
            None => Ok(self
                .conn
                .insert(open(&self.path, WRITE_BUSY_TIMEOUT, WRITER_PRAGMAS)?)),
        }
    }

    /// Called after each commit: lets the checkpointer copy the WAL into
    /// the database file off this thread (`checkpoint`).
    pub(super) fn committed(&self) {
        self.checkpoints.committed();
    }

    /// Drops the connection after an error: the next batch opens a fresh one.
    pub(super) fn reset(&mut self) {
        self.conn = None;
    }
}

/// How long the writer waits for SQLite's write lock (as the pool does).
pub(super) const WRITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an inline read waits when SQLite answers "busy", which in WAL
/// mode is rare (another connection recovering the WAL after a crash). It
/// blocks a runtime worker meanwhile, so it is kept short: past it the
/// request gets a 503 (`store_unavailable`) and its client retries.
const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// Every connection: WAL for concurrent readers; FULL so a commit survives
/// power loss (as the pool's connections).
const BASE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;";

/// The writer's connection. A 64 MiB page cache: random 128-bit serials and
/// key hashes put every insert on a random index page, and with SQLite's
/// default 2 MiB a big store read most of them back from the file
/// (BENCHMARKS.md, issue 22). The WAL is copied back by the checkpointer
/// thread; the writer checkpoints itself only past 64 MiB of WAL, should that
/// thread fall behind, and a WAL that grew is cut back to 64 MiB when it
/// starts over.
const WRITER_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
     PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 16384; \
     PRAGMA journal_size_limit = 67108864;";

/// The inline readers' connections (one per runtime worker at most): they
/// read the PSK table and the compromised-key index, so 16 MiB each.
const READER_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA cache_size = -16384;";

/// The checkpointer's connection (`checkpoint`).
pub(super) fn open_for_checkpoints(path: &std::path::Path) -> rusqlite::Result<Connection> {
    open(path, READ_BUSY_TIMEOUT, BASE_PRAGMAS)
}

/// Opens a connection with the settings the pool's connections get, and
/// `pragmas`.
fn open(
    path: &std::path::Path,
    busy_timeout: Duration,
    pragmas: &str,
) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    // The file exists (migrations ran); never create one here.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    // Each PRAGMA may answer with a row; execute_batch ignores it.
    conn.execute_batch(pragmas)?;
    Ok(conn)
}

impl From<rusqlite::Error> for StoreError {
    /// Counted like every sqlx error (see `From<sqlx::Error>`).
    fn from(e: rusqlite::Error) -> StoreError {
        crate::metrics::metrics().store_error("database");
        StoreError::Unavailable(Box::new(e))
    }
}

/// A lane's connection, shared by its thread and the callers that commit
/// inline when it is idle (`writer`); `None` once the lane has stopped.
pub(super) type Shared = std::sync::Arc<std::sync::Mutex<Option<Lane>>>;

/// Locks a lane, poisoned or not: a transaction cut off by a panic rolled
/// back when it was dropped.
pub(super) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Option<Lane>> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a lane named `name` that takes batches of up to `max` items from
/// `rx` and hands each to `work`, until the store closes. `work` answers
/// every item it is given and calls [`Lane::committed`] after its commits,
/// which wakes the lane's checkpointer thread (`checkpoint`). Returns the
/// lane, which callers may lock to run a batch of their own.
pub(super) fn spawn<T: Send + 'static>(
    name: &str,
    store: &Store,
    path: PathBuf,
    mut rx: mpsc::Receiver<T>,
    max: usize,
    mut work: impl FnMut(&mut Lane, &mut Vec<T>) + Send + 'static,
) -> Shared {
    // The queue and the closing signal are tokio channels; the thread waits
    // on them with the runtime's handle (no I/O, so any thread may).
    let runtime = tokio::runtime::Handle::current();
    let mut closing = store.closing.subscribe();
    let (hint, checkpointer) =
        super::checkpoint::spawn(path.clone()).expect("starting a store thread");
    let shared: Shared = std::sync::Arc::new(std::sync::Mutex::new(Some(Lane {
        store: store.clone(),
        path,
        conn: None,
        checkpoints: hint,
    })));
    let lane = shared.clone();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let mut batch = Vec::with_capacity(max);
            while runtime.block_on(super::next_batch(&mut rx, &mut closing, &mut batch, max)) {
                if let Some(lane) = lock(&lane).as_mut() {
                    work(lane, &mut batch);
                }
                batch.clear();
            }
            // Dropping the lane closes the connection (and ends the
            // checkpointer) before `Store::close` closes the pool, so the
            // last connection to go checkpoints the WAL.
            lock(&lane).take();
        })
        .expect("starting a store thread");
    // The lane first: joining it drops the hint the checkpointer waits on.
    store
        .lanes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend([thread, checkpointer]);
    shared
}

/// The connections the server's SQLite reads run on, inline on the
/// calling thread: one per thread reading at that moment (at most the
/// runtime's worker threads), kept for the next read.
pub(super) struct Readers {
    store: Store,
    path: PathBuf,
    /// Idle connections; `None` once the store is closing.
    idle: std::sync::Mutex<Option<Vec<Connection>>>,
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Readers {
    pub(super) fn new(store: &Store, path: PathBuf) -> Readers {
        Readers {
            store: store.clone(),
            path,
            idle: std::sync::Mutex::new(Some(Vec::new())),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Option<Vec<Connection>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `read` on an idle connection (or a new one). A connection that
    /// saw an error is dropped, so the next read opens a fresh one.
    pub(super) fn run<T>(
        &self,
        read: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.store.pool()?; // fails at once while the store is known to be down
        let taken = match self.idle().as_mut() {
            Some(idle) => idle.pop(),
            None => return Err(StoreError::Down { for_secs: 0 }), // closing
        };
        let conn = match taken {
            Some(conn) => conn,
            None => open(&self.path, READ_BUSY_TIMEOUT, READER_PRAGMAS)?,
        };
        let result = read(&conn);
        if result.is_ok()
            && let Some(idle) = self.idle().as_mut()
        {
            idle.push(conn);
        }
        result
    }

    /// Closes the idle connections; reads from now on fail as `Down`.
    fn close(&self) {
        self.idle().take();
    }
}

impl Store {
    /// Waits for the lanes to finish their batch and close their connections.
    pub(super) async fn join_lanes(&self) {
        if let Some(super::reader::Reader::Inline(readers)) = self.reader.get() {
            readers.close();
        }
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
