//! The autosign decision: a verified CSR, the spawner's PSK entry for its
//! hostname and the current time in; `Accept(profile)` or `Reject(reason)` out.
//!
//! Order matters for what a caller can learn: rules that depend only on the
//! CSR (hostname syntax, SAN types) come first and are safe to disclose; the
//! PSK is authenticated next with one generic answer for every failure; only
//! a caller who holds the PSK learns which extra names it allows.

use crate::csr::{Csr, RequestedName};
use crate::error::{PskFailure, Rejection};
use crate::hostname;
use crate::psk::PskHash;
use std::net::IpAddr;

/// A name the spawner allowed for a PSK beyond the hostname (`psk add --san`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum AllowedName {
    Dns(String),
    Ip(IpAddr),
}

impl AllowedName {
    /// Parses `--san` input: an IP literal, or a hostname under the hostname rules.
    pub fn parse(s: &str) -> Result<AllowedName, hostname::HostnameError> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AllowedName::Ip(ip));
        }
        hostname::validate(s)?;
        Ok(AllowedName::Dns(s.to_owned()))
    }
}

impl std::fmt::Display for AllowedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AllowedName::Dns(n) => f.write_str(n),
            AllowedName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// The spawner's entry for one hostname, as the store holds it.
#[derive(Debug, Clone)]
pub struct PskEntry {
    pub hostname: String,
    pub psk_hash: PskHash,
    pub allowed_sans: Vec<AllowedName>,
    /// Unix seconds; the PSK is valid while `now < expires_at`.
    pub expires_at: i64,
}

/// What the certificate will say, decided by policy alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Subject CN and first SAN.
    pub hostname: String,
    /// Every SAN: the hostname first, then the names the spawner allowed.
    pub sans: Vec<AllowedName>,
}

impl Profile {
    /// `host` first, then each of `extra` not already listed.
    pub fn new(host: &str, extra: &[AllowedName]) -> Profile {
        let mut sans = vec![AllowedName::Dns(host.to_owned())];
        for name in extra {
            if !sans.contains(name) {
                sans.push(name.clone());
            }
        }
        Profile {
            hostname: host.to_owned(),
            sans,
        }
    }
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept(Profile),
    Reject(Rejection),
}

/// The hostname the CSR asks for: its single subject CN, validated.
/// Depends on the CSR alone, so it is safe to check before any PSK lookup.
pub fn requested_hostname(csr: &Csr) -> Result<&str, Rejection> {
    let name = match csr.common_names.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err(Rejection::InvalidHostname {
                name: String::new(),
                error: hostname::HostnameError::Empty,
            });
        }
        [first, ..] => {
            return Err(Rejection::NameNotAllowed(format!(
                "{} (the subject must hold exactly one commonName)",
                first
            )));
        }
    };
    hostname::validate(name).map_err(|error| Rejection::InvalidHostname {
        name: name.to_owned(),
        error,
    })?;
    Ok(name)
}

/// Decides whether `csr` may be signed, given the PSK entry stored for its
/// hostname (`None` if there is none) and `now` in Unix seconds.
pub fn decide(csr: &Csr, entry: Option<&PskEntry>, now: i64) -> Decision {
    let psk_hash = csr.psk.as_ref().map(|p| p.hash());
    decide_hashed(csr, psk_hash.as_ref(), entry, now)
}

/// [`decide`] with the hash of the CSR's PSK already computed (`None` when
/// the CSR carries none), so a flow that needs the hash again (to spend the
/// PSK) hashes it once.
pub fn decide_hashed(
    csr: &Csr,
    psk_hash: Option<&PskHash>,
    entry: Option<&PskEntry>,
    now: i64,
) -> Decision {
    match decide_inner(csr, psk_hash, entry, now) {
        Ok(profile) => Decision::Accept(profile),
        Err(rejection) => Decision::Reject(rejection),
    }
}

fn decide_inner(
    csr: &Csr,
    psk_hash: Option<&PskHash>,
    entry: Option<&PskEntry>,
    now: i64,
) -> Result<Profile, Rejection> {
    let host = requested_hostname(csr)?;
    check_name_syntax(csr)?;

    // PSK authentication: one generic answer outside, precise reason inside.
    let psk_hash = psk_hash.ok_or(Rejection::Psk(PskFailure::Missing))?;
    let entry = entry.ok_or(Rejection::Psk(PskFailure::UnknownHost))?;
    if entry.hostname != host {
        return Err(Rejection::Psk(PskFailure::UnknownHost));
    }
    if !psk_hash.ct_eq(&entry.psk_hash) {
        return Err(Rejection::Psk(PskFailure::Wrong));
    }
    if now >= entry.expires_at {
        return Err(Rejection::Psk(PskFailure::Expired));
    }

    // Names the PSK allows: the hostname and the spawner's extra names, nothing else.
    check_names_allowed(csr, host, &entry.allowed_sans)?;
    Ok(Profile::new(host, &entry.allowed_sans))
}

