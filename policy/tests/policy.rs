//! Policy tests: CSRs made by openssl (fixtures/regen.sh) and by rcgen, one
//! test per rejection reason, and property tests that names outside the PSK's
//! allowance are never accepted.

use policy::csr::{self, KeyKind, RequestedName, SignatureKind};
use policy::psk::{self, Psk};
use policy::{
    AllowedName, Decision, Malformed, PskEntry, PskFailure, Rejection, RejectionClass, decide,
};
use proptest::prelude::*;
use std::net::IpAddr;

const HOST: &str = "web1.example.internal";
const FIXTURE_PSK: &str = "fixture-psk-0123456789abcdefghijklmnop";
const NOW: i64 = 1_800_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn entry_for(psk: &str, sans: Vec<AllowedName>, expires_at: i64) -> PskEntry {
    PskEntry {
        hostname: HOST.into(),
        psk_hash: Psk::new(psk.into()).unwrap().hash(),
        allowed_sans: sans,
        expires_at,
    }
}

fn fixture_entry() -> PskEntry {
    entry_for(FIXTURE_PSK, vec![], NOW + 3600)
}

fn rejection(input: &[u8]) -> Rejection {
    csr::parse(input).expect_err("should be rejected")
}

/// A CSR built with rcgen the way ca-client builds it.
fn rcgen_csr(
    alg: &'static rcgen::SignatureAlgorithm,
    cn: &str,
    sans: &[&str],
    psk: Option<&str>,
) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    if let Some(p) = psk {
        let value = psk::encode_extension_value(&Psk::new(p.into()).unwrap());
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                psk::PSK_OID,
                value.to_vec(),
            ));
    }
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[test]
fn openssl_csrs_of_every_allowed_key_type_are_accepted() {
    for (file, key, sig) in [
        ("p256.der", KeyKind::EcdsaP256, SignatureKind::EcdsaSha256),
        ("p256.pem", KeyKind::EcdsaP256, SignatureKind::EcdsaSha256),
        ("p384.der", KeyKind::EcdsaP384, SignatureKind::EcdsaSha384),
        ("ed25519.der", KeyKind::Ed25519, SignatureKind::Ed25519),
        (
            "rsa2048.der",
            KeyKind::Rsa { bits: 2048 },
            SignatureKind::RsaPkcs1Sha256,
        ),
        (
            "rsa2048-pss.der",
            KeyKind::Rsa { bits: 2048 },
            SignatureKind::RsaPssSha256,
        ),
    ] {
        let csr = csr::parse(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(csr.key, key, "{file}");
        assert_eq!(csr.signature, sig, "{file}");
        assert_eq!(csr.common_names, vec![HOST.to_string()]);
        assert_eq!(csr.psk.as_ref().map(|p| p.expose()), Some(FIXTURE_PSK));
        let Decision::Accept(profile) = decide(&csr, Some(&fixture_entry()), NOW) else {
            panic!("{file} not accepted");
        };
        assert_eq!(profile.hostname, HOST);
        assert_eq!(profile.sans, vec![AllowedName::Dns(HOST.into())]);
    }
}

#[test]
fn challenge_password_carries_the_psk_too() {
    let csr = csr::parse(&fixture("p256-challenge-password.der")).unwrap();
    assert_eq!(csr.psk.as_ref().map(|p| p.expose()), Some(FIXTURE_PSK));
    assert!(matches!(
        decide(&csr, Some(&fixture_entry()), NOW),
        Decision::Accept(_)
    ));
}

/// A CSR whose challengePassword is a PrintableString holding `psk` as is,
/// the way Ruby's OpenSSL writes Puppet's `custom_attributes`.
fn printable_challenge_password_csr(psk: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, HOST);
    let mut values = vec![0x31, psk.len() as u8 + 2, 0x13, psk.len() as u8];
    values.extend_from_slice(psk.as_bytes());
    let attr = rcgen::Attribute {
        oid: &[1, 2, 840, 113549, 1, 9, 7],
        values,
    };
    params
        .serialize_request_with_attributes(&key, vec![attr])
        .unwrap()
        .der()
        .to_vec()
}

