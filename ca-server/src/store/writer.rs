//! Group commit: one writer per server that records the issuances of every
//! request waiting at that moment in a single transaction.
//!
//! Why: each certificate's record must be durable before the certificate is
//! handed out, and a durable commit costs an fsync (SQLite `synchronous=FULL`,
//! PostgreSQL WAL flush). One commit per certificate caps issuance at the
//! disk's fsync rate; one commit per batch does not. Requests are answered
//! only after the commit that holds their row, so nothing leaves unrecorded.
//!
//! On SQLite the writer is a thread of its own (`lane`) that runs, per job,
//! a prepared `DELETE` of the PSK and, if a row went, the certificate's
//! INSERT; then the winners' audit rows are appended to the hash chain
//! (positions reserved once, the rows, the new head: `store/chain.rs`). On
//! PostgreSQL, where each statement is a network round trip, a batch is
//! two statements between BEGIN and COMMIT whatever its size: one spends the
//! PSKs still live and reserves their positions on the audit chain, one
//! records their certificates and audit rows and moves the chain's head
//! (data-modifying CTEs; four round trips in all, seven before). Either
//! way, requests whose PSK was not deleted (spent by a concurrent request,
//! replaced, expired) get `PskGone`, exactly as in the one-transaction path;
//! of two requests for the same PSK in one batch only the first wins. If a batch
//! fails as a whole, each of its requests is retried in a transaction of its
//! own, so one bad row cannot fail its neighbours.

use super::{
    AuditEvent, CertRecord, Engine, Issuance, Store, StoreError, StoreResult, chain, lane,
};
use policy::PskHash;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Most issuances in one transaction. Bounded by bind parameters per
/// statement (13 per certificate; SQLite allows 32766, PostgreSQL 65535).
pub const MAX_BATCH: usize = 256;

/// The PostgreSQL batch's first statement: spends the PSKs still live and
/// reserves one chain position per PSK spent (`chain::RESERVE_SQL` with
/// `n` the count; its row lock is held to commit, as every append's).
/// `= ANY (ARRAY(...))` is what the planner can take to the primary key: a
/// join with the function's rows alone (estimated at 100) made it hash-join
/// a sequential scan of every live PSK, ~6 ms per batch with 20,000 of them.
const SPEND_AND_RESERVE_PG: &str = "WITH spent AS ( \
     DELETE FROM psks p USING jsonb_to_recordset($1::jsonb) AS j(h text, p text, n bigint) \
     WHERE p.hostname = ANY (ARRAY(SELECT jsonb_array_elements($1::jsonb) ->> 'h')) \
     AND p.hostname = j.h AND p.psk_hash = decode(j.p, 'hex') AND p.expires_at > j.n \
     RETURNING p.hostname, p.psk_hash), \
     reserved AS ( \
     UPDATE audit_chain SET seq = seq + (SELECT count(*) FROM spent) WHERE id = 1 \
     RETURNING seq, head) \
     SELECT reserved.seq, reserved.head, spent.hostname, spent.psk_hash \
     FROM reserved LEFT JOIN spent ON true";

/// Its second: the winners' certificates ($1), their audit rows ($2) and
/// the chain's new head ($3), as `insert_certs_pg!`, `insert_audits_pg!`
/// and `chain::SET_HEAD_SQL` write them.
const RECORD_PG: &str = concat!(
    "WITH certs AS (",
    insert_certs_pg!("$1"),
    "), audits AS (",
    insert_audits_pg!("$2"),
    ") UPDATE audit_chain SET head = $3 WHERE id = 1"
);

/// One queued issuance.
struct Job {
    psk_hash: PskHash,
    now: i64,
    cert: CertRecord,
    audit: AuditEvent,
    reply: oneshot::Sender<StoreResult<()>>,
}

