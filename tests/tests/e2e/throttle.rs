//! Failed-PSK throttling per client address: after the configured number of
//! PSK failures an address gets 429 `too_many_failures` with `Retry-After`
//! (even with the right PSK, which stays unspent), other addresses are not
//! affected, `X-Forwarded-For` changes nothing, and the audit log holds one
//! counted row per address and reason however long the probing goes on.
//! Every other refusal class counts too (a quarter each): a flood of
//! malformed CSRs is throttled, its audit rows stay few, and the server
//! stays healthy.

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

    // The audit log: one row per address and reason, with counts. Repeats
    // and throttled requests are counted in memory and written by the
    // once-a-second flush: wait for every request to be counted.
    let total = |peer: &str| -> i64 {
        audit_rows(&server, peer)
            .iter()
            .filter_map(|r| r["count"].as_i64())
            .sum()
    };
    wait_for(
        Duration::from_secs(10),
        "the refusal counts flushed",
        || (total("127.0.0.1") == 24 && total("127.0.0.3") == 30).then_some(()),
    );
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

/// Audit rows in all (any address).
fn audit_row_count(server: &CaServer) -> usize {
    run_ok(
        server
            .cli()
            .args(["audit", "--since", "1h", "--limit", "100000", "--json"]),
    )
    .lines()
    .count()
}

#[test]
fn a_flood_of_malformed_csrs_is_throttled_aggregated_and_harmless() {
    // Default limits: 10 failures per window, a malformed CSR weighs a quarter.
    let mut server = CaServer::start();
    let host = "honest.example.internal";
    let psk = server.psk_add(host, &[]);
    let before = audit_row_count(&server);
    let garbage = raw::sign_request(b"this is not a certificate request", &[]);
    const FLOOD: usize = 200;
    let seen: Vec<Seen> = block_on(async {
        let mut seen = Vec::new();
        for _ in 0..FLOOD {
            seen.push(raw::exchange_from(&server, "127.0.0.5", &garbage).await.0);
        }
        seen
    });
    // 40 refusals (10 failures' worth) are answered; then 429 to the end.
    let malformed = Seen::Http(400, Some("malformed_csr".into()));
    let throttled = Seen::Http(429, Some("too_many_failures".into()));
    assert!(
        seen[..40].iter().all(|s| *s == malformed),
        "{:?}",
        &seen[..41]
    );
    assert!(
        seen[40..].iter().all(|s| *s == throttled),
        "{:?}",
        &seen[40..]
    );

    // Other refusal classes count too: a wrong content type and an
    // oversized body, each from an address of its own.
    block_on(async {
        let json = [
            raw::sign_head(&["Content-Type: application/json", "Content-Length: 2"]),
            b"{}".to_vec(),
        ]
        .concat();
        let big = raw::sign_request(&vec![b'A'; 64 * 1024 + 1], &[]);
        for (from, request, refusal) in [
            (
                "127.0.0.6",
                &json,
                Seen::Http(400, Some("unsupported_content_type".into())),
            ),
            (
                "127.0.0.7",
                &big,
                Seen::Http(413, Some("body_too_large".into())),
            ),
        ] {
            for i in 0..40 {
                let (s, _) = raw::exchange_from(&server, from, request).await;
                assert_eq!(s, refusal, "{from}: request {i}");
            }
            let (s, _) = raw::exchange_from(&server, from, request).await;
            assert_eq!(s, throttled, "{from}: the 41st");
        }
    });

    // The audit table: every refusal counted, in a handful of rows.
    let counted = |peer: &str| -> (usize, i64) {
        let rows = audit_rows(&server, peer);
        let sum = rows.iter().filter_map(|r| r["count"].as_i64()).sum();
        (rows.len(), sum)
    };
    wait_for(
        Duration::from_secs(10),
        "the flood's refusals flushed",
        || {
            let all = counted("127.0.0.5").1 == FLOOD as i64
                && counted("127.0.0.6").1 == 1
                && counted("127.0.0.7").1 == 1;
            all.then_some(())
        },
    );
    let (rows, _) = counted("127.0.0.5");
    assert_eq!(rows, 2, "one malformed_csr row and one throttled row");
    let flood_rows = audit_rows(&server, "127.0.0.5");
    let count_of = |outcome: &str| -> i64 {
        flood_rows
            .iter()
            .filter(|r| r["outcome"] == outcome)
            .map(|r| r["count"].as_i64().unwrap())
            .sum()
    };
    assert_eq!((count_of("rejected"), count_of("throttled")), (40, 160));
    // The body-level refusals (content type, size) are counted against the
    // address and in the metrics, not audited; their 429s are.
    let grown = audit_row_count(&server) - before;
    assert_eq!(grown, 4, "audit rows for {} refusals", FLOOD + 82);

    // The server stays healthy and serves an honest host from elsewhere.
    let body = forge(&p256(), &CsrSpec::host(host, &psk));
    block_on(async {
        let (s, _) = raw::exchange_from(&server, "127.0.0.8", &raw::sign_request(&body, &[])).await;
        assert_eq!(s, Seen::Http(201, None));
    });
    assert_eq!(server.certs_of(host).len(), 1);
    server.assert_no_secret_leaks();
}