#[test]
fn a_puppet_style_challenge_password_with_underscores_is_read() {
    // `_` is outside PrintableString's alphabet, but Puppet agents send it so.
    let psk = "Zg4iPgx_OFNITw_dRhJ05omhxk-QEymzPbWJbcZubaw";
    let der = printable_challenge_password_csr(psk);
    let csr = csr::parse(&der).unwrap();
    assert_eq!(csr.psk.as_ref().map(|p| p.expose()), Some(psk));
    assert!(matches!(
        decide(&csr, Some(&entry_for(psk, vec![], NOW + 60)), NOW),
        Decision::Accept(_)
    ));
    // The signature is still checked over the bytes as sent.
    let mut tampered = der.clone();
    let at = tampered
        .windows(psk.len())
        .position(|w| w == psk.as_bytes())
        .unwrap();
    tampered[at] ^= 0x01;
    assert_eq!(rejection(&tampered), Rejection::BadSignature);
}

#[test]
fn rcgen_csrs_with_the_shared_encoder_are_accepted() {
    let psk = "A".repeat(43);
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let der = rcgen_csr(alg, HOST, &[HOST], Some(&psk));
        let csr = csr::parse(&der).unwrap();
        let entry = entry_for(&psk, vec![], NOW + 10);
        assert!(matches!(
            decide(&csr, Some(&entry), NOW),
            Decision::Accept(_)
        ));
    }
}

#[test]
fn weak_and_exotic_keys_are_refused() {
    for file in [
        "rsa1024.der",
        "rsa2050.der",
        "rsa-e3.der",
        // The signer cannot take it: refused here (422), not a 503 at signing.
        "rsa2048-no-null-params.der",
        "p521.der",
        "secp256k1.der",
        "explicit-curve.der",
        "compressed-point.der",
        "dsa.der",
    ] {
        let r = rejection(&fixture(file));
        assert!(matches!(r, Rejection::KeyNotAllowed(_)), "{file}: {r:?}");
        assert_eq!(r.class(), RejectionClass::Refused);
        assert_eq!(r.code(), "key_not_allowed");
    }
}

#[test]
fn weak_signature_algorithms_are_refused() {
    for file in ["rsa2048-sha1.der", "rsa2048-md5.der", "p256-ecdsa-sha1.der"] {
        let r = rejection(&fixture(file));
        assert!(
            matches!(r, Rejection::SignatureAlgorithmNotAllowed(_)),
            "{file}: {r:?}"
        );
        assert_eq!(r.code(), "signature_algorithm_not_allowed");
    }
}

#[test]
fn a_tampered_csr_fails_its_self_signature() {
    let mut der = fixture("p256.der");
    // Flip a byte inside the subject's CN: still parses, no longer verifies.
    let pos = der.windows(4).position(|w| w == b"web1").unwrap();
    der[pos] = b'x';
    assert_eq!(rejection(&der), Rejection::BadSignature);
    assert_eq!(Rejection::BadSignature.class(), RejectionClass::Malformed);
}

#[test]
fn a_csr_signed_by_another_key_fails() {
    // Splice the public key of one CSR into another: the signature no longer matches.
    let a = csr::parse(&fixture("p256.der")).unwrap();
    let b_der = rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, HOST, &[], Some(FIXTURE_PSK));
    let b = csr::parse(&b_der).unwrap();
    let mut spliced = fixture("p256.der");
    let pos = spliced
        .windows(a.spki_der.len())
        .position(|w| w == a.spki_der.as_slice())
        .unwrap();
    spliced[pos..pos + a.spki_der.len()].copy_from_slice(&b.spki_der);
    assert_eq!(rejection(&spliced), Rejection::BadSignature);
}

#[test]
fn malformed_bodies_name_the_problem() {
    let der = fixture("p256.der");
    let pem_text = String::from_utf8(fixture("p256.pem")).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![], "empty_body"),
        (b"   \n".to_vec(), "empty_body"),
        (b"garbage that is not a CSR".to_vec(), "malformed_csr"),
        (der[..der.len() / 2].to_vec(), "malformed_csr"),
        ([der.clone(), vec![0, 0]].concat(), "malformed_csr"),
        (
            pem_text
                .replace("CERTIFICATE REQUEST", "CERTIFICATE")
                .into_bytes(),
            "malformed_csr",
        ),
        (
            format!("{pem_text}{pem_text}").into_bytes(),
            "malformed_csr",
        ),
        (
            pem_text.replacen("MII", "M*I", 1).into_bytes(),
            "malformed_csr",
        ),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".to_vec(),
            "malformed_csr",
        ),
        (
            vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30],
            "malformed_csr",
        ),
        (vec![0x30, 0x80, 0x00, 0x00], "malformed_csr"),
    ];
    for (input, code) in cases {
        let r = rejection(&input);
        assert_eq!(r.code(), code, "{r:?}");
        assert_eq!(r.class(), RejectionClass::Malformed, "{r:?}");
    }
    assert!(matches!(
        rejection(&[der.clone(), vec![0, 0]].concat()),
        Rejection::Malformed(Malformed::TrailingData(2))
    ));
}