/// Handle to the writer (a thread on SQLite, a task on PostgreSQL).
#[derive(Debug, Clone)]
pub(super) struct Writer {
    tx: mpsc::Sender<Job>,
    /// SQLite's lane, which a request commits on itself when it is idle.
    lane: Option<lane::Shared>,
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
    /// through one writer (a thread of its own on a SQLite file, see
    /// `lane`; a task on PostgreSQL). Call once, from `serve`.
    pub fn start_group_commit(&self) {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        match (self.engine, &self.sqlite_file) {
            (Engine::Sqlite, Some(path)) => {
                if self.writer.get().is_none() {
                    let path = path.clone();
                    let lane =
                        lane::spawn("store-writer", self, path, rx, MAX_BATCH, |lane, batch| {
                            crate::metrics::metrics().issuance_batch("writer");
                            run_sqlite(lane, batch)
                        });
                    // A second start loses here: its channel closes with
                    // the dropped handle and its lane winds down.
                    let _ = self.writer.set(Writer {
                        tx,
                        lane: Some(lane),
                    });
                }
            }
            // Each connection to an in-memory database is a database of its
            // own: issuances stay on the pool's one-transaction path.
            (Engine::Sqlite, None) => {}
            (Engine::Postgres, _) => {
                if self.writer.set(Writer { tx, lane: None }).is_ok() {
                    tokio::spawn(run(self.clone(), rx));
                }
            }
        }
    }