/// What the caller knows about a CSR's public key that the CSR cannot say:
/// whether it is one of the CA's own keys, and whether a certificate for it
/// was revoked as compromised. Facts, gathered by the caller (the signer, the
/// store); the rule on them is here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyFacts {
    pub ca_own_key: bool,
    pub compromised: bool,
}

/// Refuses a key that is the CA's own, or was revoked as compromised: on
/// any route and for any host.
pub fn check_key(facts: KeyFacts) -> Result<(), Rejection> {
    if facts.ca_own_key {
        return Err(Rejection::KeyNotAllowed("the CA's own public key".into()));
    }
    if facts.compromised {
        return Err(Rejection::KeyNotAllowed(
            "a key revoked as compromised (keyCompromise)".into(),
        ));
    }
    Ok(())
}

/// A route that names the host in its URL (Puppet's
/// `certificate_request/{certname}`) gets a certificate only for that name:
/// the CSR's hostname must be `certname`.
pub fn check_certname(certname: Option<&str>, host: &str) -> Result<(), Rejection> {
    match certname {
        Some(certname) if certname != host => Err(Rejection::CertnameMismatch {
            certname: certname.to_owned(),
            cn: host.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// What the store knows about a certificate already issued against the PSK
/// a failed request presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedUnderPsk {
    /// Its public key is the one the request's CSR carries.
    pub same_key: bool,
    /// When the PSK it was issued against expired(s), Unix seconds.
    pub psk_expires_at: Option<i64>,
    pub revoked: bool,
}

/// The rules for a PSK that did not authenticate, beyond the refusal itself.
impl PskFailure {
    /// Whether this failure may be the retry of a request that succeeded
    /// (its response lost): the PSK was spent, so it now looks unknown,
    /// wrong (replaced) or used. Then the certificates issued under it are
    /// looked at, and any means the PSK counts as used.
    pub fn may_be_retry(self) -> bool {
        matches!(
            self,
            PskFailure::UnknownHost | PskFailure::Wrong | PskFailure::Used
        )
    }

    /// Whether the PSK is burned: an expired PSK can never work again.
    pub fn burns_psk(self) -> bool {
        self == PskFailure::Expired
    }
}

impl IssuedUnderPsk {
    /// Whether this certificate is the answer to the retry at `now`: the same
    /// key, within the PSK's original lifetime, not revoked.
    pub fn answers_retry(&self, now: i64) -> bool {
        self.same_key && self.psk_expires_at.is_some_and(|t| now < t) && !self.revoked
    }
}

/// Static name rules: any wildcard or malformed DNS name, any SAN type other
/// than DNS or IP, is refused whoever asks.
pub(crate) fn check_name_syntax(csr: &Csr) -> Result<(), Rejection> {
    for name in &csr.requested_names {
        match name {
            RequestedName::Dns(dns) => {
                hostname::validate(dns).map_err(|error| Rejection::InvalidHostname {
                    name: dns.clone(),
                    error,
                })?
            }
            RequestedName::Ip(_) => {}
            other => {
                return Err(Rejection::NameNotAllowed(format!(
                    "{other} (only DNS and IP names can be requested)"
                )));
            }
        }
    }
    Ok(())
}

/// Every requested name must be `host` or one of `allowed`.
pub(crate) fn check_names_allowed(
    csr: &Csr,
    host: &str,
    allowed: &[AllowedName],
) -> Result<(), Rejection> {
    for name in &csr.requested_names {
        let ok = match name {
            RequestedName::Dns(dns) => {
                dns == host
                    || allowed
                        .iter()
                        .any(|a| matches!(a, AllowedName::Dns(d) if d == dns))
            }
            RequestedName::Ip(ip) => allowed
                .iter()
                .any(|a| matches!(a, AllowedName::Ip(i) if i == ip)),
            _ => false,
        };
        if !ok {
            return Err(Rejection::NameNotAllowed(name.to_string()));
        }
    }
    Ok(())
}
