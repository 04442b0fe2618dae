//! CSR parsing → policy decision on arbitrary bytes: never a panic, bounded
//! work, and an acceptance only for the entry's host with the entry's PSK.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{AllowedName, Decision, Psk, PskEntry};

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(csr) = policy::csr::parse(data) else {
        return;
    };
    let _ = policy::decision::requested_hostname(&csr);
    // The fixtures' host and PSK, so mutated fixtures reach the accept path.
    let entry = PskEntry {
        hostname: "web1.example.internal".into(),
        psk_hash: Psk::new("fixture-psk-0123456789abcdefghijklmnop".into())
            .unwrap()
            .hash(),
        allowed_sans: vec![AllowedName::Dns("www.example.internal".into())],
        expires_at: NOW + 3600,
    };
    for e in [None, Some(&entry)] {
        if let Decision::Accept(profile) = policy::decide(&csr, e, NOW) {
            let e = e.expect("no entry, no certificate");
            assert_eq!(profile.hostname, e.hostname);
            assert!(
                csr.psk
                    .as_ref()
                    .is_some_and(|p| p.hash().ct_eq(&e.psk_hash))
            );
            assert!(profile.sans.iter().all(|n| {
                n == &AllowedName::Dns(e.hostname.clone()) || e.allowed_sans.contains(n)
            }));
        }
    }
});
