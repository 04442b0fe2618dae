//! The in-process crypto limit: how many certificates per second one core
//! (and all cores) can parse, verify, decide and sign, with no network and
//! no database. scripts/bench.sh compares the server's throughput with it.
//!
//! usage: cryptobench [ITERATIONS]

use ca_client::keys::{HostKey, KeyType};
use ca_server::pki::ca::{self, CaPaths, LeafRequest, Signer};
use policy::{Decision, Psk, PskEntry};
use std::time::{Duration, Instant};

const NOW: i64 = 1_900_000_000;

fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let tmp = tempfile::tempdir()?;
    let paths = CaPaths::new(tmp.path());
    ca::init(&paths, "Bench", NOW)?;
    let signer = Signer::load(&paths, Some("https://ca.bench:8443/v1/crl".into()))?;

    let psk = Psk::new("b".repeat(43)).expect("psk");
    let entry = PskEntry {
        hostname: "host.bench.internal".into(),
        psk_hash: psk.hash(),
        allowed_sans: vec![],
        expires_at: NOW + 3600,
    };
    // A pool of distinct CSRs, made off the clock.
    let csrs: Vec<Vec<u8>> = (0..256)
        .map(|_| {
            let key = HostKey::generate(KeyType::P256).expect("keygen");
            key.csr_pem("host.bench.internal", &[], Some(&psk))
                .expect("csr")
                .as_bytes()
                .to_vec()
        })
        .collect();

    let one = |i: usize| {
        let csr = policy::csr::parse(&csrs[i % csrs.len()]).expect("parse");
        let Decision::Accept(profile) = policy::decide(&csr, Some(&entry), NOW) else {
            panic!("rejected");
        };
        signer
            .sign_leaf(&LeafRequest {
                profile: &profile,
                key: csr.key,
                spki_der: &csr.spki_der,
                now: NOW,
                validity: Duration::from_secs(30 * 86400),
            })
            .expect("sign");
    };

    // Warm up, then one core.
    for i in 0..500 {
        one(i);
    }
    let start = Instant::now();
    for i in 0..iterations {
        one(i);
    }
    let single = start.elapsed();
    let per_core = iterations as f64 / single.as_secs_f64();

    // All cores.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..cores {
            let one = &one;
            s.spawn(move || {
                for i in 0..iterations {
                    one(i + t);
                }
            });
        }
    });
    let all = (iterations * cores) as f64 / start.elapsed().as_secs_f64();

    let us = single.as_secs_f64() * 1e6 / iterations as f64;
    println!("parse + verify + decide + sign, P-256 CSR, ECDSA P-256 intermediate");
    println!("one core:  {per_core:.0} certificates/s ({us:.1} us each)");
    println!("{cores} cores: {all:.0} certificates/s");
    println!(
        "{}",
        serde_json::json!({"per_core_certs_per_s": per_core, "all_cores_certs_per_s": all, "cores": cores, "us_per_cert": us})
    );
    Ok(())
}
