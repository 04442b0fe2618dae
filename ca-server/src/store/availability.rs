//! Store availability: a watcher that keeps its own connection to the
//! database and a gate that every store operation passes first.
//!
//! Why: when PostgreSQL stops, sqlx's pool answers a refused connection by
//! retrying until its acquire timeout, so every request would hang for
//! seconds and end in a vague "pool timed out". The watcher probes the
//! database on a connection of its own (never waiting behind a busy pool),
//! closes the gate on the first failed probe, and opens it again on the first
//! good one: while the database is down, requests fail at once with
//! [`StoreError::Down`] (503 `store_unavailable`), requests already waiting
//! for a pool connection are released with the same error when the gate
//! closes, and issuance resumes without a restart. A caller that meets a
//! database error calls [`Store::suspect`] so the next probe runs at once
//! instead of at its interval; only a probe ever closes the gate. Stores
//! that nobody watches (the CLI) keep the gate open.

use super::{Store, StoreError, StoreResult};
use sqlx::AnyConnection;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, ConnectOptions, Transaction};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Time between probes (a one-row read: four a second cost nothing, and
/// bound how long an outage goes unnoticed when nobody calls `suspect`).
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a probe (connect or query) may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Shared up/down state of one store.
#[derive(Debug)]
pub(super) struct Gate {
    /// `true` while the database is down; waiters in [`Store::conn`] watch it.
    down: watch::Sender<bool>,
    /// Unix seconds of the probe that found the database down.
    down_since: AtomicI64,
    /// Wakes the watcher for an early probe.
    wake: tokio::sync::Notify,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            down: watch::Sender::new(false),
            down_since: AtomicI64::new(0),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl Gate {
    fn check(&self) -> StoreResult<()> {
        if *self.down.borrow() {
            let since = self.down_since.load(Ordering::Acquire);
            return Err(StoreError::Down {
                for_secs: (unix_now() - since).max(0),
            });
        }
        Ok(())
    }

    /// Records a probe result; returns `true` if the state changed.
    fn set_down(&self, down: bool) -> bool {
        if down && !*self.down.borrow() {
            self.down_since.store(unix_now(), Ordering::Release);
        }
        self.down.send_replace(down) != down
    }

    /// Runs `op` (which waits for a pool connection) unless the gate is or
    /// becomes closed first: a request waiting for a connection when the
    /// database goes away gets its 503 then, not at the pool's timeout.
    async fn guard<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> StoreResult<T> {
        self.check().inspect_err(count_refusal)?;
        let mut down = self.down.subscribe();
        tokio::select! {
            r = op => Ok(r?),
            _ = down.wait_for(|d| *d) => Err(self.check().expect_err("the gate closed")).inspect_err(count_refusal),
        }
    }
}

/// A store operation refused because the database is down counts as a store error.
fn count_refusal(_: &StoreError) {
    crate::metrics::metrics().store_error("down");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// The pool, if the gate is open: fails at once while the watcher sees
    /// the database down.
    pub(super) fn pool(&self) -> StoreResult<&AnyPool> {
        self.gate.check().inspect_err(count_refusal)?;
        Ok(&self.pool)
    }

    /// A pooled connection, unless the database is down (see [`Gate::guard`]).
    pub(super) async fn conn(&self) -> StoreResult<PoolConnection<Any>> {
        self.gate.guard(self.pool.acquire()).await
    }

    /// A transaction on a pooled connection, unless the database is down.
    pub(super) async fn begin(&self) -> StoreResult<Transaction<'static, Any>> {
        self.gate.guard(self.pool.begin()).await
    }

    /// `false` while the watcher sees the database down.
    pub fn is_up(&self) -> bool {
        self.gate.check().is_ok()
    }

    /// Asks the watcher to probe now: a caller met a database error.
    pub fn suspect(&self) {
        self.gate.wake.notify_one();
    }

    /// Watches the database until the task is dropped or aborted (`serve`
    /// spawns it). Logs each change of state once.
    pub async fn watch_availability(self) {
        let options = self.pool.connect_options();
        let mut conn: Option<AnyConnection> = None;
        loop {
            let ok = probe(&options, &mut conn).await;
            if self.gate.set_down(!ok) {
                if ok {
                    tracing::info!("store reachable again; accepting requests");
                } else {
                    tracing::error!(
                        "store unreachable; answering 503 store_unavailable until it is back"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = self.gate.wake.notified() => {}
            }
        }
    }
}

/// One probe: a query on the kept connection; on failure one fresh
/// connection is tried before the database counts as down (so a connection
/// that was merely closed, by an idle timeout or a proxy, is no outage).
async fn probe(
    options: &Arc<sqlx::any::AnyConnectOptions>,
    conn: &mut Option<AnyConnection>,
) -> bool {
    if let Some(c) = conn.as_mut() {
        if query(c).await {
            return true;
        }
        // A broken connection: dropping it closes the socket without a goodbye.
        *conn = None;
    }
    let started = Instant::now();
    let connected = tokio::time::timeout(PROBE_TIMEOUT, options.connect()).await;
    match connected {
        Ok(Ok(mut c)) => {
            let ok = query(&mut c).await;
            if ok {
                *conn = Some(c);
            }
            ok
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, elapsed_ms = started.elapsed().as_millis() as u64, "store probe: connect failed");
            false
        }
        Err(_) => false,
    }
}

/// A read of a real table, bounded in time.
async fn query(conn: &mut AnyConnection) -> bool {
    let q = sqlx::query("SELECT crl_number FROM crl_state WHERE id = 1").fetch_optional(conn);
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, q).await,
        Ok(Ok(Some(_)))
    )
}
