//! The CRL at `/v1/crl`: signed by the intermediate (openssl verifies it),
//! DER or PEM, usable with `openssl verify -crl_check` for a leaf whose
//! distribution point names it, and CRL numbers that only grow, across
//! restarts and across servers sharing PostgreSQL.

use ca_tests::curl::curl;
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

#[test]
fn crl_numbers_stay_unique_across_servers_sharing_postgresql() {
    if !require_postgres() || !require_tool("curl") {
        return;
    }
    let pg = PgCluster::start();
    // Replicas: one CA (the same data dir), one store.
    let mut a = CaServer::start_with(pg.server_options("ca"));
    let b = a.replica();
    let (na, nb) = (crl_number(&fetch_der(&a)), crl_number(&fetch_der(&b)));
    assert_ne!(na, nb, "two servers never sign the same CRL number");
    a.restart();
    let na2 = crl_number(&fetch_der(&a));
    assert!(na2 > na.max(nb), "{na2} > max({na}, {nb})");
    // The counter lives in the shared store, not in either server.
    let counter: u64 = pg
        .psql("ca", "SELECT crl_number FROM crl_state")
        .parse()
        .unwrap();
    assert!(counter >= na2, "{counter} >= {na2}");
}
