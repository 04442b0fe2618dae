//! Audit rows for refusals, aggregated so that probing or flooding cannot
//! grow the audit table, or keep the store busy, while every precise reason
//! is kept and every refusal is counted.
//!
//! A refusal is keyed by (client address, precise reason code, hostname).
//! The first refusal of a key in a window writes a full audit row at once
//! (its precise reason text, the hostname and the address). Repeats within
//! the window are only counted in memory; [`RejectionLog::flush`] adds them
//! to their rows (`repeat_count`, `last_at`, and a chained repeat row for
//! each: docs/audit.md) in one transaction, every
//! flush interval (1 s by default, `serve --audit-flush-interval`). So a
//! row, and an address's rows together, are written at most once per
//! interval however fast the refusals come. A throttled request (429)
//! writes nothing itself: it is counted in memory like a repeat, and even
//! its address's first `throttled` row is written by the flush.
//!
//! An address gets at most [`MAX_ROWS_PER_PEER`] rows per window; past
//! that, hostnames are folded (one row per address and reason code). Past
//! [`MAX_SLOTS`] tracked keys, new ones fold into one row per reason code
//! for all addresses. So rows per window are bounded by addresses × reason
//! codes, and each refusal is counted exactly once.
//!
//! The state sits behind a plain mutex that is never held across a store
//! call: a row being written is marked, and refusals arriving meanwhile are
//! counted and written by the next flush.

use crate::store::{AuditEvent, Store, StoreResult};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Rows one client address may open per window before hostnames are folded.
pub const MAX_ROWS_PER_PEER: usize = 16;
/// Keys remembered at once (memory bound).
pub const MAX_SLOTS: usize = 50_000;
/// Default aggregation window (seconds).
pub const DEFAULT_WINDOW_SECS: i64 = 600;
/// Default interval between flushes of counted repeats.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the flush runs when repeats are written at once (interval 0):
/// only rows deferred by a race or a throttled request wait for it.
const EAGER_TICK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    peer: String,
    reason: &'static str,
    hostname: Option<String>,
}

/// Where a key's row stands in the store.
#[derive(Debug, Clone)]
enum Row {
    /// Written, with this id.
    Written(i64),
    /// Being written by a request or a flush.
    Opening,
    /// Not written yet: the flush writes it (a throttled request's row).
    Unwritten(Box<AuditEvent>),
}

#[derive(Debug, Clone)]
struct Slot {
    row: Row,
    opened_at: i64,
    /// Occurrences counted but not yet added to the row.
    pending: i64,
    /// The latest of those occurrences.
    pending_last_at: i64,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Key, Slot>,
    rows_per_peer: HashMap<String, usize>,
    last_prune: i64,
    /// Counts for rows whose window closed before they were written.
    orphans: Vec<Repeats>,
}

/// Counts to add to a written row: its key (while it still has a slot), its
/// id, how many, and the latest.
type Repeats = (Option<Key>, i64, i64, i64);

impl State {
    fn live_mut(&mut self, key: &Key, now: i64, window: i64) -> Option<&mut Slot> {
        self.slots
            .get_mut(key)
            .filter(|s| now - s.opened_at < window)
    }

    /// Forgets closed windows whose counts are all written.
    fn prune(&mut self, now: i64, window: i64) {
        let rows_per_peer = &mut self.rows_per_peer;
        self.slots.retain(|key, slot| {
            let settled = slot.pending == 0 && matches!(slot.row, Row::Written(_));
            let keep = now - slot.opened_at < window || !settled;
            if !keep && let Some(n) = rows_per_peer.get_mut(&key.peer) {
                *n = n.saturating_sub(1);
            }
            keep
        });
        self.rows_per_peer.retain(|_, n| *n > 0);
    }
}

/// What a request must write after counting its refusal.
enum Write {
    Nothing,
    /// A new row for `key`.
    Insert(Key, i64, AuditEvent),
    /// Repeats to add at once (flush interval 0).
    Repeat(Repeats),
}

/// The aggregating writer of refusal audit rows.
#[derive(Debug)]
pub struct RejectionLog {
    window: i64,
    interval: Duration,
    state: Mutex<State>,
}

impl Default for RejectionLog {
    fn default() -> RejectionLog {
        RejectionLog::new(DEFAULT_WINDOW_SECS, DEFAULT_FLUSH_INTERVAL)
    }
}

