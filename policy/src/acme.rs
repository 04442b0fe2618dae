//! ACME decisions: which identifiers an account's grant lets it order
//! ([`check_order`]) and whether a CSR may finalize an order ([`decide_acme`]).
//!
//! An ACME account is created by spending a PSK (External Account Binding),
//! so its grant is that PSK's: the hostname and the spawner's extra names.
//! Everything an order or a certificate names must lie within it; the CSR
//! is judged by the same name rules as `/v1/sign` (no PSK extension needed:
//! the account authenticated the request).

use crate::csr::{Csr, RequestedName};
use crate::decision::{AllowedName, Decision, Profile, check_name_syntax};
use crate::error::Rejection;
use crate::hostname;
use std::net::IpAddr;

/// Most identifiers in one order (a PSK's grant is small; this bounds work).
pub const MAX_IDENTIFIERS: usize = 100;

/// What an account may order: the grant of the PSK that created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeGrant {
    pub hostname: String,
    pub allowed: Vec<AllowedName>,
}

impl AcmeGrant {
    /// Whether `name` is the hostname or one of the extra names.
    pub fn covers(&self, name: &AllowedName) -> bool {
        match name {
            AllowedName::Dns(d) if *d == self.hostname => true,
            other => self.allowed.contains(other),
        }
    }
}

/// Why an order's identifiers are refused (ACME `rejectedIdentifier`, or
/// `malformed` for an empty or oversized list).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierRefusal {
    #[error("an order must name at least one identifier")]
    Empty,
    #[error("an order names at most {MAX_IDENTIFIERS} identifiers")]
    TooMany,
    #[error("identifier type {0} is not supported (dns and ip only)")]
    UnsupportedType(String),
    #[error("{0}: wildcard names are never issued")]
    Wildcard(String),
    #[error("{name}: not a valid hostname: {error}")]
    InvalidName {
        name: String,
        error: hostname::HostnameError,
    },
    #[error("{0}: not a valid IP address")]
    InvalidIp(String),
    #[error("{0} is not within this account's grant (its PSK's hostname and extra names)")]
    NotGranted(String),
}

impl IdentifierRefusal {
    /// `true` for refusals of the list's shape (`malformed`) rather than of a name.
    pub fn is_malformed(&self) -> bool {
        matches!(self, IdentifierRefusal::Empty | IdentifierRefusal::TooMany)
    }
}

