//! The CRL at `/v1/crl`: signed by the intermediate (openssl verifies it),
//! DER or PEM, usable with `openssl verify -crl_check` for a leaf whose
//! distribution point names it, and CRL numbers that only grow, across
//! restarts; replicas sharing PostgreSQL serve one published CRL, which a
//! revocation reaches whether the CLI can sign or not.

use ca_tests::curl::curl;
use ca_tests::fleet::bootstrap;
use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::*;
use std::process::Command;

/// The CRL number of a DER CRL.
fn crl_number(der: &[u8]) -> u64 {
    let (_, crl) = x509_parser::parse_x509_crl(der).expect("a DER CRL");
    let n = crl.crl_number().expect("a CRL number");
    u64::try_from(n).expect("a small CRL number")
}

fn fetch_der(server: &CaServer) -> Vec<u8> {
    let r = curl(server, "GET", "/v1/crl", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
}

#[test]
fn the_crl_is_signed_by_the_intermediate_and_openssl_verifies_a_leaf_against_it() {
    if !require_tool("openssl") || !require_tool("curl") {
        return;
    }
    let mut server = CaServer::start();
    let work = tempfile::tempdir().unwrap();

    let der = curl(&server, "GET", "/v1/crl", &[], None);
    assert_eq!(der.status, 200);
    assert_eq!(
        der.header("content-type").as_deref(),
        Some("application/pkix-crl")
    );
    assert!(der.header("last-modified").is_some());
    let der_file = write_file(work.path(), "crl.der", &der.body);
    let pem = curl(&server, "GET", "/v1/crl?format=pem", &[], None);
    assert_eq!(pem.status, 200);
    let pem_file = write_file(work.path(), "crl.pem", &pem.body);
    for (file, form) in [(&der_file, "DER"), (&pem_file, "PEM")] {
        let out = run(Command::new("openssl")
            .args(["crl", "-noout", "-verify", "-inform", form, "-in"])
            .arg(file)
            .arg("-CAfile")
            .arg(server.intermediate_pem()));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stderr).contains("verify OK"),
            "{form}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Not signed by the root.
    let out = run(Command::new("openssl")
        .args(["crl", "-noout", "-verify", "-inform", "DER", "-in"])
        .arg(&der_file)
        .arg("-CAfile")
        .arg(server.root_pem()));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("verify OK"));

    let bad = curl(&server, "GET", "/v1/crl?format=xml", &[], None);
    assert_eq!(bad.status, 400);
    assert_eq!(error_code_of(&bad.body), "bad_request");

    // A leaf names this CRL in its distribution point, and openssl accepts the
    // leaf with the CRL checked.
    let psk = server.psk_add("crl1.example.internal", &[]);
    let psk_file = write_file(work.path(), "psk", &psk);
    let tls = work.path().join("tls");
    run_ok(&mut server.bootstrap_cmd("crl1.example.internal", &psk_file, &tls));
    let text = openssl_text(&tls.join("cert.pem"));
    assert!(
        text.contains(&format!("URI:{}/v1/crl", server.url)),
        "the distribution point carries the real port:\n{text}"
    );
    let verify = run_ok(
        Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(server.root_pem())
            .arg("-untrusted")
            .arg(server.intermediate_pem())
            .arg("-CRLfile")
            .arg(&pem_file)
            .arg(tls.join("cert.pem")),
    );
    assert!(verify.trim().ends_with(": OK"), "{verify}");

    // A restart signs new CRLs with higher numbers.
    let before = crl_number(&der.body);
    server.restart();
    let after = crl_number(&fetch_der(&server));
    assert!(after > before, "{after} > {before}");
    server.assert_no_secret_leaks();
}

fn error_code_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The serials a DER CRL lists.
fn listed(der: &[u8]) -> Vec<String> {
    let (_, crl) = x509_parser::parse_x509_crl(der).expect("a DER CRL");
    crl.iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect()
}

/// Waits until both servers serve the same CRL and it lists `serial` (if given).
fn wait_for_one_crl(a: &CaServer, b: &CaServer, serial: Option<&str>) -> Vec<u8> {
    wait_for(
        std::time::Duration::from_secs(30),
        "both replicas to serve the same CRL",
        || {
            let (da, db) = (fetch_der(a), fetch_der(b));
            let lists = serial.is_none_or(|s| listed(&da).iter().any(|l| l == s));
            (da == db && lists).then_some(da)
        },
    )
}

#[test]
fn replicas_sharing_postgresql_serve_one_published_crl_that_revocations_reach() {
    if !require_postgres() || !require_tool("curl") {
        return;
    }
    let pg = PgCluster::start();
    // Replicas: one CA (the same data dir), one store.
    let mut a = CaServer::start_with(pg.server_options("ca"));
    let url = a.opts.database_url.clone().unwrap();
    let b = a.replica();

    // B signed at start and published; A serves that very CRL within a poll.
    let first = wait_for_one_crl(&a, &b, None);
    let work = tempfile::tempdir().unwrap();
    let serial = bootstrap(&mut a, "r1.example.internal", work.path(), "r1").raw_serial;

    // The admin revokes on the CA host: the CLI signs and publishes, both serve it.
    run_ok(a.cli().args(["revoke", &serial]));
    let second = wait_for_one_crl(&a, &b, Some(&serial));
    assert!(crl_number(&second) > crl_number(&first));

    // From a host without the CA keys (only the database URL): the
    // revocation is recorded, and the servers sign the CRL themselves.
    let serial2 = bootstrap(&mut a, "r2.example.internal", work.path(), "r2").raw_serial;
    let out = run(Command::new(bin("ca-server"))
        .arg("--data-dir")
        .arg(work.path().join("no-keys"))
        .args(["--database-url", &url, "revoke", &serial2]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("servers publish the new CRL"),
        "{out:?}"
    );
    let third = wait_for_one_crl(&a, &b, Some(&serial2));
    assert!(crl_number(&third) > crl_number(&second));
    assert_eq!(listed(&third).len(), 2);

    // A restart signs again, with a higher number; the counter lives in the store.
    a.restart();
    let fourth = wait_for_one_crl(&a, &b, Some(&serial2));
    assert!(crl_number(&fourth) > crl_number(&third));
    let counter: u64 = pg
        .psql("ca", "SELECT crl_number FROM crl_state")
        .parse()
        .unwrap();
    assert!(counter >= crl_number(&fourth));
    a.assert_no_secret_leaks();
    // The replica shares the data dir; stop it before the owner's temp dir goes.
    drop(b);
}