impl RejectionLog {
    /// `window_secs`: how long repeats fold into the same row; `interval`:
    /// how often counted repeats are written (zero: by the request itself).
    pub fn new(window_secs: i64, interval: Duration) -> RejectionLog {
        RejectionLog {
            window: window_secs.max(1),
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// Records one refusal. `reason` is its precise, stable reason code
    /// (e.g. `psk_wrong`, `malformed_csr`); `event.peer` is the client address
    /// without port; `event.reason` the precise text of this refusal. Writes
    /// at most one statement: the key's first row of the window, or (with
    /// a zero flush interval) its repeats.
    pub async fn record(
        &self,
        store: &Store,
        event: AuditEvent,
        reason: &'static str,
    ) -> StoreResult<()> {
        match self.count(event, reason, true) {
            Write::Nothing => Ok(()),
            Write::Insert(key, opened_at, event) => {
                let mut opening = Opening::new(self, key, opened_at, event, 0);
                let result = store.audit_returning_id(opening.event()).await;
                crate::metrics::metrics().refusal_audit_write();
                let (key, event, _) = opening.finish();
                let mut st = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let slot = st
                    .slots
                    .get_mut(&key)
                    .filter(|s| s.opened_at == opened_at && matches!(s.row, Row::Opening));
                match (result, slot) {
                    (Ok(id), Some(slot)) => {
                        slot.row = Row::Written(id);
                        Ok(())
                    }
                    (Ok(_), None) => Ok(()),
                    (Err(e), Some(slot)) => {
                        // Not lost: the flush retries the row with its count.
                        slot.row = Row::Unwritten(Box::new(event));
                        Err(e)
                    }
                    (Err(e), None) => Err(e),
                }
            }
            Write::Repeat(r) => {
                let row = (r.1, r.2, r.3);
                // Given back for the next flush unless the write succeeds,
                // also if this future is dropped mid-write.
                let mut unwritten = Unwritten {
                    log: self,
                    repeats: vec![r],
                };
                let result = store.audit_repeats(&[row]).await;
                crate::metrics::metrics().refusal_audit_write();
                if result.is_ok() {
                    unwritten.repeats.clear();
                }
                result
            }
        }
    }

    /// Counts one throttled request (or any refusal that must not write):
    /// memory only; the next flush writes it.
    pub fn count_only(&self, event: AuditEvent, reason: &'static str) {
        let _ = self.count(event, reason, false);
    }

    /// Counts the refusal under the lock and says what the caller writes.
    fn count(&self, mut event: AuditEvent, reason: &'static str, may_write: bool) -> Write {
        let now = event.at;
        let window = self.window;
        let eager = self.interval.is_zero();
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = Key {
            peer: event.peer.clone().unwrap_or_else(|| "-".into()),
            reason,
            hostname: event.hostname.clone(),
        };
        if let Some(write) = repeat(&mut st, &key, now, window, may_write && eager) {
            return write;
        }
        // Forget closed windows now and then (and whenever memory is full).
        if now - st.last_prune >= window / 4 || st.slots.len() >= MAX_SLOTS {
            st.prune(now, window);
            st.last_prune = now;
        }
        let peer_rows = st.rows_per_peer.get(&key.peer).copied().unwrap_or(0);
        if key.hostname.is_some() && peer_rows >= MAX_ROWS_PER_PEER {
            key.hostname = None;
            event.hostname = None;
            fold_note(&mut event, "hostnames of repeats not itemised");
        }
        if st.slots.len() >= MAX_SLOTS {
            key.peer = "*".into();
            key.hostname = None;
            event.hostname = None;
            fold_note(
                &mut event,
                "addresses and hostnames of repeats not itemised",
            );
        }
        if let Some(write) = repeat(&mut st, &key, now, window, may_write && eager) {
            return write;
        }
        let (row, write) = if may_write {
            (Row::Opening, Write::Insert(key.clone(), now, event))
        } else {
            (Row::Unwritten(Box::new(event)), Write::Nothing)
        };
        let slot = Slot {
            row,
            opened_at: now,
            pending: 0,
            pending_last_at: now,
        };
        // A closed window of the same key: its counts not yet written still
        // go to its own row; one never written is counted in the new row.
        let mut carried = 0;
        match st.slots.remove(&key) {
            Some(old) => match old.row {
                Row::Written(id) if old.pending > 0 => {
                    st.orphans
                        .push((None, id, old.pending, old.pending_last_at));
                }
                Row::Written(_) => {}
                Row::Opening => carried = old.pending,
                Row::Unwritten(_) => carried = old.pending + 1,
            },
            // Replacing an expired slot of the same key keeps the peer's count.
            None => *st.rows_per_peer.entry(key.peer.clone()).or_insert(0) += 1,
        }
        st.slots.insert(
            key,
            Slot {
                pending: carried,
                ..slot
            },
        );
        write
    }

    /// Puts counts that could not be written back, for the next flush.
    fn restore(&self, repeats: Vec<Repeats>) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, id, n, last_at) in repeats {
            let slot = key
                .as_ref()
                .and_then(|k| st.slots.get_mut(k))
                .filter(|s| matches!(s.row, Row::Written(row) if row == id));
            match slot {
                Some(slot) => {
                    slot.pending += n;
                    slot.pending_last_at = slot.pending_last_at.max(last_at);
                }
                None => st.orphans.push((None, id, n, last_at)),
            }
        }
    }

