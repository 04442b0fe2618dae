//! Audit rows for refusals, aggregated so that probing cannot grow the audit
//! table without bound while every precise reason is kept.
//!
//! A refusal is keyed by (client address, precise reason code, hostname). The
//! first refusal of a key in a window writes a full audit row (its precise
//! reason text, the hostname and the address); repeats within the window
//! only count up that row's `repeat_count` and move its `last_at`. An address
//! gets at most [`MAX_ROWS_PER_PEER`] rows per window; past that, hostnames
//! are folded (one row per address and reason code). Past [`MAX_SLOTS`]
//! tracked keys, new ones fold into one row per reason code for all
//! addresses. So rows per window are bounded by addresses × reason codes, and
//! each refusal is counted exactly once.

use crate::store::{AuditEvent, Store, StoreResult};
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Rows one client address may open per window before hostnames are folded.
pub const MAX_ROWS_PER_PEER: usize = 16;
/// Keys remembered at once (memory bound).
pub const MAX_SLOTS: usize = 50_000;
/// Default aggregation window (seconds).
pub const DEFAULT_WINDOW_SECS: i64 = 600;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    peer: String,
    reason: &'static str,
    hostname: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    row_id: i64,
    opened_at: i64,
}

#[derive(Debug, Default)]
struct State {
    slots: HashMap<Key, Slot>,
    rows_per_peer: HashMap<String, usize>,
    last_prune: i64,
}

impl State {
    fn live(&self, key: &Key, now: i64, window: i64) -> Option<Slot> {
        self.slots
            .get(key)
            .copied()
            .filter(|s| now - s.opened_at < window)
    }

    fn prune(&mut self, now: i64, window: i64) {
        let rows_per_peer = &mut self.rows_per_peer;
        self.slots.retain(|key, slot| {
            let keep = now - slot.opened_at < window;
            if !keep && let Some(n) = rows_per_peer.get_mut(&key.peer) {
                *n = n.saturating_sub(1);
            }
            keep
        });
        self.rows_per_peer.retain(|_, n| *n > 0);
    }
}

/// The aggregating writer of refusal audit rows.
#[derive(Debug)]
pub struct RejectionLog {
    window: i64,
    state: Mutex<State>,
}

impl Default for RejectionLog {
    fn default() -> RejectionLog {
        RejectionLog::new(DEFAULT_WINDOW_SECS)
    }
}

impl RejectionLog {
    /// `window_secs`: how long repeats fold into the same row.
    pub fn new(window_secs: i64) -> RejectionLog {
        RejectionLog {
            window: window_secs.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Records one refusal. `reason` is its precise, stable reason code
    /// (e.g. `psk_wrong`, `malformed_csr`); `event.peer` is the client address
    /// without port; `event.reason` the precise text of this refusal.
    pub async fn record(
        &self,
        store: &Store,
        mut event: AuditEvent,
        reason: &'static str,
    ) -> StoreResult<()> {
        let now = event.at;
        let window = self.window;
        // Held across the store calls so that two identical refusals cannot
        // both open a row; refusals are cheap and the store serialises writes anyway.
        let mut st = self.state.lock().await;
        let mut key = Key {
            peer: event.peer.clone().unwrap_or_else(|| "-".into()),
            reason,
            hostname: event.hostname.clone(),
        };
        if let Some(slot) = st.live(&key, now, window)
            && store.audit_repeat(slot.row_id, now).await?
        {
            return Ok(());
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
        if let Some(slot) = st.live(&key, now, window)
            && store.audit_repeat(slot.row_id, now).await?
        {
            return Ok(());
        }
        let row_id = store.audit_returning_id(&event).await?;
        let slot = Slot {
            row_id,
            opened_at: now,
        };
        // Replacing an expired slot of the same key keeps the peer's count.
        if st.slots.insert(key.clone(), slot).is_none() {
            *st.rows_per_peer.entry(key.peer).or_insert(0) += 1;
        }
        Ok(())
    }
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
        let log = RejectionLog::new(60);
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
}