    /// Declares a PSK issuance in progress until the guard drops: the flow
    /// takes it before its first read. While more than one is in progress
    /// the writer batches them (`commit_inline` commits on the caller's
    /// thread only for a request that is alone).
    pub fn issuing(&self) -> Issuing {
        self.issuing.fetch_add(1, Ordering::Relaxed);
        Issuing(self.issuing.clone())
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
        if let Some(committed) = commit_inline(w, &job, self.issuing.load(Ordering::Relaxed)) {
            return committed;
        }
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

/// Commits `job` on this thread if it is the only issuance in progress
/// ([`Store::issuing`]), SQLite's lane is idle (nothing queued, no batch
/// running) and the write lock is free, and returns its outcome; `None`
/// leaves it to the queue. Why: a lone request finds the lane
/// thread parked, and handing it the job costs two wake-ups of idle threads
/// (to the lane, and back to the runtime), each a round trip through the
/// hypervisor on a VM. The fsync then blocks this runtime worker, which is
/// acceptable only while nothing else is in flight: with other requests
/// coming, a worker stalled on the disk and a batch of one cost more than
/// the wake-ups (BENCHMARKS.md, issue 21). The lock is never waited for
/// here: its holder may be a transaction that needs this very worker to
/// finish (sqlx's). No await runs inside: once started, the commit
/// finishes even if the request is dropped.
fn commit_inline(w: &Writer, job: &Job, issuing: usize) -> Option<StoreResult<()>> {
    let shared = w.lane.as_ref()?;
    // 0 for callers outside a flow (tests, tools): alone too.
    if issuing > 1 || w.tx.capacity() < w.tx.max_capacity() {
        return None; // others are in flight or queued: join them
    }
    // Busy: a batch is running (or a panic poisoned the lock).
    let mut guard = shared.try_lock().ok()?;
    // `None`: stopped, and the queue's closed channel decides.
    let lane = guard.as_mut()?;
    // `None`: the write lock is taken, and the lane waits for it.
    let won = match commit_batch_sqlite(lane, std::slice::from_ref(job), Lock::OrGiveUp) {
        Ok(won) => won?[0],
        Err(e) => return Some(Err(e)),
    };
    crate::metrics::metrics().issuance_batch("inline");
    Some(outcome(won))
}

/// A PSK issuance in progress ([`Store::issuing`]).
#[derive(Debug)]
pub struct Issuing(std::sync::Arc<AtomicUsize>);

impl Drop for Issuing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a request learns from a batch it was in.
fn outcome(won: bool) -> StoreResult<()> {
    if won {
        Ok(())
    } else {
        Err(StoreError::PskGone)
    }
}

/// Answers every job of a batch from its commit. If the batch failed as a
/// whole and held several jobs, answers none and returns `true`: each is
/// then retried in a transaction of its own, so one bad row cannot fail its
/// neighbours.
fn answer(batch: &mut Vec<Job>, result: StoreResult<Vec<bool>>) -> bool {
    match result {
        Ok(won) => {
            for (job, won) in batch.drain(..).zip(won) {
                let _ = job.reply.send(outcome(won));
            }
            false
        }
        Err(e) if batch.len() == 1 => {
            let job = batch.pop().expect("one job");
            let _ = job.reply.send(Err(e));
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, size = batch.len(), "group commit failed; recording one by one");
            true
        }
    }
}

/// The SQLite writer: each batch on the lane's own connection.
fn run_sqlite(lane: &mut lane::Lane, batch: &mut Vec<Job>) {
    let result = commit_waiting(lane, batch);
    if answer(batch, result) {
        for job in batch.drain(..) {
            let result =
                commit_waiting(lane, std::slice::from_ref(&job)).and_then(|won| outcome(won[0]));
            let _ = job.reply.send(result);
        }
    }
}

/// How a transaction takes SQLite's write lock.
#[derive(Clone, Copy, PartialEq)]
enum Lock {
    /// Waits for it, up to the busy timeout (the lane's own batches).
    Wait,
    /// Gives up at once if another connection holds it (`commit_inline`).
    OrGiveUp,
}

/// [`commit_batch_sqlite`] for the lane, which always waits for the lock.
fn commit_waiting(lane: &mut lane::Lane, batch: &[Job]) -> StoreResult<Vec<bool>> {
    commit_batch_sqlite(lane, batch, Lock::Wait)
        .map(|won| won.expect("a transaction that waits for the lock begins or fails"))
}

/// [`record_batch_sqlite`], with a fresh connection for the next batch
/// after an error.
fn commit_batch_sqlite(
    lane: &mut lane::Lane,
    batch: &[Job],
    lock: Lock,
) -> StoreResult<Option<Vec<bool>>> {
    let result = record_batch_sqlite(lane, batch, lock);
    if result.is_err() {
        lane.reset();
    }
    result
}

/// Records a batch in one transaction; returns, per job, whether it won its
/// PSK, or `None` if `lock` gave up on the write lock (nothing was done).
/// The statements are prepared once per connection and run per row: on
/// SQLite a row costs microseconds, the commit's fsync is what a batch
/// shares.
fn record_batch_sqlite(
    lane: &mut lane::Lane,
    batch: &[Job],
    lock: Lock,
) -> StoreResult<Option<Vec<bool>>> {
    use rusqlite::{ErrorCode, Transaction, TransactionBehavior};
    let conn: &rusqlite::Connection = lane.conn()?;
    if lock == Lock::OrGiveUp {
        conn.busy_timeout(std::time::Duration::ZERO)?;
    }
    // IMMEDIATE: the write lock first, so no statement below waits for it.
    // Unchecked (a shared borrow) so the timeout can be put back after it;
    // the lane's transactions always end before the next begins.
    let tx = {
        let began = Transaction::new_unchecked(conn, TransactionBehavior::Immediate);
        if lock == Lock::OrGiveUp {
            conn.busy_timeout(lane::WRITE_BUSY_TIMEOUT)?;
        }
        match began {
            Ok(tx) => tx,
            Err(e) => {
                return match (lock, e.sqlite_error_code()) {
                    (Lock::OrGiveUp, Some(ErrorCode::DatabaseBusy)) => Ok(None),
                    _ => Err(e.into()),
                };
            }
        }
    };
    let won = record_in(&tx, batch)?;
    let any_won = won.contains(&true);
    if any_won {
        tx.commit()?;
        lane.committed();
    } else {
        tx.rollback()?;
    }
    Ok(Some(won))
}

/// Runs a batch's statements in `tx`; returns, per job, whether it won its
/// PSK.
fn record_in(tx: &rusqlite::Transaction<'_>, batch: &[Job]) -> StoreResult<Vec<bool>> {
    use rusqlite::params;
    let mut won = Vec::with_capacity(batch.len());
    {
        let mut spend = tx.prepare_cached(
            "DELETE FROM psks WHERE hostname = ?1 AND psk_hash = ?2 AND expires_at > ?3",
        )?;
        let mut insert_cert = tx.prepare_cached(insert_cert_sqlite!())?;
        for job in batch {
            // A PSK spent by an earlier job of this batch is gone: the first wins.
            let spent =
                spend.execute(params![job.cert.hostname, &job.psk_hash.0[..], job.now])? == 1;
            won.push(spent);
            if !spent {
                continue;
            }
            let c = &job.cert;
            insert_cert.execute(params![
                c.serial,
                c.hostname,
                c.kind,
                c.public_key_sha256,
                c.psk_hash,
                c.psk_expires_at,
                c.not_before,
                c.not_after,
                c.der,
                c.issued_at,
                c.revoked_at,
                c.revocation_reason,
                c.superseded_by,
            ])?;
        }
    }
    let winners: Vec<&AuditEvent> = batch
        .iter()
        .zip(&won)
        .filter(|(_, w)| **w)
        .map(|(j, _)| &j.audit)
        .collect();
    if !winners.is_empty() {
        append_audits_sqlite(tx, &winners)?;
    }
    Ok(won)
}

/// Appends the winners' audit rows to the chain: one reservation of their
/// positions, the rows, the new head (the chain in `store/chain.rs`).
fn append_audits_sqlite(tx: &rusqlite::Transaction<'_>, audits: &[&AuditEvent]) -> StoreResult<()> {
    use rusqlite::params;
    let n = audits.len() as i64;
    let (last, head): (i64, Vec<u8>) = tx
        .prepare_cached(chain::RESERVE_SQL)?
        .query_row(params![n], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut links = chain::Links::new(last, n, &head)?;
    let mut insert = tx.prepare_cached(insert_audit_sqlite!())?;
    for a in audits {
        let l = links.next(a, None);
        insert.execute(params![
            a.at,
            a.event,
            a.hostname,
            a.serial,
            a.outcome,
            a.reason,
            a.peer,
            a.actor,
            l.count,
            l.last_at,
            l.repeats_of,
            l.seq,
            &l.hash[..],
        ])?;
    }
    tx.prepare_cached(chain::SET_HEAD_SQL)?
        .execute(params![&links.head()[..]])?;
    Ok(())
}

/// The PostgreSQL writer task.
async fn run(store: Store, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // The writer keeps its connection: no batch waits for the pool.
    let mut conn: Option<PoolConnection<Any>> = None;
    let mut closing = store.closing.subscribe();
    // Returning drops `conn`, back to the pool that is closing.
    while super::next_batch(&mut rx, &mut closing, &mut batch, MAX_BATCH).await {
        crate::metrics::metrics().issuance_batch("writer");
        let result = commit_batch(&store, &mut conn, &batch).await;
        if result.is_err() {
            conn = None; // a fresh connection for the next batch
        }
        if answer(&mut batch, result) {
            // Each in a transaction of its own, on a pooled connection.
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

/// Records a batch in one PostgreSQL transaction; returns, per job, whether
/// it won its PSK.
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
    // batch travels as one JSON parameter, so each statement has one shape
    // (prepared once) and costs one round trip whatever the batch size.
    let spend: Vec<serde_json::Value> = batch
        .iter()
        .map(|j| {
            serde_json::json!({
                "h": j.cert.hostname,
                "p": hex::encode(j.psk_hash.0),
                "n": j.now,
            })
        })
        .collect();
    let rows = sqlx::query(SPEND_AND_RESERVE_PG)
        .bind(serde_json::Value::Array(spend).to_string())
        .fetch_all(&mut *tx)
        .await?;
    // One row per spent PSK (or one with NULLs when none went), each with
    // the chain head the reservation returned.
    let first = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("audit_chain has no head row".into()))?;
    let (last_seq, head): (i64, Vec<u8>) = (first.try_get("seq")?, first.try_get("head")?);
    let mut spent: HashSet<(String, Vec<u8>)> = HashSet::with_capacity(rows.len());
    for row in &rows {
        if let Some(host) = row.try_get::<Option<String>, _>("hostname")? {
            spent.insert((host, row.try_get("psk_hash")?));
        }
    }
    let reserved = spent.len() as i64;
    // The first request for a spent PSK wins it; any other in the batch lost.
    let won: Vec<bool> = batch
        .iter()
        .map(|job| spent.remove(&(job.cert.hostname.clone(), job.psk_hash.0.to_vec())))
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

    // Every spent PSK has its winner, so the positions reserved are theirs;
    // anything else would leave a gap in the chain: fail the batch instead.
    if winners.len() as i64 != reserved {
        return Err(StoreError::Corrupt(format!(
            "{reserved} PSKs spent for {} winners",
            winners.len()
        )));
    }
    let certs: Vec<&CertRecord> = winners.iter().map(|j| &j.cert).collect();
    let mut links = chain::Links::new(last_seq, reserved, &head)?;
    let audits: Vec<(&AuditEvent, chain::Link)> = winners
        .iter()
        .map(|j| (&j.audit, links.next(&j.audit, None)))
        .collect();
    sqlx::query(RECORD_PG)
        .bind(super::certs_json(&certs))
        .bind(super::audits_json(&audits))
        .bind(links.head().to_vec())
        .execute(&mut *tx)
        .await?;

    tx.commit().await?;
    Ok(won)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NOW, fixture};

    fn issuance(host: &str, serial: u64) -> (PskHash, CertRecord, AuditEvent) {
        let psk = PskHash([serial as u8; 32]);
        let cert = CertRecord {
            serial: format!("{serial:032x}"),
            hostname: host.into(),
            kind: "host".into(),
            public_key_sha256: vec![serial as u8; 32],
            psk_hash: Some(psk.0.to_vec()),
            psk_expires_at: Some(NOW + 3600),
            not_before: NOW - 300,
            not_after: NOW + 86400,
            der: b"der".to_vec(),
            issued_at: NOW,
            revoked_at: None,
            revocation_reason: None,
            superseded_by: None,
        };
        let audit = AuditEvent {
            at: NOW,
            event: "issued".into(),
            hostname: Some(host.into()),
            outcome: "ok".into(),
            ..Default::default()
        };
        (psk, cert, audit)
    }

    /// A request alone in flight that finds the SQLite writer idle commits
    /// on its own thread, within the poll that submits it; with another
    /// issuance in flight, a batch running (the lane locked) or SQLite's
    /// write lock held by another connection, it goes to the queue and is
    /// answered by the writer. Every way spends the PSK and records the
    /// certificate.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_commits_inline_and_others_queue() {
        let f = fixture().await;
        f.store.start_group_commit();
        let hosts = ["alone", "accompanied", "busy", "locked"];
        for (serial, name) in (1..).zip(hosts) {
            let host = format!("{name}.example.internal");
            let (psk, cert, audit) = issuance(&host, serial);
            f.store
                .put_psk(
                    &host,
                    &psk,
                    &[],
                    NOW - 60,
                    NOW + 3600,
                    &AuditEvent::default(),
                )
                .await
                .unwrap();
            let i = Issuance {
                psk_hash: psk,
                now: NOW,
                cert: &cert,
                audit: &audit,
            };
            let _flow = f.store.issuing();
            let _other = (name == "accompanied").then(|| f.store.issuing());
            let shared = f.store.writer.get().unwrap().lane.clone().unwrap();
            let held = (name == "busy").then(|| lane::lock(&shared));
            let other = (name == "locked").then(|| {
                let c = rusqlite::Connection::open(f.store.sqlite_file.as_ref().unwrap()).unwrap();
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                c
            });
            let mut request = std::pin::pin!(f.store.record_issuance(&i));
            let first = futures_util::FutureExt::now_or_never(request.as_mut());
            if name == "alone" {
                assert!(matches!(first, Some(Ok(()))), "{host}: {first:?}");
            } else {
                // Queued: the writer's answer needs its commit (an fsync),
                // which cannot land within this one poll.
                assert!(first.is_none(), "{host}: {first:?}");
                if held.is_some() || other.is_some() {
                    // The writer waits for the lane, or for the write lock:
                    // nothing answers meanwhile.
                    for _ in 0..25 {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        assert!(futures_util::FutureExt::now_or_never(request.as_mut()).is_none());
                    }
                }
                drop(held);
                if let Some(c) = other {
                    c.execute_batch("COMMIT").unwrap();
                }
                request.await.unwrap();
            }
            assert!(f.store.get_psk(&host).await.unwrap().is_none(), "{host}");
            let certs = f.store.certs_by_psk(&host, &psk).await.unwrap();
            assert_eq!(certs.len(), 1, "{host}");
        }
    }
}