    /// Writes every counted repeat and deferred row: new rows one by one,
    /// then all repeats in one transaction. The lock is held only to take
    /// the counts and to note the new rows' ids.
    pub async fn flush(&self, store: &Store) -> StoreResult<()> {
        let (inserts, mut repeats) = {
            let mut st = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut inserts = Vec::new();
            let mut repeats: Vec<Repeats> = std::mem::take(&mut st.orphans);
            for (key, slot) in st.slots.iter_mut() {
                match &slot.row {
                    Row::Unwritten(event) => {
                        let event = (**event).clone();
                        inserts.push((
                            key.clone(),
                            slot.opened_at,
                            event,
                            slot.pending,
                            slot.pending_last_at,
                        ));
                        slot.row = Row::Opening;
                        slot.pending = 0;
                    }
                    Row::Written(id) if slot.pending > 0 => {
                        repeats.push((Some(key.clone()), *id, slot.pending, slot.pending_last_at));
                        slot.pending = 0;
                    }
                    _ => {}
                }
            }
            (inserts, repeats)
        };
        let mut first_error = None;
        for (key, opened_at, event, pending, last_at) in inserts {
            let mut opening = Opening::new(self, key, opened_at, event, pending);
            let result = store.audit_returning_id(opening.event()).await;
            crate::metrics::metrics().refusal_audit_write();
            let (key, event, pending) = opening.finish();
            let mut st = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(slot) = st.slots.get_mut(&key).filter(|s| s.opened_at == opened_at) else {
                continue;
            };
            match result {
                Ok(id) => {
                    slot.row = Row::Written(id);
                    if pending > 0 {
                        repeats.push((Some(key), id, pending, last_at));
                    }
                }
                Err(e) => {
                    slot.row = Row::Unwritten(Box::new(event));
                    slot.pending += pending;
                    first_error.get_or_insert(e);
                }
            }
        }
        if !repeats.is_empty() {
            let rows: Vec<(i64, i64, i64)> = repeats
                .iter()
                .map(|(_, id, n, at)| (*id, *n, *at))
                .collect();
            let result = store.audit_repeats(&rows).await;
            crate::metrics::metrics().refusal_audit_write();
            if let Err(e) = result {
                self.restore(repeats);
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Flushes every interval until the task is dropped (`serve` aborts it
    /// and flushes once more at shutdown).
    pub async fn run_flusher(&self, store: Store) {
        let tick = if self.interval.is_zero() {
            EAGER_TICK
        } else {
            self.interval
        };
        let mut timer = tokio::time::interval(tick);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            timer.tick().await;
            if let Err(e) = self.flush(&store).await {
                tracing::warn!(error = %e, "writing counted refusals to the audit log failed; will retry");
            }
        }
    }

    /// Refusals counted in memory and not yet written (for tests).
    pub fn unwritten(&self) -> i64 {
        let st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        st.slots
            .values()
            .map(|s| s.pending + i64::from(matches!(s.row, Row::Unwritten(_))))
            .sum::<i64>()
            + st.orphans.iter().map(|o| o.2).sum::<i64>()
    }
}

/// A row being written. If the writer is dropped before it finishes (a
/// client hung up and its request's future was dropped, or the flusher was
/// stopped), the row goes back to `Unwritten` with its counts, for the next
/// flush: a refusal may then be counted twice, never lost.
struct Opening<'a> {
    log: &'a RejectionLog,
    key: Option<Key>,
    opened_at: i64,
    event: Option<AuditEvent>,
    pending: i64,
}

impl<'a> Opening<'a> {
    fn new(
        log: &'a RejectionLog,
        key: Key,
        opened_at: i64,
        event: AuditEvent,
        pending: i64,
    ) -> Opening<'a> {
        Opening {
            log,
            key: Some(key),
            opened_at,
            event: Some(event),
            pending,
        }
    }

    fn event(&self) -> &AuditEvent {
        self.event.as_ref().expect("an unfinished row")
    }

    /// The write finished (or failed): the caller settles the slot.
    fn finish(&mut self) -> (Key, AuditEvent, i64) {
        (
            self.key.take().expect("an unfinished row"),
            self.event.take().expect("an unfinished row"),
            self.pending,
        )
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        let (Some(key), Some(event)) = (self.key.take(), self.event.take()) else {
            return;
        };
        let mut st = self
            .log
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = st
            .slots
            .get_mut(&key)
            .filter(|s| s.opened_at == self.opened_at && matches!(s.row, Row::Opening))
        {
            slot.row = Row::Unwritten(Box::new(event));
            slot.pending += self.pending;
        }
    }
}

/// Repeats being written: restored to their slots when dropped, unless
/// the write succeeded and emptied them (counted twice, never lost).
struct Unwritten<'a> {
    log: &'a RejectionLog,
    repeats: Vec<Repeats>,
}

