//! Batched PSK lookups: every `/v1/sign` reads the PSK entry of its hostname
//! before deciding. Under load those reads are many small round trips, so
//! `serve` starts a reader that answers all lookups waiting at a moment
//! together: on SQLite a thread of its own (`lane`) runs them as prepared
//! statements inside one read transaction; on PostgreSQL one
//! `SELECT ... WHERE hostname IN (...)` answers them. The compromised-key
//! check every issuance makes goes the same way, so a request costs no
//! round trip of its own on another connection.
//!
//! Consistency is unchanged: a lookup sees the store as of its batch's
//! query, exactly as a lone query issued then would, and the issuance
//! transaction re-checks the PSK anyway (`DELETE ... WHERE psk_hash = ...`).

use super::{Engine, Store, StoreError, StoreResult, lane, psk_entry, psk_entry_from_row};
use policy::PskEntry;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use std::collections::{HashMap, HashSet};
use tokio::sync::{mpsc, oneshot};

/// Most lookups in one query.
pub const MAX_BATCH: usize = 256;

/// A request waiting for the reader, with its reply.
enum Lookup {
    /// The PSK entry of a hostname.
    Psk(String, oneshot::Sender<StoreResult<Option<PskEntry>>>),
    /// Whether a public key (SHA-256) was revoked as compromised.
    KeyCompromised(Vec<u8>, oneshot::Sender<StoreResult<bool>>),
}

/// Handle to the reader task.
#[derive(Debug, Clone)]
pub(super) struct Reader {
    tx: mpsc::Sender<Lookup>,
}

impl Store {
    /// Starts batching PSK lookups (see the module doc). Call once, from `serve`.
    pub fn start_batched_reads(&self) {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        match (self.engine, &self.sqlite_file) {
            (Engine::Sqlite, Some(path)) => {
                if self.reader.set(Reader { tx }).is_ok() {
                    let path = path.clone();
                    lane::spawn("store-reader", self, path, rx, MAX_BATCH, |lane, batch| {
                        let result = lookup_batch_sqlite(lane, batch);
                        if result.is_err() {
                            lane.reset();
                        }
                        answer(batch, result);
                    });
                }
            }
            // An in-memory database per connection: lookups stay on the pool.
            (Engine::Sqlite, None) => {}
            (Engine::Postgres, _) => {
                if self.reader.set(Reader { tx }).is_ok() {
                    tokio::spawn(run(self.clone(), rx));
                }
            }
        }
    }

    async fn ask<T>(
        r: &Reader,
        lookup: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Lookup,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        if r.tx.send(lookup(reply)).await.is_err() {
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
        Self::ask(r, |reply| Lookup::Psk(hostname.to_owned(), reply)).await
    }

    pub(super) async fn key_compromised_grouped(
        &self,
        r: &Reader,
        public_key_sha256: &[u8],
    ) -> StoreResult<bool> {
        Self::ask(r, |reply| {
            Lookup::KeyCompromised(public_key_sha256.to_vec(), reply)
        })
        .await
    }
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

/// The lookups of a batch on the SQLite lane, in one read transaction (one
/// snapshot, one shared lock for all of them).
fn lookup_batch_sqlite(lane: &mut lane::Lane, batch: &[Lookup]) -> StoreResult<Found> {
    use rusqlite::OptionalExtension;
    let (names, keys) = wanted(batch);
    let mut found = Found {
        psks: HashMap::with_capacity(names.len()),
        compromised: HashSet::new(),
    };
    let tx = lane.conn()?.transaction()?;
    {
        let mut psk = tx.prepare_cached(
            "SELECT psk_hash, allowed_sans, expires_at FROM psks WHERE hostname = ?1",
        )?;
        for name in names {
            let row = psk
                .query_row([name], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?, r.get(2)?))
                })
                .optional()?;
            if let Some((hash, sans, expires_at)) = row {
                let entry = psk_entry(name.to_owned(), &hash, &sans, expires_at)?;
                found.psks.insert(name.to_owned(), entry);
            }
        }
        // The partial index certificates_compromised_keys answers this.
        let mut compromised = tx.prepare_cached(
            "SELECT 1 FROM certificates WHERE revocation_reason = 'keyCompromise' \
             AND public_key_sha256 = ?1",
        )?;
        for key in keys {
            if compromised.exists([key])? {
                found.compromised.insert(key.to_vec());
            }
        }
    }
    tx.commit()?;
    Ok(found)
}

/// The lookups of a batch on PostgreSQL: one query for every distinct
/// hostname, one for the keys.
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
    // Each list travels as one JSON array: one statement shape, one round trip.
    if !names.is_empty() {
        // `= ANY (ARRAY(...))`, not `IN (SELECT ...)`: an index scan of the
        // primary key, not a hash join over every live PSK (see the writer).
        let sql = "SELECT hostname, psk_hash, allowed_sans, expires_at FROM psks \
                   WHERE hostname = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))";
        let q = sqlx::query(sql).bind(serde_json::to_string(&names).expect("strings serialise"));
        for row in &q.fetch_all(&mut **conn).await? {
            let host: String = row.try_get("hostname")?;
            found.psks.insert(host, psk_entry_from_row(row)?);
        }
    }
    if !keys.is_empty() {
        // The partial index certificates_compromised_keys answers this.
        let sql = "SELECT DISTINCT public_key_sha256 FROM certificates \
                   WHERE revocation_reason = 'keyCompromise' \
                   AND public_key_sha256 IN \
                       (SELECT decode(jsonb_array_elements_text($1::jsonb), 'hex'))";
        let q = sqlx::query(sql).bind(serde_json::to_string(&keys).expect("strings serialise"));
        for row in &q.fetch_all(&mut **conn).await? {
            found.compromised.insert(row.try_get("public_key_sha256")?);
        }
    }
    Ok(found)
}