/// Checks an order's identifiers (`(type, value)` pairs as the client sent
/// them) against the grant; the names, deduplicated in order, or the first
/// refusal.
pub fn check_order(
    grant: &AcmeGrant,
    identifiers: &[(String, String)],
) -> Result<Vec<AllowedName>, IdentifierRefusal> {
    if identifiers.is_empty() {
        return Err(IdentifierRefusal::Empty);
    }
    if identifiers.len() > MAX_IDENTIFIERS {
        return Err(IdentifierRefusal::TooMany);
    }
    let mut names: Vec<AllowedName> = Vec::with_capacity(identifiers.len());
    for (kind, value) in identifiers {
        let shown = || hostname::escape_for_display(value);
        let name = match kind.as_str() {
            "dns" => {
                if value.contains('*') {
                    return Err(IdentifierRefusal::Wildcard(shown()));
                }
                hostname::validate(value).map_err(|error| IdentifierRefusal::InvalidName {
                    name: shown(),
                    error,
                })?;
                AllowedName::Dns(value.clone())
            }
            "ip" => AllowedName::Ip(
                value
                    .parse::<IpAddr>()
                    .map_err(|_| IdentifierRefusal::InvalidIp(shown()))?,
            ),
            other => {
                return Err(IdentifierRefusal::UnsupportedType(
                    hostname::escape_for_display(other),
                ));
            }
        };
        if !grant.covers(&name) {
            return Err(IdentifierRefusal::NotGranted(name.to_string()));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Decides whether `csr` may finalize an order for `order` (names already
/// checked by [`check_order`], checked again here) of an account with
/// `grant`. The CSR's names (subject CN and SANs together) must be exactly
/// the order's, as RFC 8555 §7.4 requires; the certificate gets the host
/// profile: CN the grant's hostname when ordered (else the first DNS name
/// ordered), SANs the ordered names.
pub fn decide_acme(csr: &Csr, grant: &AcmeGrant, order: &[AllowedName]) -> Decision {
    match decide_inner(csr, grant, order) {
        Ok(p) => Decision::Accept(p),
        Err(r) => Decision::Reject(r),
    }
}

fn decide_inner(csr: &Csr, grant: &AcmeGrant, order: &[AllowedName]) -> Result<Profile, Rejection> {
    check_name_syntax(csr)?;
    if csr.common_names.len() > 1 {
        return Err(Rejection::NameNotAllowed(format!(
            "{} (the subject may hold at most one commonName)",
            hostname::escape_for_display(&csr.common_names[0])
        )));
    }
    let mut requested: Vec<AllowedName> = Vec::new();
    for cn in &csr.common_names {
        let name = match cn.parse::<IpAddr>() {
            Ok(ip) => AllowedName::Ip(ip),
            Err(_) => {
                hostname::validate(cn).map_err(|error| Rejection::InvalidHostname {
                    name: cn.clone(),
                    error,
                })?;
                AllowedName::Dns(cn.clone())
            }
        };
        requested.push(name);
    }
    for name in &csr.requested_names {
        let name = match name {
            RequestedName::Dns(d) => AllowedName::Dns(d.clone()),
            RequestedName::Ip(ip) => AllowedName::Ip(*ip),
            other => return Err(Rejection::NameNotAllowed(other.to_string())),
        };
        if !requested.contains(&name) {
            requested.push(name);
        }
    }
    for name in &requested {
        if !order.contains(name) {
            return Err(Rejection::NameNotAllowed(format!(
                "{name} (not an identifier of this order)"
            )));
        }
    }
    for name in order {
        if !grant.covers(name) {
            return Err(Rejection::NameNotAllowed(format!(
                "{name} (not within the account's grant)"
            )));
        }
        if !requested.contains(name) {
            return Err(Rejection::NameNotAllowed(format!(
                "{name} (ordered but missing from the CSR)"
            )));
        }
    }
    let cn = if order.contains(&AllowedName::Dns(grant.hostname.clone())) {
        grant.hostname.clone()
    } else {
        order
            .iter()
            .find_map(|n| match n {
                AllowedName::Dns(d) => Some(d.clone()),
                AllowedName::Ip(_) => None,
            })
            .ok_or_else(|| {
                Rejection::NameNotAllowed(
                    "an order of IP addresses only (a certificate needs a DNS name for its CN)"
                        .into(),
                )
            })?
    };
    let extra: Vec<AllowedName> = order
        .iter()
        .filter(|n| **n != AllowedName::Dns(cn.clone()))
        .cloned()
        .collect();
    Ok(Profile::new(&cn, &extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> AcmeGrant {
        AcmeGrant {
            hostname: "a.example.internal".into(),
            allowed: vec![
                AllowedName::Dns("alias.example.internal".into()),
                AllowedName::Ip("10.0.0.5".parse().unwrap()),
            ],
        }
    }

    fn ids(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn csr(cn: &[&str], sans: Vec<RequestedName>) -> Csr {
        Csr {
            common_names: cn.iter().map(|s| s.to_string()).collect(),
            requested_names: sans,
            key: crate::KeyKind::EcdsaP256,
            signature: crate::SignatureKind::EcdsaSha256,
            spki_der: vec![],
            psk: None,
            ignored_extensions: vec![],
        }
    }

    #[test]
    fn orders_within_the_grant_pass_and_everything_else_is_refused() {
        let g = grant();
        let ok = check_order(
            &g,
            &ids(&[
                ("dns", "a.example.internal"),
                ("ip", "10.0.0.5"),
                ("dns", "a.example.internal"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            check_order(&g, &ids(&[("dns", "b.example.internal")])),
            Err(IdentifierRefusal::NotGranted("b.example.internal".into()))
        );
        assert!(matches!(
            check_order(&g, &ids(&[("dns", "*.example.internal")])),
            Err(IdentifierRefusal::Wildcard(n)) if n.contains("*.example.internal")
        ));
        assert_eq!(
            check_order(&g, &ids(&[("ip", "10.0.0.6")])),
            Err(IdentifierRefusal::NotGranted("10.0.0.6".into()))
        );
        assert!(matches!(
            check_order(&g, &ids(&[("email", "x@y")])),
            Err(IdentifierRefusal::UnsupportedType(_))
        ));
        assert_eq!(check_order(&g, &[]), Err(IdentifierRefusal::Empty));
    }

    #[test]
    fn the_csr_must_name_exactly_the_order() {
        let g = grant();
        let order = vec![
            AllowedName::Dns("a.example.internal".into()),
            AllowedName::Dns("alias.example.internal".into()),
        ];
        let sans = || {
            vec![
                RequestedName::Dns("alias.example.internal".into()),
                RequestedName::Dns("a.example.internal".into()),
            ]
        };
        // certbot sends no CN; lego sends the first name as CN.
        for cn in [&[][..], &["alias.example.internal"][..]] {
            match decide_acme(&csr(cn, sans()), &g, &order) {
                Decision::Accept(p) => {
                    assert_eq!(p.hostname, "a.example.internal");
                    assert_eq!(p.sans, order);
                }
                other => panic!("{other:?}"),
            }
        }
        let short = csr(&[], vec![RequestedName::Dns("a.example.internal".into())]);
        assert!(matches!(
            decide_acme(&short, &g, &order),
            Decision::Reject(Rejection::NameNotAllowed(m)) if m.contains("missing from the CSR")
        ));
        let mut extra = sans();
        extra.push(RequestedName::Ip("10.0.0.5".parse().unwrap()));
        assert!(matches!(
            decide_acme(&csr(&[], extra), &g, &order),
            Decision::Reject(Rejection::NameNotAllowed(m)) if m.contains("not an identifier")
        ));
        let wild = csr(&[], vec![RequestedName::Dns("*.example.internal".into())]);
        assert!(matches!(
            decide_acme(&wild, &g, &order),
            Decision::Reject(Rejection::InvalidHostname { .. })
        ));
        // An order outside the grant never signs, even if it got stored.
        let foreign = vec![AllowedName::Dns("b.example.internal".into())];
        let b = csr(&[], vec![RequestedName::Dns("b.example.internal".into())]);
        assert!(matches!(
            decide_acme(&b, &g, &foreign),
            Decision::Reject(Rejection::NameNotAllowed(m)) if m.contains("grant")
        ));
    }
}