#[test]
fn deep_nesting_is_refused_quickly() {
    let mut der = Vec::new();
    for _ in 0..10_000 {
        der.extend_from_slice(&[0x30, 0x80]);
    }
    assert_eq!(rejection(&der).class(), RejectionClass::Malformed);
}

#[test]
fn psk_with_the_wrong_asn1_type_is_malformed() {
    assert_eq!(
        rejection(&fixture("p256-psk-octet-string.der")),
        Rejection::Malformed(Malformed::PskEncoding)
    );
}

#[test]
fn duplicate_psk_extensions_are_refused() {
    // Build the extension list by hand with rcgen: two pp_preshared_key entries.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, HOST);
    for _ in 0..2 {
        let value = psk::encode_extension_value(&Psk::new(FIXTURE_PSK.into()).unwrap());
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                psk::PSK_OID,
                value.to_vec(),
            ));
    }
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    let r = rejection(&der);
    assert_eq!(
        r,
        Rejection::Malformed(Malformed::DuplicateExtension(psk::PSK_OID_STR.into()))
    );
    assert_eq!(r.code(), "duplicate_extension");
}

#[test]
fn too_many_extensions_are_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    for i in 0..(csr::MAX_EXTENSIONS as u64 + 1) {
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 2, 3, 4, i],
                vec![0x05, 0x00],
            ));
    }
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    assert!(matches!(
        rejection(&der),
        Rejection::Malformed(Malformed::TooManyExtensions(_))
    ));
}

fn decide_rcgen(
    cn: &str,
    sans: &[&str],
    psk: Option<&str>,
    entry: Option<&PskEntry>,
    now: i64,
) -> Decision {
    let der = rcgen_csr(&rcgen::PKCS_ECDSA_P256_SHA256, cn, sans, psk);
    decide(&csr::parse(&der).unwrap(), entry, now)
}

fn rejected(d: Decision) -> Rejection {
    match d {
        Decision::Reject(r) => r,
        Decision::Accept(p) => panic!("accepted {p:?}"),
    }
}

#[test]
fn psk_failures_are_one_generic_code_with_precise_reasons() {
    let good = "g".repeat(43);
    let entry = entry_for(&good, vec![], NOW + 60);
    let cases = [
        (
            decide_rcgen(HOST, &[], None, Some(&entry), NOW),
            PskFailure::Missing,
        ),
        (
            decide_rcgen(HOST, &[], Some(&good), None, NOW),
            PskFailure::UnknownHost,
        ),
        (
            decide_rcgen(HOST, &[], Some(&"h".repeat(43)), Some(&entry), NOW),
            PskFailure::Wrong,
        ),
        (
            decide_rcgen(HOST, &[], Some(&good), Some(&entry), NOW + 60),
            PskFailure::Expired,
        ),
        (
            decide_rcgen(HOST, &[], Some(&good), Some(&entry), NOW + 61),
            PskFailure::Expired,
        ),
    ];
    for (decision, failure) in cases {
        let r = rejected(decision);
        assert_eq!(r, Rejection::Psk(failure));
        assert_eq!(r.code(), "psk_rejected");
        assert_eq!(r.class(), RejectionClass::PskRejected);
        assert_eq!(r.reason(), failure.reason());
        assert!(!r.client_message().contains(failure.reason()));
    }
    // One second before expiry is still valid.
    assert!(matches!(
        decide_rcgen(HOST, &[], Some(&good), Some(&entry), NOW + 59),
        Decision::Accept(_)
    ));
}

#[test]
fn an_entry_for_another_host_never_authenticates() {
    let good = "g".repeat(43);
    let mut entry = entry_for(&good, vec![], NOW + 60);
    entry.hostname = "other.example.internal".into();
    assert_eq!(
        rejected(decide_rcgen(HOST, &[], Some(&good), Some(&entry), NOW)),
        Rejection::Psk(PskFailure::UnknownHost)
    );
}

