//! Batched PSK lookups: every `/v1/sign` reads the PSK entry of its hostname
//! before deciding. Under load those reads are many small round trips (on
//! SQLite each one is a hand-off to the connection's worker thread and
//! back), so `serve` starts a reader task that answers all lookups waiting
//! at a moment with one `SELECT ... WHERE hostname IN (...)`.
//!
//! Consistency is unchanged: a lookup sees the store as of its batch's
//! query, exactly as a lone query issued then would, and the issuance
//! transaction re-checks the PSK anyway (`DELETE ... WHERE psk_hash = ...`).

use super::{Engine, Store, StoreError, StoreResult, psk_entry_from_row};
use policy::PskEntry;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// Most lookups in one query.
pub const MAX_BATCH: usize = 256;

struct Lookup {
    hostname: String,
    reply: oneshot::Sender<StoreResult<Option<PskEntry>>>,
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
        if self.reader.set(Reader { tx }).is_ok() {
            tokio::spawn(run(self.clone(), rx));
        }
    }

    pub(super) async fn get_psk_grouped(
        &self,
        r: &Reader,
        hostname: &str,
    ) -> StoreResult<Option<PskEntry>> {
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            hostname: hostname.to_owned(),
            reply,
        };
        if r.tx.send(lookup).await.is_err() {
            return Err(StoreError::Down { for_secs: 0 });
        }
        answer
            .await
            .unwrap_or(Err(StoreError::Down { for_secs: 0 }))
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Lookup>) {
    let mut batch: Vec<Lookup> = Vec::with_capacity(MAX_BATCH);
    // Its own connection, kept (see the writer).
    let mut conn: Option<PoolConnection<Any>> = None;
    let mut closing = store.closing.subscribe();
    loop {
        let first = tokio::select! {
            next = rx.recv() => match next {
                Some(first) => first,
                None => break,
            },
            // Returning drops `conn`, back to the pool that is closing.
            _ = closing.wait_for(|closed| *closed) => break,
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(l) => batch.push(l),
                Err(_) => break,
            }
        }
        let result = lookup_batch(&store, &mut conn, &batch).await;
        if result.is_err() {
            conn = None;
        }
        match result {
            Ok(found) => {
                // Several lookups of one name each get the entry.
                for l in batch.drain(..) {
                    let _ = l.reply.send(Ok(found.get(&l.hostname).cloned()));
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
                    let err = first.take().unwrap_or_else(|| {
                        StoreError::Unavailable(sqlx::Error::Protocol(shown.clone()))
                    });
                    let _ = l.reply.send(Err(err));
                }
            }
        }
    }
}

/// One query for every distinct hostname of the batch.
async fn lookup_batch(
    store: &Store,
    conn: &mut Option<PoolConnection<Any>>,
    batch: &[Lookup],
) -> StoreResult<HashMap<String, PskEntry>> {
    store.pool()?; // fails at once while the store is known to be down
    if conn.is_none() {
        *conn = Some(store.conn().await?);
    }
    let conn = conn.as_mut().expect("connected above");
    let mut names: Vec<&str> = batch.iter().map(|l| l.hostname.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    // The names travel as one JSON array: one statement shape, one round trip.
    let sql = match store.engine() {
        Engine::Sqlite => {
            "SELECT hostname, psk_hash, allowed_sans, expires_at FROM psks \
             WHERE hostname IN (SELECT value FROM json_each(?1))"
        }
        Engine::Postgres => {
            "SELECT hostname, psk_hash, allowed_sans, expires_at FROM psks \
             WHERE hostname IN (SELECT jsonb_array_elements_text($1::jsonb))"
        }
    };
    let q = sqlx::query(sql).bind(serde_json::to_string(&names).expect("strings serialise"));
    let rows = q.fetch_all(&mut **conn).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in &rows {
        let host: String = row.try_get("hostname")?;
        found.insert(host, psk_entry_from_row(row)?);
    }
    Ok(found)
}
