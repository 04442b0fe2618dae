//! The renewal decision: a host that holds a certificate from this CA asks
//! for a new one (`POST /v1/renew`, authenticated by that certificate).
//!
//! Same shape as [`crate::decide`]: facts in (the verified CSR, what the
//! store says about the presented certificate, the time, the server's
//! renewal grace), a decision out. The old certificate's names are the
//! allowance, as the PSK's names are for a first issuance, so a renewal can
//! never widen what a host may claim.
//!
//! A certificate that expired less than the grace ago may still renew when
//! it is the host's current one (not revoked, not superseded, no newer
//! certificate for the host, its key not revoked as compromised): a host
//! that was switched off over a holiday is not stranded. Past the grace the
//! refusal names the remedy, a new PSK from the spawner.

use crate::csr::Csr;
use crate::decision::{
    AllowedName, Decision, Profile, check_name_syntax, check_names_allowed, requested_hostname,
};
use crate::error::{Rejection, RenewalRefusal};

/// What the store records about the certificate presented for renewal.
#[derive(Debug, Clone)]
pub struct RenewalGrant {
    /// The certificate's hostname (its CN).
    pub hostname: String,
    /// Every name of the certificate (its SANs, the hostname included).
    pub names: Vec<AllowedName>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub revoked: bool,
    /// Renewed already (`superseded_by` is set).
    pub superseded: bool,
    /// The host has a newer certificate that does not descend from this one
    /// (a new bootstrap with a PSK): this one is no longer the host's current
    /// certificate. Only an expired certificate is refused for it.
    pub replaced: bool,
    /// A certificate with this certificate's key was revoked as `keyCompromise`.
    pub key_compromised: bool,
}

/// How a certificate that may renew stands at the time of the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Inside its validity.
    Current,
    /// Expired this many seconds ago, less than the grace.
    ExpiredWithinGrace { expired_for: i64 },
}

impl RenewalGrant {
    /// Whether the certificate may renew at `now` with a renewal grace of
    /// `grace` seconds (0: never after expiry), before any CSR is looked at.
    pub fn check(&self, now: i64, grace: i64) -> Result<Standing, RenewalRefusal> {
        if self.revoked {
            return Err(RenewalRefusal::Revoked);
        }
        if self.key_compromised {
            return Err(RenewalRefusal::KeyCompromised);
        }
        if self.superseded {
            return Err(RenewalRefusal::Superseded);
        }
        if now < self.not_before {
            return Err(RenewalRefusal::NotYetValid);
        }
        if now < self.not_after {
            return Ok(Standing::Current);
        }
        let expired_for = now - self.not_after;
        // `not_after` is the last valid second's successor, so at
        // `not_after + grace` the grace is over.
        if expired_for >= grace.max(0) {
            return Err(RenewalRefusal::Expired {
                expired_for,
                grace: grace.max(0),
            });
        }
        if self.replaced {
            return Err(RenewalRefusal::Superseded);
        }
        Ok(Standing::ExpiredWithinGrace { expired_for })
    }
}

/// Decides a renewal with a grace of `grace` seconds after expiry: the
/// presented certificate must be renewable at `now` ([`RenewalGrant::check`]),
/// and the CSR must ask for the same hostname and no name the certificate
/// did not have. The new certificate carries the old one's names.
pub fn decide_renewal(csr: &Csr, grant: &RenewalGrant, now: i64, grace: i64) -> Decision {
    match decide_inner(csr, grant, now, grace) {
        Ok(profile) => Decision::Accept(profile),
        Err(r) => Decision::Reject(r),
    }
}

fn decide_inner(
    csr: &Csr,
    grant: &RenewalGrant,
    now: i64,
    grace: i64,
) -> Result<Profile, Rejection> {
    grant.check(now, grace).map_err(Rejection::Renewal)?;
    let host = requested_hostname(csr)?;
    if host != grant.hostname {
        return Err(Rejection::HostnameMismatch {
            certificate: grant.hostname.clone(),
            requested: host.to_owned(),
        });
    }
    check_name_syntax(csr)?;
    check_names_allowed(csr, host, &grant.names)?;
    Ok(Profile::new(host, &grant.names))
}

/// Seconds as a short human text for messages: `3d 4h`, `12m 5s`, `0s`.
pub fn human_secs(secs: i64) -> String {
    let secs = secs.max(0);
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let parts: Vec<String> = units
        .iter()
        .scan(secs, |left, &(size, name)| {
            let n = *left / size;
            *left %= size;
            Some((n, name))
        })
        .filter(|(n, _)| *n > 0)
        .take(2)
        .map(|(n, name)| format!("{n}{name}"))
        .collect();
    if parts.is_empty() {
        "0s".into()
    } else {
        parts.join(" ")
    }
}
