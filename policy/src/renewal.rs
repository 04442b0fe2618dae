//! The renewal decision: a host that holds a valid certificate from this CA
//! asks for a new one (`POST /v1/renew`, authenticated by that certificate).
//!
//! Same shape as [`crate::decide`]: facts in (the verified CSR, what the
//! store says about the presented certificate, the time), a decision out.
//! The old certificate's names are the allowance, as the PSK's names are for
//! a first issuance, so a renewal can never widen what a host may claim.

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
    pub superseded: bool,
}

impl RenewalGrant {
    /// Whether the certificate may renew at `now`, before any CSR is looked at.
    pub fn check(&self, now: i64) -> Result<(), RenewalRefusal> {
        if self.revoked {
            Err(RenewalRefusal::Revoked)
        } else if self.superseded {
            Err(RenewalRefusal::Superseded)
        } else if now >= self.not_after {
            Err(RenewalRefusal::Expired)
        } else if now < self.not_before {
            Err(RenewalRefusal::NotYetValid)
        } else {
            Ok(())
        }
    }
}

/// Decides a renewal: the presented certificate must be valid at `now`
/// (unrevoked, unexpired, not already renewed), and the CSR must ask for the
/// same hostname and no name the certificate did not have. The new
/// certificate carries the old one's names.
pub fn decide_renewal(csr: &Csr, grant: &RenewalGrant, now: i64) -> Decision {
    match decide_inner(csr, grant, now) {
        Ok(profile) => Decision::Accept(profile),
        Err(r) => Decision::Reject(r),
    }
}

fn decide_inner(csr: &Csr, grant: &RenewalGrant, now: i64) -> Result<Profile, Rejection> {
    grant.check(now).map_err(Rejection::Renewal)?;
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
