//! The server's PSK lookups: every `/v1/sign` reads the PSK entry of its
//! hostname, and whether its key was revoked as compromised, before deciding.
//!
//! On a SQLite file these reads run inline, on the calling worker thread,
//! on one of a few plain SQLite connections (`lane::Readers`): a prepared
//! point query on a cached page costs microseconds, less than handing it to
//! another thread and being woken for the answer (measured: the batching
//! reader thread this replaced cost 8–11 % of server CPU plus the wake-ups).
//! WAL readers never wait for the writer.
//!
//! On PostgreSQL, where each query is a network round trip, a task answers
//! all lookups waiting at a moment together in one query (`LOOKUP_PG`: the
//! PSK rows of every hostname asked, then the asked keys revoked as
//! compromised).
//!
//! Consistency is unchanged: a lookup sees the store as of its query (or its
//! batch's query), exactly as a lone query issued then would, and the
//! issuance transaction re-checks the PSK anyway
//! (`DELETE ... WHERE psk_hash = ...`).

use super::{Engine, Store, StoreError, StoreResult, lane, psk_entry, psk_entry_from_row};
use policy::PskEntry;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most lookups in one query.
pub const MAX_BATCH: usize = 256;

/// A request waiting for the reader, with its reply.
pub(super) enum Lookup {
    /// The PSK entry of a hostname.
    Psk(String, oneshot::Sender<StoreResult<Option<PskEntry>>>),
    /// Whether a public key (SHA-256) was revoked as compromised.
    KeyCompromised(Vec<u8>, oneshot::Sender<StoreResult<bool>>),
}

/// How the server's lookups run.
#[derive(Debug, Clone)]
pub(super) enum Reader {
    /// PostgreSQL: through the batching task.
    Batched(mpsc::Sender<Lookup>),
    /// A SQLite file: inline, on the caller's thread (see the module doc).
    Inline(Arc<lane::Readers>),
}

impl Store {
    /// Starts the server's way of reading PSKs (see the module doc). Call
    /// once, from `serve`.
    pub fn start_batched_reads(&self) {
        match (self.engine, &self.sqlite_file) {
            (Engine::Sqlite, Some(path)) => {
                let readers = lane::Readers::new(self, path.clone());
                let _ = self.reader.set(Reader::Inline(Arc::new(readers)));
            }
            // An in-memory database per connection: lookups stay on the pool.
            (Engine::Sqlite, None) => {}
            (Engine::Postgres, _) => {
                let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
                if self.reader.set(Reader::Batched(tx)).is_ok() {
                    tokio::spawn(run(self.clone(), rx));
                }
            }
        }
    }

    async fn ask<T>(
        tx: &mpsc::Sender<Lookup>,
        lookup: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Lookup,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        if tx.send(lookup(reply)).await.is_err() {
            return Err(StoreError::Down { for_secs: 0 });
        }
        answer
            .await
            .unwrap_or(Err(StoreError::Down { for_secs: 0 }))
    }

    pub(super) async fn get_psk_grouped(
        &self,
        r: &Reader,
        hostname: &str,
    ) -> StoreResult<Option<PskEntry>> {
        match r {
            Reader::Batched(tx) => {
                Self::ask(tx, |reply| Lookup::Psk(hostname.to_owned(), reply)).await
            }
            Reader::Inline(readers) => readers.run(|conn| psk_sqlite(conn, hostname)),
        }
    }

    pub(super) async fn key_compromised_grouped(
        &self,
        r: &Reader,
        public_key_sha256: &[u8],
    ) -> StoreResult<bool> {
        match r {
            Reader::Batched(tx) => {
                Self::ask(tx, |reply| {
                    Lookup::KeyCompromised(public_key_sha256.to_vec(), reply)
                })
                .await
            }
            Reader::Inline(readers) => {
                readers.run(|conn| key_compromised_sqlite(conn, public_key_sha256))
            }
        }
    }
}

/// The PSK entry of `hostname`, on a SQLite reader connection.
fn psk_sqlite(conn: &rusqlite::Connection, hostname: &str) -> StoreResult<Option<PskEntry>> {
    use rusqlite::OptionalExtension;
    let row = conn
        .prepare_cached("SELECT psk_hash, allowed_sans, expires_at FROM psks WHERE hostname = ?1")?
        .query_row([hostname], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })
        .optional()?;
    row.map(|(hash, sans, expires_at)| psk_entry(hostname.to_owned(), &hash, &sans, expires_at))
        .transpose()
}

/// Whether a public key was revoked as compromised, on a SQLite reader
/// connection. The partial index certificates_compromised_keys answers it.
fn key_compromised_sqlite(conn: &rusqlite::Connection, key: &[u8]) -> StoreResult<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM certificates WHERE revocation_reason = 'keyCompromise' \
             AND public_key_sha256 = ?1",
        )?
        .exists([key])?)
}

