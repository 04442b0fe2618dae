//! Refusal, written once: every flow that refuses a request (sign, renew,
//! ACME, admin authentication) counts it against the client's address (the
//! throttle), audits it through the aggregating rejection log, and then hands
//! back its own error.

use crate::issue::sign::Authority;
use crate::issue::throttle::Weight;
use crate::store::{AuditEvent, Event, Outcome};
use std::net::SocketAddr;

/// One refused request, as the audit log records it.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub event: Event,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    /// The audit row's reason (already clipped where it holds untrusted text).
    pub reason: String,
    pub actor: Option<String>,
    /// What the rejection log aggregates repeats on (the precise reason code).
    pub key: &'static str,
    /// How much it counts against the address; `None`: not counted here.
    pub weight: Option<Weight>,
    /// Names the refusal in the log line if its audit row cannot be written.
    pub what: &'static str,
}

impl Authority {
    /// Counts `r` against `peer`'s address and audits it. A store failure
    /// while auditing is logged, not hidden behind the refusal.
    pub(crate) async fn refuse(&self, now: i64, peer: SocketAddr, r: Refusal) {
        if let Some(weight) = r.weight {
            self.count_refusal(peer, weight);
        }
        let event = AuditEvent {
            at: now,
            event: r.event.into(),
            hostname: r.hostname,
            serial: r.serial,
            outcome: Outcome::Rejected.into(),
            reason: Some(r.reason),
            peer: Some(peer.ip().to_string()),
            actor: r.actor,
            ..Default::default()
        };
        if let Err(e) = self.rejections.record(&self.store, event, r.key).await {
            tracing::error!(error = %e, "could not write the audit row for {}", r.what);
        }
    }
}
