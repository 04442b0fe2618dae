//! Group commit: one writer task per server that records the issuances of
//! every request waiting at that moment in a single transaction.
//!
//! Why: each certificate's record must be durable before the certificate is
//! handed out, and a durable commit costs an fsync (SQLite `synchronous=FULL`,
//! PostgreSQL WAL flush). One commit per certificate caps issuance at the
//! disk's fsync rate; one commit per batch does not. Requests are answered
//! only after the commit that holds their row, so nothing leaves unrecorded.
//!
//! A batch is three statements whatever its size: one `DELETE ... RETURNING`
//! spends the PSKs still live, one multi-row INSERT records their
//! certificates, one their audit rows. Requests whose PSK did not come back
//! (spent by a concurrent request, replaced, expired) get `PskGone`, exactly
//! as in the one-transaction path; of two requests for the same PSK in one
//! batch only the first wins. If a batch fails as a whole, each of its
//! requests is retried in a transaction of its own, so one bad row cannot
//! fail its neighbours.

use super::{AuditEvent, CertRecord, Engine, Issuance, Store, StoreError, StoreResult};
use policy::PskHash;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AssertSqlSafe, Row};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// Most issuances in one transaction. Bounded by bind parameters per
/// statement (13 per certificate; SQLite allows 32766, PostgreSQL 65535).
pub const MAX_BATCH: usize = 256;

/// One queued issuance.
struct Job {
    psk_hash: PskHash,
    now: i64,
    cert: CertRecord,
    audit: AuditEvent,
    reply: oneshot::Sender<StoreResult<()>>,
}

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("serial", &self.cert.serial)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts group commit: from now on [`Store::record_issuance`] goes
    /// through one writer task. Call once, from `serve`.
    pub fn start_group_commit(&self) {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        if self.writer.set(Writer { tx }).is_ok() {
            tokio::spawn(run(self.clone(), rx));
        }
    }

    /// Queues an issuance for the writer and waits for its commit.
    pub(super) async fn record_issuance_grouped(
        &self,
        w: &Writer,
        i: &Issuance<'_>,
    ) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            psk_hash: i.psk_hash,
            now: i.now,
            cert: i.cert.clone(),
            audit: i.audit.clone(),
            reply,
        };
        if w.tx.send(job).await.is_err() {
            return self.record_issuance_single(i).await;
        }
        match answer.await {
            Ok(result) => result,
            // The writer went away mid-batch (shutdown): nothing is known to be
            // committed for this request, and the PSK decides on a retry.
            Err(_) => Err(StoreError::Down { for_secs: 0 }),
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer keeps its connection: on SQLite its page cache stays valid
    // (it is the only writer), and no batch waits for the pool.
    let mut conn: Option<PoolConnection<Any>> = None;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = commit_batch(&store, &mut conn, &batch).await;
        if result.is_err() {
            conn = None; // a fresh connection for the next batch
        }
        match result {
            Ok(won) => {
                for (job, won) in batch.drain(..).zip(won) {
                    let _ = job.reply.send(if won {
                        Ok(())
                    } else {
                        Err(StoreError::PskGone)
                    });
                }
            }
            Err(e) if batch.len() == 1 => {
                let job = batch.pop().expect("one job");
                let _ = job.reply.send(Err(e));
            }
            Err(e) => {
                tracing::warn!(error = %e, size = batch.len(), "group commit failed; recording one by one");
                for job in batch.drain(..) {
                    let result = store
                        .record_issuance_single(&Issuance {
                            psk_hash: job.psk_hash,
                            now: job.now,
                            cert: &job.cert,
                            audit: &job.audit,
                        })
                        .await;
                    let _ = job.reply.send(result);
                }
            }
        }
    }
}