/// The PostgreSQL reader task.
async fn run(store: Store, mut rx: mpsc::Receiver<Lookup>) {
    let mut batch: Vec<Lookup> = Vec::with_capacity(MAX_BATCH);
    // Its own connection, kept (see the writer).
    let mut conn: Option<PoolConnection<Any>> = None;
    let mut closing = store.closing.subscribe();
    // Returning drops `conn`, back to the pool that is closing.
    while super::next_batch(&mut rx, &mut closing, &mut batch, MAX_BATCH).await {
        let result = lookup_batch(&store, &mut conn, &batch).await;
        if result.is_err() {
            conn = None; // a fresh connection for the next batch
        }
        answer(&mut batch, result);
    }
}

/// Answers every lookup of a batch.
fn answer(batch: &mut Vec<Lookup>, result: StoreResult<Found>) {
    match result {
        Ok(found) => {
            // Several lookups of one name each get the entry.
            for l in batch.drain(..) {
                match l {
                    Lookup::Psk(host, reply) => {
                        let _ = reply.send(Ok(found.psks.get(&host).cloned()));
                    }
                    Lookup::KeyCompromised(key, reply) => {
                        let _ = reply.send(Ok(found.compromised.contains(&key)));
                    }
                }
            }
        }
        Err(e) => {
            // The cause (store down, a corrupt row) is shared by the
            // batch: the first caller gets the error itself, the others
            // its message, mapped the same way (503) by the HTTP layer.
            let shown = e.to_string();
            tracing::debug!(error = %shown, size = batch.len(), "batched PSK lookup failed");
            let mut first = Some(e);
            for l in batch.drain(..) {
                let err = first
                    .take()
                    .unwrap_or_else(|| StoreError::Unavailable(shown.clone().into()));
                let _ = match l {
                    Lookup::Psk(_, reply) => reply.send(Err(err)).is_ok(),
                    Lookup::KeyCompromised(_, reply) => reply.send(Err(err)).is_ok(),
                };
            }
        }
    }
}

/// What one batch found.
struct Found {
    psks: HashMap<String, PskEntry>,
    compromised: HashSet<Vec<u8>>,
}

/// The distinct hostnames and public keys a batch asks about.
fn wanted(batch: &[Lookup]) -> (Vec<&str>, Vec<&[u8]>) {
    let mut names: Vec<&str> = Vec::new();
    let mut keys: Vec<&[u8]> = Vec::new();
    for l in batch {
        match l {
            Lookup::Psk(host, _) => names.push(host),
            Lookup::KeyCompromised(key, _) => keys.push(key),
        }
    }
    names.sort_unstable();
    names.dedup();
    keys.sort_unstable();
    keys.dedup();
    (names, keys)
}

/// A batch's lookups on PostgreSQL: the PSK rows of the hostnames ($1),
/// then the keys ($2) revoked as compromised. `= ANY (ARRAY(...))`, not
/// `IN (SELECT ...)`: an index scan of the primary key, not a hash join over
/// every live PSK (see the writer); the partial index
/// certificates_compromised_keys answers the second part.
const LOOKUP_PG: &str = "SELECT hostname, psk_hash, allowed_sans, expires_at, \
     NULL::bytea AS public_key_sha256 FROM psks \
     WHERE hostname = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb))) \
     UNION ALL \
     SELECT DISTINCT NULL::text, NULL::bytea, NULL::text, NULL::bigint, public_key_sha256 \
     FROM certificates \
     WHERE revocation_reason = 'keyCompromise' \
     AND public_key_sha256 IN (SELECT decode(jsonb_array_elements_text($2::jsonb), 'hex'))";

/// The lookups of a batch on PostgreSQL, in one query.
async fn lookup_batch(
    store: &Store,
    conn: &mut Option<PoolConnection<Any>>,
    batch: &[Lookup],
) -> StoreResult<Found> {
    store.pool()?; // fails at once while the store is known to be down
    if conn.is_none() {
        *conn = Some(store.conn().await?);
    }
    let conn = conn.as_mut().expect("connected above");
    let (names, keys) = wanted(batch);
    let keys: Vec<String> = keys.into_iter().map(hex::encode).collect();
    let mut found = Found {
        psks: HashMap::with_capacity(names.len()),
        compromised: HashSet::new(),
    };
    // Both lists travel as JSON arrays in one statement: one shape, one
    // round trip. PSK rows carry a hostname; compromised-key rows only the key.
    let rows = sqlx::query(LOOKUP_PG)
        .bind(serde_json::to_string(&names).expect("strings serialise"))
        .bind(serde_json::to_string(&keys).expect("strings serialise"))
        .fetch_all(&mut **conn)
        .await?;
    for row in &rows {
        match row.try_get::<Option<String>, _>("hostname")? {
            Some(host) => {
                found.psks.insert(host, psk_entry_from_row(row)?);
            }
            None => {
                found.compromised.insert(row.try_get("public_key_sha256")?);
            }
        }
    }
    Ok(found)
}