#[test]
fn names_not_allowed_by_the_psk_are_refused() {
    let good = "g".repeat(43);
    let entry = entry_for(
        &good,
        vec![
            AllowedName::Dns("www.example.internal".into()),
            AllowedName::Ip("10.0.0.5".parse().unwrap()),
        ],
        NOW + 60,
    );
    // Allowed extras are accepted and all of them end up in the profile.
    let Decision::Accept(p) = decide_rcgen(
        HOST,
        &[HOST, "www.example.internal", "10.0.0.5"],
        Some(&good),
        Some(&entry),
        NOW,
    ) else {
        panic!("not accepted")
    };
    assert_eq!(p.sans.len(), 3);
    // Requesting fewer names still gets the whole allowance.
    let Decision::Accept(p) = decide_rcgen(HOST, &[], Some(&good), Some(&entry), NOW) else {
        panic!("not accepted")
    };
    assert_eq!(p.sans.len(), 3);

    for sans in [
        &["other.example.internal"][..],
        &[HOST, "evil.example.internal"],
        &["10.0.0.6"],
        &["::1"],
    ] {
        let r = rejected(decide_rcgen(HOST, sans, Some(&good), Some(&entry), NOW));
        assert!(matches!(r, Rejection::NameNotAllowed(_)), "{sans:?}: {r:?}");
        assert_eq!(r.code(), "name_not_allowed");
        assert_eq!(r.class(), RejectionClass::Refused);
    }
}

#[test]
fn wildcards_and_bad_hostnames_are_refused_before_the_psk() {
    let good = "g".repeat(43);
    let entry = entry_for(&good, vec![], NOW + 60);
    for (cn, sans) in [
        ("*.example.internal", &[][..]),
        (HOST, &["*.example.internal"][..]),
        ("Web1.example.internal", &[]),
        ("web1.example.internal.", &[]),
        ("web1..example.internal", &[]),
        ("10.0.0.1", &[]),
    ] {
        // Even without any PSK the answer is the name rule, which reveals nothing.
        for e in [Some(&entry), None] {
            let r = rejected(decide_rcgen(cn, sans, Some(&good), e, NOW));
            assert!(
                matches!(r, Rejection::InvalidHostname { .. }),
                "{cn} {sans:?}: {r:?}"
            );
            assert_eq!(r.code(), "invalid_hostname");
        }
    }
}

#[test]
fn san_types_other_than_dns_and_ip_are_refused() {
    let csr = csr::parse(&fixture("p256-email-san.der")).unwrap();
    assert!(matches!(csr.requested_names[0], RequestedName::Email(_)));
    let r = rejected(decide(&csr, Some(&fixture_entry()), NOW));
    assert!(matches!(r, Rejection::NameNotAllowed(_)));
}

#[test]
fn requested_ca_extensions_are_only_noted() {
    let csr = csr::parse(&fixture("p256-ca-request.der")).unwrap();
    assert!(csr.ignored_extensions.contains(&"2.5.29.19".to_string()));
    assert!(csr.ignored_extensions.contains(&"2.5.29.15".to_string()));
    let Decision::Accept(p) = decide(&csr, Some(&fixture_entry()), NOW) else {
        panic!("not accepted")
    };
    assert_eq!(p.sans, vec![AllowedName::Dns(HOST.into())]);
}

#[test]
fn extra_subject_attributes_do_not_change_the_hostname() {
    let csr = csr::parse(&fixture("p256-extra-subject.der")).unwrap();
    let Decision::Accept(p) = decide(&csr, Some(&fixture_entry()), NOW) else {
        panic!("not accepted")
    };
    assert_eq!(p.hostname, HOST);
}

#[test]
fn sans_from_openssl_are_read() {
    let csr = csr::parse(&fixture("p256-sans.der")).unwrap();
    assert_eq!(
        csr.requested_names,
        vec![
            RequestedName::Dns(HOST.into()),
            RequestedName::Dns("www.example.internal".into()),
            RequestedName::Ip("10.0.0.5".parse::<IpAddr>().unwrap()),
        ]
    );
}

#[test]
fn rejection_messages_never_carry_the_psk() {
    let all_files = [
        "p256-psk-octet-string.der",
        "rsa1024.der",
        "rsa2048-sha1.der",
        "p256-email-san.der",
    ];
    for file in all_files {
        let text = match csr::parse(&fixture(file)) {
            Err(r) => format!("{r} {} {} {r:?}", r.reason(), r.client_message()),
            Ok(c) => match decide(&c, None, NOW) {
                Decision::Reject(r) => format!("{r} {} {} {r:?}", r.reason(), r.client_message()),
                Decision::Accept(_) => panic!("{file} accepted"),
            },
        };
        assert!(!text.contains(FIXTURE_PSK), "{file}: {text}");
    }
}

