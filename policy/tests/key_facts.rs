//! The rules callers feed with facts: the key's (`check_key`), the URL's
//! certname, a failed PSK's retry and burn, and the decision with a PSK
//! hashed once by the caller (`decide_hashed`).

use policy::psk::{self, Psk};
use policy::{
    Decision, KeyFacts, PskEntry, PskFailure, Rejection, check_key, decide, decide_hashed,
};

const HOST: &str = "web1.example.internal";
const NOW: i64 = 1_800_000_000;

fn csr_with_psk(psk: &str) -> policy::Csr {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![HOST.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, HOST);
    let value = psk::encode_extension_value(&Psk::new(psk.into()).unwrap());
    params
        .custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            psk::PSK_OID,
            value.to_vec(),
        ));
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    policy::csr::parse(&der).unwrap()
}

fn entry(psk: &str) -> PskEntry {
    PskEntry {
        hostname: HOST.into(),
        psk_hash: Psk::new(psk.into()).unwrap().hash(),
        allowed_sans: vec![],
        expires_at: NOW + 3600,
    }
}

#[test]
fn the_cas_own_key_and_a_compromised_key_are_refused_and_nothing_else_is() {
    assert_eq!(check_key(KeyFacts::default()), Ok(()));
    let own = check_key(KeyFacts {
        ca_own_key: true,
        compromised: false,
    })
    .unwrap_err();
    assert!(
        matches!(&own, Rejection::KeyNotAllowed(m) if m == "the CA's own public key"),
        "{own:?}"
    );
    let compromised = check_key(KeyFacts {
        ca_own_key: false,
        compromised: true,
    })
    .unwrap_err();
    assert!(
        matches!(&compromised, Rejection::KeyNotAllowed(m) if m.contains("keyCompromise")),
        "{compromised:?}"
    );
    // The CA's own key is named first when both hold.
    assert_eq!(
        check_key(KeyFacts {
            ca_own_key: true,
            compromised: true
        }),
        Err(own)
    );
}

#[test]
fn decide_hashed_decides_as_decide_with_the_callers_hash() {
    let psk = "key-facts-psk-0123456789abcdefghijklmnop";
    let csr = csr_with_psk(psk);
    let e = entry(psk);
    let hash = csr.psk.as_ref().unwrap().hash();
    assert!(matches!(decide(&csr, Some(&e), NOW), Decision::Accept(_)));
    assert!(matches!(
        decide_hashed(&csr, Some(&hash), Some(&e), NOW),
        Decision::Accept(_)
    ));
    // The hash given is the one compared: another PSK's hash is a wrong PSK.
    let other = Psk::new("another-psk-0123456789abcdefghijklmnopq".into())
        .unwrap()
        .hash();
    assert!(matches!(
        decide_hashed(&csr, Some(&other), Some(&e), NOW),
        Decision::Reject(Rejection::Psk(PskFailure::Wrong))
    ));
    assert!(matches!(
        decide_hashed(&csr, None, Some(&e), NOW),
        Decision::Reject(Rejection::Psk(PskFailure::Missing))
    ));
}

#[test]
fn a_named_route_signs_only_its_certname() {
    assert_eq!(policy::check_certname(None, HOST), Ok(()));
    assert_eq!(policy::check_certname(Some(HOST), HOST), Ok(()));
    assert_eq!(
        policy::check_certname(Some("web2.example.internal"), HOST),
        Err(Rejection::CertnameMismatch {
            certname: "web2.example.internal".into(),
            cn: HOST.into()
        })
    );
}

#[test]
fn a_spent_psk_may_be_a_retry_and_an_expired_one_burns() {
    use PskFailure::*;
    for (f, retry, burns) in [
        (Missing, false, false),
        (UnknownHost, true, false),
        (Wrong, true, false),
        (Used, true, false),
        (Expired, false, true),
    ] {
        assert_eq!(f.may_be_retry(), retry, "{f:?}");
        assert_eq!(f.burns_psk(), burns, "{f:?}");
    }
}

#[test]
fn only_the_same_key_within_the_psks_lifetime_and_unrevoked_gets_its_certificate_back() {
    let issued = policy::IssuedUnderPsk {
        same_key: true,
        psk_expires_at: Some(NOW + 1),
        revoked: false,
    };
    assert!(issued.answers_retry(NOW));
    // The PSK's lifetime ends at its expiry second.
    assert!(!issued.answers_retry(NOW + 1));
    assert!(
        !policy::IssuedUnderPsk {
            same_key: false,
            ..issued
        }
        .answers_retry(NOW)
    );
    assert!(
        !policy::IssuedUnderPsk {
            revoked: true,
            ..issued
        }
        .answers_retry(NOW)
    );
    assert!(
        !policy::IssuedUnderPsk {
            psk_expires_at: None,
            ..issued
        }
        .answers_retry(NOW)
    );
}
