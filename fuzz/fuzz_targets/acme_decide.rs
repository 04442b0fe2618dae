//! ACME's decisions on arbitrary bytes: the first bytes pick identifiers
//! for `check_order`, the rest is a CSR for `decide_acme`. Never a panic,
//! and nothing outside the account's grant is ever ordered or signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{AcmeGrant, AllowedName, Decision};

fuzz_target!(|data: &[u8]| {
    let grant = AcmeGrant {
        hostname: "web1.example.internal".into(),
        allowed: vec![
            AllowedName::Dns("www.example.internal".into()),
            AllowedName::Ip("10.0.0.5".parse().unwrap()),
        ],
    };
    // Identifiers: up to the first 0xff byte, split at 0x00, each "dns" or
    // "ip" by its first byte's parity.
    let split = data.iter().position(|b| *b == 0xff).unwrap_or(data.len());
    let ids: Vec<(String, String)> = data[..split]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let kind = if s[0] % 2 == 0 { "dns" } else { "ip" };
            (kind.to_owned(), String::from_utf8_lossy(&s[1..]).into_owned())
        })
        .collect();
    if let Ok(names) = policy::check_order(&grant, &ids) {
        assert!(names.iter().all(|n| grant.covers(n)));
    }
    let rest = data.get(split + 1..).unwrap_or_default();
    let Ok(csr) = policy::csr::parse(rest) else {
        return;
    };
    let order = vec![
        AllowedName::Dns("web1.example.internal".into()),
        AllowedName::Dns("www.example.internal".into()),
    ];
    if let Decision::Accept(profile) = policy::decide_acme(&csr, &grant, &order) {
        assert_eq!(profile.hostname, grant.hostname);
        assert!(profile.sans.iter().all(|n| order.contains(n) && grant.covers(n)));
        assert_eq!(profile.sans.len(), order.len());
    }
});
