//! Failed-PSK throttling per client address: after the configured number of
//! PSK failures an address gets 429 `too_many_failures` with `Retry-After`
//! (even with the right PSK, which stays unspent), other addresses are not
//! affected, `X-Forwarded-For` changes nothing, and the audit log holds one
//! counted row per address and reason however long the probing goes on.

use ca_tests::forge::{CsrSpec, forge, p256};
use ca_tests::raw::{self, Seen};
use ca_tests::*;
use std::time::Duration;

fn audit_rows(server: &CaServer, peer: &str) -> Vec<serde_json::Value> {
    run_ok(server.cli().args(["audit", "--since", "1h", "--json"]))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["peer"] == peer)
        .collect()
}

#[test]
fn psk_failures_are_throttled_per_address_and_audited_in_bounded_rows() {
    let mut server = CaServer::start_with(ServerOptions {
        args: ["--throttle-failures", "3", "--throttle-window", "3s"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let a = "a.example.internal";
    let b = "b.example.internal";
    let psk_a = server.psk_add(a, &[]);
    let psk_b = server.psk_add(b, &[]);
    let wrong = "Z".repeat(43);
    server.remember_secret(&wrong);
    let good_a = forge(&p256(), &CsrSpec::host(a, &psk_a));
    let wrong_a = forge(&p256(), &CsrSpec::host(a, &wrong));

    let retry = block_on(async {
        for _ in 0..3 {
            let (seen, _) =
                raw::exchange_from(&server, "127.0.0.1", &raw::sign_request(&wrong_a, &[])).await;
            assert_eq!(seen, Seen::Http(403, Some("psk_rejected".into())));
        }
        // Blocked now, even with the right PSK and whatever X-Forwarded-For says.
        let (seen, retry) = raw::exchange_from(
            &server,
            "127.0.0.1",
            &raw::sign_request(
                &good_a,
                &["X-Forwarded-For: 192.0.2.99", "X-Real-IP: 192.0.2.99"],
            ),
        )
        .await;
        assert_eq!(seen, Seen::Http(429, Some("too_many_failures".into())));
        let retry = retry.expect("Retry-After");
        assert!((1..=3).contains(&retry), "Retry-After {retry}");
        for _ in 0..20 {
            let (seen, _) =
                raw::exchange_from(&server, "127.0.0.1", &raw::sign_request(&wrong_a, &[])).await;
            assert_eq!(seen, Seen::Http(429, Some("too_many_failures".into())));
        }
        // Another address is served, even claiming to be the blocked one.
        let good_b = forge(&p256(), &CsrSpec::host(b, &psk_b));
        let (seen, _) = raw::exchange_from(
            &server,
            "127.0.0.2",
            &raw::sign_request(&good_b, &["X-Forwarded-For: 127.0.0.1"]),
        )
        .await;
        assert_eq!(seen, Seen::Http(201, None));
        // Probing many hostnames from a third address: throttled after three.
        for i in 0..30 {
            let host = format!("probe{i}.example.internal");
            let body = forge(&p256(), &CsrSpec::host(&host, &wrong));
            raw::exchange_from(&server, "127.0.0.3", &raw::sign_request(&body, &[])).await;
        }
        retry
    });
    assert!(
        run_ok(server.cli().args(["psk", "list"])).contains(a),
        "a refused request spends nothing"
    );
    assert!(server.certs_of(a).is_empty());

    // The audit log: one row per address and reason, with counts.
    let rows = audit_rows(&server, "127.0.0.1");
    let wrong_rows: Vec<_> = rows.iter().filter(|r| r["reason"] == "psk_wrong").collect();
    assert_eq!(wrong_rows.len(), 1, "{rows:?}");
    assert_eq!(wrong_rows[0]["count"], 3);
    let throttled: Vec<_> = rows
        .iter()
        .filter(|r| r["outcome"] == "throttled")
        .collect();
    assert_eq!(throttled.len(), 1, "{rows:?}");
    assert_eq!(throttled[0]["count"], 21);
    let probe = audit_rows(&server, "127.0.0.3");
    assert_eq!(
        probe.len(),
        4,
        "three unknown hosts, then one throttled row: {probe:?}"
    );
    assert_eq!(
        probe
            .iter()
            .map(|r| r["count"].as_i64().unwrap())
            .sum::<i64>(),
        30
    );
    let human = run_ok(server.cli().args(["audit", "--since", "1h"]));
    assert!(human.contains("count=21"), "{human}");

    // Once Retry-After has passed, the address is served again.
    std::thread::sleep(Duration::from_secs(retry) + Duration::from_millis(200));
    block_on(async {
        let (seen, _) =
            raw::exchange_from(&server, "127.0.0.1", &raw::sign_request(&good_a, &[])).await;
        assert_eq!(seen, Seen::Http(201, None));
    });
    assert_eq!(server.certs_of(a).len(), 1);
    server.assert_no_secret_leaks();
}
