//! The renewal decision: the old certificate's state and names decide, with
//! the same CSR rules as a first issuance; a property test that a renewal
//! never grants a name the old certificate did not have.

use policy::csr;
use policy::{
    AllowedName, Decision, Profile, Rejection, RejectionClass, RenewalGrant, RenewalRefusal,
    Standing, decide_renewal,
};
use proptest::prelude::*;

const HOST: &str = "web1.example.internal";
const NOW: i64 = 1_800_000_000;
/// The default renewal grace, 14 days.
const GRACE: i64 = 14 * 86_400;

fn csr_for(cn: &str, sans: &[String]) -> policy::Csr {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    csr::parse(pem.as_bytes()).unwrap()
}

fn grant() -> RenewalGrant {
    RenewalGrant {
        hostname: HOST.into(),
        names: vec![
            AllowedName::Dns(HOST.into()),
            AllowedName::Dns("www.example.internal".into()),
            AllowedName::Ip("10.0.0.5".parse().unwrap()),
        ],
        not_before: NOW - 86_400,
        not_after: NOW + 86_400,
        revoked: false,
        superseded: false,
        replaced: false,
        key_compromised: false,
    }
}

fn rejected(d: Decision) -> Rejection {
    match d {
        Decision::Reject(r) => r,
        Decision::Accept(p) => panic!("accepted: {p:?}"),
    }
}

#[test]
fn a_valid_certificate_renews_with_its_own_names() {
    // The CSR asks only for the hostname; the new certificate keeps every old name.
    let d = decide_renewal(&csr_for(HOST, &[HOST.into()]), &grant(), NOW, GRACE);
    assert_eq!(
        d,
        Decision::Accept(Profile {
            hostname: HOST.into(),
            sans: grant().names,
        })
    );
    // Asking for names the certificate had is fine too.
    let csr = csr_for(HOST, &["www.example.internal".into(), "10.0.0.5".into()]);
    assert!(matches!(
        decide_renewal(&csr, &grant(), NOW, GRACE),
        Decision::Accept(_)
    ));
}

#[test]
fn revoked_superseded_expired_and_early_certificates_cannot_renew() {
    let csr = csr_for(HOST, &[HOST.into()]);
    type Change = fn(&mut RenewalGrant);
    let expired = |expired_for, grace| RenewalRefusal::Expired { expired_for, grace };
    let cases: [(Change, i64, i64, RenewalRefusal); 7] = [
        (|g| g.revoked = true, NOW, GRACE, RenewalRefusal::Revoked),
        (
            |g| g.superseded = true,
            NOW,
            GRACE,
            RenewalRefusal::Superseded,
        ),
        (
            |g| g.key_compromised = true,
            NOW,
            GRACE,
            RenewalRefusal::KeyCompromised,
        ),
        // Grace 0: expired is final, from the first second.
        (|_| {}, NOW + 86_400, 0, expired(0, 0)),
        (|_| {}, NOW + 90_000, 0, expired(3_600, 0)),
        // Past the grace: the exact boundary is past it.
        (|_| {}, NOW + 86_400 + GRACE, GRACE, expired(GRACE, GRACE)),
        (|_| {}, NOW - 86_401, GRACE, RenewalRefusal::NotYetValid),
    ];
    for (change, now, grace, want) in cases {
        let mut g = grant();
        change(&mut g);
        let r = rejected(decide_renewal(&csr, &g, now, grace));
        assert_eq!(r, Rejection::Renewal(want));
        assert_eq!(r.class(), RejectionClass::Forbidden);
        assert_eq!(r.code(), want.code());
    }
    // Revocation wins over everything else, and is decided before the CSR's names.
    let mut g = grant();
    g.revoked = true;
    g.superseded = true;
    let other = csr_for("evil.example.internal", &["evil.example.internal".into()]);
    assert_eq!(
        rejected(decide_renewal(&other, &g, NOW + 10 * 86_400, GRACE)),
        Rejection::Renewal(RenewalRefusal::Revoked)
    );
    // The last second of validity still renews.
    assert!(matches!(
        decide_renewal(&csr, &grant(), NOW + 86_399, 0),
        Decision::Accept(_)
    ));
}