/// Records a batch in one transaction; returns, per job, whether it won its PSK.
async fn commit_batch(
    store: &Store,
    conn: &mut Option<PoolConnection<Any>>,
    batch: &[Job],
) -> StoreResult<Vec<bool>> {
    store.pool()?; // fails at once while the store is known to be down
    if conn.is_none() {
        *conn = Some(store.conn().await?);
    }
    let conn = conn.as_mut().expect("connected above");
    let mut tx = sqlx::Connection::begin(&mut **conn).await?;

    // 1. Spend every PSK that is still live at its request's `now`. The
    // condition list is padded to a power of two (repeating the last one
    // changes nothing) so a few statement shapes stay prepared.
    let ph = Placeholders(store.engine());
    let padded = batch.len().next_power_of_two();
    let mut sql = String::from("DELETE FROM psks WHERE ");
    for i in 0..padded {
        if i > 0 {
            sql.push_str(" OR ");
        }
        let p = 3 * i;
        sql.push_str(&format!(
            "(hostname = {} AND psk_hash = {} AND expires_at > {})",
            ph.at(p + 1),
            ph.at(p + 2),
            ph.at(p + 3)
        ));
    }
    sql.push_str(" RETURNING hostname, psk_hash");
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for i in 0..padded {
        let job = &batch[i.min(batch.len() - 1)];
        q = q
            .bind(job.cert.hostname.clone())
            .bind(job.psk_hash.0.to_vec())
            .bind(job.now);
    }
    let rows = q.fetch_all(&mut *tx).await?;
    let mut spent: HashMap<(String, Vec<u8>), ()> = HashMap::with_capacity(rows.len());
    for row in rows {
        spent.insert((row.try_get("hostname")?, row.try_get("psk_hash")?), ());
    }
    // The first request for a spent PSK wins it; any other in the batch lost.
    let won: Vec<bool> = batch
        .iter()
        .map(|job| {
            spent
                .remove(&(job.cert.hostname.clone(), job.psk_hash.0.to_vec()))
                .is_some()
        })
        .collect();
    let winners: Vec<&Job> = batch
        .iter()
        .zip(&won)
        .filter(|(_, w)| **w)
        .map(|(j, _)| j)
        .collect();
    if winners.is_empty() {
        tx.rollback().await?;
        return Ok(won);
    }

    // 2. and 3. Their certificates and audit rows, in chunks of a
    // power-of-two size, for the same reason.
    let mut rest = &winners[..];
    while !rest.is_empty() {
        let n = 1 << (usize::BITS - 1 - rest.len().leading_zeros());
        let (chunk, tail) = rest.split_at(n);
        insert_certs(&mut tx, ph, chunk).await?;
        insert_audits(&mut tx, ph, chunk).await?;
        rest = tail;
    }

    tx.commit().await?;
    Ok(won)
}

async fn insert_certs(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ph: Placeholders,
    jobs: &[&Job],
) -> StoreResult<()> {
    let mut sql = String::from(concat!(
        "INSERT INTO certificates (",
        cert_columns!(),
        ") VALUES "
    ));
    ph.push_rows(&mut sql, jobs.len(), 13);
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for job in jobs {
        let c = &job.cert;
        q = q
            .bind(c.serial.clone())
            .bind(c.hostname.clone())
            .bind(c.kind.clone())
            .bind(c.public_key_sha256.clone())
            .bind(c.psk_hash.clone())
            .bind(c.psk_expires_at)
            .bind(c.not_before)
            .bind(c.not_after)
            .bind(c.der.clone())
            .bind(c.issued_at)
            .bind(c.revoked_at)
            .bind(c.revocation_reason.clone())
            .bind(c.superseded_by.clone());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

async fn insert_audits(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ph: Placeholders,
    jobs: &[&Job],
) -> StoreResult<()> {
    let mut sql = String::from(
        "INSERT INTO audit (at, event, hostname, serial, outcome, reason, peer, actor) VALUES ",
    );
    ph.push_rows(&mut sql, jobs.len(), 8);
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for job in jobs {
        let a = &job.audit;
        q = q
            .bind(a.at)
            .bind(a.event.clone())
            .bind(a.hostname.clone())
            .bind(a.serial.clone())
            .bind(a.outcome.clone())
            .bind(a.reason.clone())
            .bind(a.peer.clone())
            .bind(a.actor.clone());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Bind placeholders for statements built at run time: `?` on SQLite (bound
/// by position; `$n` makes SQLite look every parameter up by name, which
/// showed in profiles of large batches), `$n` on PostgreSQL.
#[derive(Debug, Clone, Copy)]
struct Placeholders(Engine);

impl Placeholders {
    fn at(self, n: usize) -> String {
        match self.0 {
            Engine::Sqlite => "?".into(),
            Engine::Postgres => format!("${n}"),
        }
    }

    /// Appends `(p1, ..., p_cols), (p_cols+1, ...)` for `rows` rows.
    fn push_rows(self, sql: &mut String, rows: usize, cols: usize) {
        for r in 0..rows {
            if r > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..cols {
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&self.at(r * cols + c + 1));
            }
            sql.push(')');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Engine, Placeholders};

    #[test]
    fn placeholders_number_rows_then_columns() {
        let mut s = String::new();
        Placeholders(Engine::Postgres).push_rows(&mut s, 2, 3);
        assert_eq!(s, "($1, $2, $3), ($4, $5, $6)");
        let mut s = String::new();
        Placeholders(Engine::Sqlite).push_rows(&mut s, 2, 2);
        assert_eq!(s, "(?, ?), (?, ?)");
    }
}