impl Drop for Unwritten<'_> {
    fn drop(&mut self) {
        if !self.repeats.is_empty() {
            self.log.restore(std::mem::take(&mut self.repeats));
        }
    }
}

/// Counts a repeat of a live key; `None` if the key has no live slot.
fn repeat(st: &mut State, key: &Key, now: i64, window: i64, write_now: bool) -> Option<Write> {
    let slot = st.live_mut(key, now, window)?;
    slot.pending += 1;
    slot.pending_last_at = slot.pending_last_at.max(now);
    if write_now && let Row::Written(id) = slot.row {
        let write = Write::Repeat((Some(key.clone()), id, slot.pending, slot.pending_last_at));
        slot.pending = 0;
        return Some(write);
    }
    Some(Write::Nothing)
}

fn fold_note(event: &mut AuditEvent, note: &str) {
    let reason = event.reason.take().unwrap_or_default();
    event.reason = Some(format!("{reason} ({note})"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(at: i64, peer: &str, host: Option<&str>, reason: &str) -> AuditEvent {
        AuditEvent {
            at,
            event: "sign".into(),
            hostname: host.map(str::to_owned),
            outcome: "rejected".into(),
            reason: Some(reason.into()),
            peer: Some(peer.into()),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn repeats_fold_into_one_row_per_address_reason_and_window() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        // Zero interval: every repeat is written by its request.
        let log = RejectionLog::new(60, Duration::ZERO);
        let t0 = 1_800_000_000;
        for i in 0..5 {
            let e = refusal(t0 + i, "192.0.2.1", Some("a.example"), "psk_wrong");
            log.record(&store, e, "psk_wrong").await.unwrap();
        }
        // Another reason, another address: their own rows.
        let e = refusal(t0, "192.0.2.1", Some("a.example"), "psk_expired");
        log.record(&store, e, "psk_expired").await.unwrap();
        let e = refusal(t0, "192.0.2.2", Some("a.example"), "psk_wrong");
        log.record(&store, e, "psk_wrong").await.unwrap();
        // Many hostnames from one address: folded after MAX_ROWS_PER_PEER rows.
        for i in 0..100 {
            let host = format!("h{i}.example");
            let e = refusal(t0 + 1, "192.0.2.3", Some(&host), "psk_unknown_host");
            log.record(&store, e, "psk_unknown_host").await.unwrap();
        }
        // After the window, a new row.
        let e = refusal(t0 + 61, "192.0.2.1", Some("a.example"), "psk_wrong");
        log.record(&store, e, "psk_wrong").await.unwrap();

        let rows = store.audit_since(0, 10_000).await.unwrap();
        let of = |peer: &str| -> Vec<&AuditEvent> {
            rows.iter()
                .filter(|r| r.peer.as_deref() == Some(peer))
                .collect()
        };
        let first = of("192.0.2.1");
        assert_eq!(first.len(), 3);
        assert_eq!(first[0].count, 5);
        assert_eq!(first[0].last_at, Some(t0 + 4));
        assert_eq!(first[1].reason.as_deref(), Some("psk_expired"));
        assert_eq!((first[2].count, first[2].at), (1, t0 + 61));
        assert_eq!(of("192.0.2.2").len(), 1);
        let probe = of("192.0.2.3");
        assert_eq!(probe.len(), MAX_ROWS_PER_PEER + 1);
        assert_eq!(probe.iter().map(|r| r.count).sum::<i64>(), 100);
        let folded = probe.last().unwrap();
        assert_eq!(folded.hostname, None);
        assert!(
            folded
                .reason
                .as_deref()
                .unwrap()
                .starts_with("psk_unknown_host")
        );
        assert_eq!(folded.count, 100 - MAX_ROWS_PER_PEER as i64);
    }

    /// A refusal's future is dropped when its client hangs up (the PSK flow
    /// runs on the connection's task): what it counted is still written, by
    /// the next flush, counted twice at worst and never lost.
    #[tokio::test]
    async fn a_write_dropped_midway_leaves_its_counts_for_the_flush() {
        use std::future::Future;
        use std::task::Poll;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        // Interval zero: every repeat is written at once, so each can be cut off.
        let log = RejectionLog::new(60, Duration::ZERO);
        let t0 = 1_800_000_000;
        let (mut counted, mut cut) = ([0i64; 2], [0i64; 2]);
        for (i, reason) in ["malformed_csr", "bad_signature"].into_iter().enumerate() {
            // The first of "malformed_csr" opens its row; the first of
            // "bad_signature" is cut off while opening it.
            if i == 0 {
                let e = refusal(t0, "192.0.2.1", None, reason);
                log.record(&store, e, reason).await.unwrap();
                counted[i] += 1;
            }
            for polls in 1..=20 {
                let e = refusal(t0 + 1, "192.0.2.1", None, reason);
                let mut write = std::pin::pin!(log.record(&store, e, reason));
                let mut done = false;
                for _ in 0..polls {
                    let poll = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx)));
                    if let Poll::Ready(result) = poll.await {
                        result.unwrap();
                        done = true;
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                counted[i] += 1;
                cut[i] += i64::from(!done);
            }
        }
        assert!(cut.iter().all(|&n| n > 0), "no write was cut off: {cut:?}");
        log.flush(&store).await.unwrap();
        assert_eq!(log.unwritten(), 0);
        let rows = store.audit_since(0, 100).await.unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        for (i, reason) in ["malformed_csr", "bad_signature"].into_iter().enumerate() {
            let row = rows
                .iter()
                .find(|r| r.reason.as_deref() == Some(reason))
                .unwrap();
            assert!(
                (counted[i]..=counted[i] + cut[i]).contains(&row.count),
                "{reason}: {} written, {} counted, {} cut off",
                row.count,
                counted[i],
                cut[i]
            );
        }
    }

    #[tokio::test]
    async fn repeats_and_throttled_requests_are_written_by_the_flush_only() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let log = RejectionLog::new(60, Duration::from_secs(1));
        let t0 = 1_800_000_000;
        for i in 0..1000 {
            let e = refusal(t0 + i / 100, "192.0.2.1", None, "malformed_csr");
            log.record(&store, e, "malformed_csr").await.unwrap();
        }
        for i in 0..500 {
            let e = AuditEvent {
                outcome: "throttled".into(),
                ..refusal(t0 + 9, "192.0.2.1", None, &format!("throttled {i}"))
            };
            log.count_only(e, "throttled");
        }
        // Only the first malformed refusal wrote its row.
        let rows = store.audit_since(0, 100).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].count, 1);
        assert_eq!(log.unwritten(), 999 + 500);

        log.flush(&store).await.unwrap();
        assert_eq!(log.unwritten(), 0);
        let rows = store.audit_since(0, 100).await.unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].count, rows[0].last_at), (1000, Some(t0 + 9)));
        assert_eq!(rows[1].outcome, "throttled");
        assert_eq!(rows[1].count, 500);
        assert_eq!(rows[1].reason.as_deref(), Some("throttled 0"));
        // A flush with nothing counted writes nothing.
        log.flush(&store).await.unwrap();
        let again = store.audit_since(0, 100).await.unwrap();
        let counts = |r: &[AuditEvent]| r.iter().map(|r| r.count).collect::<Vec<_>>();
        assert_eq!(counts(&again), counts(&rows));

        // After the window, the next refusal opens a new row; repeats
        // counted before it still go to the old one.
        let e = refusal(t0 + 20, "192.0.2.1", None, "malformed_csr");
        log.record(&store, e, "malformed_csr").await.unwrap();
        let e = refusal(t0 + 61, "192.0.2.1", None, "malformed_csr");
        log.record(&store, e, "malformed_csr").await.unwrap();
        log.flush(&store).await.unwrap();
        let rows = store.audit_since(0, 100).await.unwrap();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0].count, 1001);
        assert_eq!((rows[2].count, rows[2].at), (1, t0 + 61));
    }
}