#[test]
fn an_expired_current_certificate_renews_within_the_grace_only() {
    let csr = csr_for(HOST, &[HOST.into()]);
    let g = grant();
    let expiry = g.not_after;
    // The first second after expiry and the last second of the grace renew.
    for now in [expiry, expiry + GRACE - 1] {
        assert!(
            matches!(decide_renewal(&csr, &g, now, GRACE), Decision::Accept(_)),
            "{now}"
        );
    }
    assert_eq!(
        g.check(expiry + 60, GRACE),
        Ok(Standing::ExpiredWithinGrace { expired_for: 60 })
    );
    assert_eq!(g.check(expiry - 1, GRACE), Ok(Standing::Current));
    // The grace does not open anything else: revoked, superseded, replaced by a
    // newer bootstrap, a compromised key, another hostname.
    type Change = fn(&mut RenewalGrant);
    let cases: [(Change, RenewalRefusal); 4] = [
        (|g| g.revoked = true, RenewalRefusal::Revoked),
        (|g| g.superseded = true, RenewalRefusal::Superseded),
        (|g| g.replaced = true, RenewalRefusal::Superseded),
        (|g| g.key_compromised = true, RenewalRefusal::KeyCompromised),
    ];
    for (change, want) in cases {
        let mut g = grant();
        change(&mut g);
        let r = rejected(decide_renewal(&csr, &g, expiry + 60, GRACE));
        assert_eq!(r, Rejection::Renewal(want));
    }
    // A newer bootstrap does not stop a certificate that is still valid
    // (as before the grace existed): only the expired path asks for it.
    let mut replaced = grant();
    replaced.replaced = true;
    assert!(matches!(
        decide_renewal(&csr, &replaced, NOW, GRACE),
        Decision::Accept(_)
    ));
    let other = csr_for("db1.example.internal", &["db1.example.internal".into()]);
    assert_eq!(
        rejected(decide_renewal(&other, &g, expiry + 60, GRACE)).code(),
        "hostname_mismatch"
    );
    // Past the grace: 403 renewal_expired, and the message names the remedy.
    let r = rejected(decide_renewal(&csr, &g, expiry + GRACE + 3_600, GRACE));
    assert_eq!(r.code(), "renewal_expired");
    assert_eq!(r.class(), RejectionClass::Forbidden);
    let msg = r.client_message();
    assert!(msg.contains("ca-server psk add HOST"), "{msg}");
    assert!(
        msg.contains("expired 14d 1h ago, beyond the renewal grace of 14d"),
        "{msg}"
    );
    let off = rejected(decide_renewal(&csr, &g, expiry + 5, 0)).client_message();
    assert!(
        off.contains("expired 5s ago and renewal after expiry is off"),
        "{off}"
    );
}

#[test]
fn durations_in_messages_are_short() {
    assert_eq!(policy::renewal::human_secs(0), "0s");
    assert_eq!(policy::renewal::human_secs(-5), "0s");
    assert_eq!(policy::renewal::human_secs(59), "59s");
    assert_eq!(policy::renewal::human_secs(3_725), "1h 2m");
    assert_eq!(policy::renewal::human_secs(14 * 86_400), "14d");
}

#[test]
fn another_hostname_or_a_new_name_is_refused() {
    let r = rejected(decide_renewal(
        &csr_for("db1.example.internal", &["db1.example.internal".into()]),
        &grant(),
        NOW,
        GRACE,
    ));
    assert!(matches!(r, Rejection::HostnameMismatch { .. }), "{r:?}");
    assert_eq!(r.code(), "hostname_mismatch");
    assert_eq!(r.class(), RejectionClass::Refused);

    for extra in ["api.example.internal", "10.0.0.6"] {
        let r = rejected(decide_renewal(
            &csr_for(HOST, &[HOST.into(), extra.into()]),
            &grant(),
            NOW,
            GRACE,
        ));
        assert_eq!(r.code(), "name_not_allowed", "{extra}: {r:?}");
    }
    let r = rejected(decide_renewal(
        &csr_for(HOST, &["*.example.internal".into()]),
        &grant(),
        NOW,
        GRACE,
    ));
    assert_eq!(r.code(), "invalid_hostname");
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,10}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the CSR asks for, an accepted renewal's names are exactly the
    /// old certificate's, and a requested name outside them is refused.
    #[test]
    fn a_renewal_never_grants_a_name_the_certificate_did_not_have(
        labels in proptest::collection::vec(dns_label(), 0..4),
    ) {
        let asked: Vec<String> = labels.iter().map(|l| format!("{l}.example.internal")).collect();
        let mut sans = vec![HOST.to_string()];
        sans.extend(asked.iter().cloned());
        let g = grant();
        match decide_renewal(&csr_for(HOST, &sans), &g, NOW, GRACE) {
            Decision::Accept(p) => {
                prop_assert_eq!(p.sans, g.names.clone());
                for a in &asked {
                    prop_assert!(g.names.contains(&AllowedName::Dns(a.clone())));
                }
            }
            Decision::Reject(r) => {
                prop_assert_eq!(r.code(), "name_not_allowed");
                prop_assert!(asked.iter().any(|a| !g.names.contains(&AllowedName::Dns(a.clone()))));
            }
        }
    }
}