/// Cached CSRs keyed by requested names, so the property test does not sign thousands.
fn csr_with(cn: &str, sans: &[String]) -> policy::Csr {
    let refs: Vec<&str> = sans.iter().map(String::as_str).collect();
    let der = rcgen_csr(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        cn,
        &refs,
        Some(&"g".repeat(43)),
    );
    csr::parse(&der).unwrap()
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever is requested, an accepted profile holds only the hostname and
    /// the spawner's allowance, and every requested name was in that set.
    #[test]
    fn accepted_names_are_always_allowed(
        host_label in dns_label(),
        allowed in proptest::collection::vec(dns_label(), 0..3),
        requested in proptest::collection::vec(dns_label(), 0..4),
    ) {
        let host = format!("{host_label}.example.internal");
        let allowed: Vec<AllowedName> = allowed.iter().map(|l| AllowedName::Dns(format!("{l}.example.internal"))).collect();
        let requested: Vec<String> = requested.iter().map(|l| format!("{l}.example.internal")).collect();
        let csr = csr_with(&host, &requested);
        let entry = PskEntry {
            hostname: host.clone(),
            psk_hash: Psk::new("g".repeat(43)).unwrap().hash(),
            allowed_sans: allowed.clone(),
            expires_at: NOW + 1,
        };
        match decide(&csr, Some(&entry), NOW) {
            Decision::Accept(p) => {
                prop_assert_eq!(&p.hostname, &host);
                for r in &requested {
                    prop_assert!(r == &host || allowed.contains(&AllowedName::Dns(r.clone())));
                }
                for s in &p.sans {
                    prop_assert!(s == &AllowedName::Dns(host.clone()) || allowed.contains(s));
                }
            }
            Decision::Reject(r) => {
                prop_assert!(matches!(r, Rejection::NameNotAllowed(_)));
                prop_assert!(requested.iter().any(|r| r != &host && !allowed.contains(&AllowedName::Dns(r.clone()))));
            }
        }
    }

    /// A CN that breaks the hostname rules is never accepted, whatever the PSK says.
    #[test]
    fn invalid_common_names_are_never_accepted(cn in "[a-zA-Z0-9.*_ -]{1,20}") {
        prop_assume!(policy::hostname::validate(&cn).is_err());
        let csr = csr_with(&cn, &[]);
        let entry = PskEntry {
            hostname: cn.clone(),
            psk_hash: Psk::new("g".repeat(43)).unwrap().hash(),
            allowed_sans: vec![],
            expires_at: NOW + 1,
        };
        prop_assert!(matches!(decide(&csr, Some(&entry), NOW), Decision::Reject(_)));
    }

    /// The parser never panics on arbitrary input.
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = csr::parse(&bytes);
    }
}

#[test]
fn ber_lengths_and_oversized_oids_are_malformed() {
    let der = fixture("p256.der");
    // The same CSR with its outer length in a longer-than-needed form.
    let n = der.len() - 4;
    let ber = [
        vec![0x30, 0x83, 0x00, (n >> 8) as u8, n as u8],
        der[4..].to_vec(),
    ]
    .concat();
    assert!(matches!(
        rejection(&ber),
        Rejection::Malformed(Malformed::Der(_))
    ));
    // A requested extension whose OID is 200 bytes long.
    let long_oid = [vec![0x06, 0x81, 202, 0x2a], vec![0xff; 200], vec![0x01]].concat();
    let r = rejection(&[vec![0x30, 0x81, long_oid.len() as u8], long_oid].concat());
    assert!(r.to_string().contains("object identifier"), "{r}");
}

/// Every input a fuzz target once tripped on (tests/fuzz-regressions/) is
/// parsed and decided without a panic.
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = format!("{}/tests/fuzz-regressions", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        seen += 1;
        let input = std::fs::read(&path).unwrap();
        if let Ok(csr) = csr::parse(&input) {
            let _ = policy::decision::requested_hostname(&csr);
            let _ = decide(&csr, Some(&fixture_entry()), NOW);
            let _ = decide(&csr, None, NOW);
        }
    }
    assert!(seen >= 2, "the regression inputs are missing from {dir}");
}
