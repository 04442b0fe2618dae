//! `ca-server store copy`: a CA that ran on SQLite moves to PostgreSQL and a
//! server on PostgreSQL carries on with the same CA, certificates, audit log,
//! CRL number (the next CRL continues from it) and PSK history.

use bytes::Bytes;
use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::*;
use http::Method;
use sqlx::Connection;
use std::collections::BTreeSet;
use std::path::Path;

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn cert_list(server: &CaServer) -> Vec<serde_json::Value> {
    json_lines(&run_ok(server.cli().args(["cert", "list", "--json"])))
}

fn audit_rows(server: &CaServer) -> Vec<serde_json::Value> {
    json_lines(&run_ok(server.cli().args([
        "audit", "--since", "3650d", "--limit", "100000", "--json",
    ])))
}

fn bundle(server: &CaServer) -> Bytes {
    let client = server.client();
    block_on(async move {
        client
            .send(Method::GET, "/v1/ca", None, Bytes::new())
            .await
            .unwrap()
            .body
    })
}

/// The number of the CRL the server serves at `/v1/crl`.
fn crl_number(server: &CaServer) -> i64 {
    let client = server.client();
    let der = block_on(async move {
        client
            .send(Method::GET, "/v1/crl", None, Bytes::new())
            .await
            .unwrap()
            .body
    });
    let (_, crl) = x509_parser::parse_x509_crl(&der).expect("a DER CRL");
    i64::try_from(crl.crl_number().expect("a CRL number")).unwrap()
}

/// Bootstraps `host` with `psk`; returns the `--json` output.
fn bootstrap(server: &CaServer, host: &str, psk: &str, dir: &Path) -> serde_json::Value {
    let psk_file = write_file(dir.parent().unwrap(), &format!("{host}.psk"), psk);
    serde_json::from_str(&run_ok(
        server.bootstrap_cmd(host, &psk_file, dir).arg("--json"),
    ))
    .unwrap()
}

#[test]
fn a_sqlite_ca_copied_to_postgresql_serves_the_same_ca_certificates_and_psk_history() {
    if !require_postgres() || !require_tool("openssl") {
        return;
    }
    let pg = PgCluster::start();
    let pg_url = pg.create_database("ca");
    let mut server = CaServer::start();
    let work = tempfile::tempdir().unwrap();

    // A CA with history on SQLite: two hosts bootstrapped, two PSKs still
    // live (one with an extra name), refusals in the audit log, a CRL number.
    let mut issued = Vec::new();
    for host in ["used1.example.internal", "used2.example.internal"] {
        let psk = server.psk_add(host, &[]);
        let out = bootstrap(&server, host, &psk, &work.path().join(host));
        issued.push((host, psk, out["serial"].as_str().unwrap().to_owned()));
    }
    let live = server.psk_add("live.example.internal", &[]);
    let with_san = server.psk_add("sans.example.internal", &["--san", "10.9.8.7"]);
    let replay = run(&mut server.bootstrap_cmd(
        issued[0].0,
        &write_file(work.path(), "replay.psk", &issued[0].1),
        &work.path().join("replay"),
    ));
    assert_eq!(replay.status.code(), Some(4), "a used PSK is refused");
    let served_crl = crl_number(&server);
    let certs_before = cert_list(&server);
    let audit_before = audit_rows(&server);
    let psks_before = run_ok(server.cli().args(["psk", "list", "--json"]));
    let bundle_before = bundle(&server);

    // Stop the SQLite server, copy, and verify.
    server.stop();
    let sqlite_url = format!("sqlite://{}", server.data_dir.join("ca.db").display());
    let counter = block_on(async {
        sqlx::any::install_default_drivers();
        let mut c = sqlx::AnyConnection::connect(&sqlite_url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT crl_number FROM crl_state WHERE id = 1")
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        n
    });
    assert!(counter >= served_crl);
    let report: serde_json::Value = serde_json::from_str(&run_ok(
        server
            .cli()
            .args(["store", "copy", "--to", &pg_url, "--json"]),
    ))
    .unwrap();
    let rows = |t: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["table"] == t)
            .unwrap()["rows"]
            .as_u64()
            .unwrap() as usize
    };
    assert_eq!(rows("psks"), 2);
    assert_eq!(rows("certificates"), certs_before.len());
    assert_eq!(rows("audit"), audit_before.len());
    assert_eq!(rows("crl_published"), 1, "the CRLs every replica serves");
    assert_eq!(report["crl_number"], counter);
    assert_eq!(
        pg.psql("ca", "SELECT crl_number FROM crl_state WHERE id = 1"),
        counter.to_string()
    );

    // A second copy into the same database is refused: no merging.
    let again = run(server.cli().args(["store", "copy", "--to", &pg_url]));
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds data"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The same data dir (CA keys) now serves from PostgreSQL.
    server.opts.database_url = Some(pg_url.clone());
    server.restart();
    assert_eq!(bundle(&server), bundle_before, "the same CA");
    // CRL numbers continue from the copied counter: never reused.
    assert!(crl_number(&server) > counter);
    assert_eq!(
        run_ok(server.cli().args(["psk", "list", "--json"])),
        psks_before
    );
    let certs_after = cert_list(&server);
    let serials = |v: &[serde_json::Value]| -> BTreeSet<String> {
        v.iter()
            .map(|c| c["serial"].as_str().unwrap().to_owned())
            .collect()
    };
    let new: Vec<_> = certs_after
        .iter()
        .filter(|c| !serials(&certs_before).contains(c["serial"].as_str().unwrap()))
        .collect();
    assert_eq!(new.len(), 1, "only the new server certificate: {new:?}");
    assert_eq!(new[0]["kind"], "server");
    for c in &certs_before {
        assert!(
            certs_after.contains(c),
            "{c} is listed the same after the copy"
        );
    }
    // The audit log came along (ids and all), followed by the copy itself.
    let audit_after = audit_rows(&server);
    assert_eq!(&audit_after[..audit_before.len()], &audit_before[..]);
    assert!(audit_after[audit_before.len()..].iter().any(|a| {
        a["event"] == "store_copied"
            && a["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("crl_number {counter}"))
    }));

    // Used PSKs: a new key is refused; the original key gets its certificate
    // back (the idempotent retry works across the move).
    let (host, psk, serial) = &issued[0];
    let refused = run(&mut server.bootstrap_cmd(
        host,
        &write_file(work.path(), "again.psk", psk),
        &work.path().join("again"),
    ));
    assert_eq!(refused.status.code(), Some(4));
    server.assert_retry_recovers(host, psk, &work.path().join(host).join("key.pem"), serial);
    // Live PSKs redeem on PostgreSQL, the extra name included.
    bootstrap(
        &server,
        "live.example.internal",
        &live,
        &work.path().join("live"),
    );
    let out = bootstrap(
        &server,
        "sans.example.internal",
        &with_san,
        &work.path().join("sans"),
    );
    let text = openssl_text(&work.path().join("sans").join("cert.pem"));
    assert!(text.contains("IP Address:10.9.8.7"), "{text}");
    assert_eq!(
        pg.psql(
            "ca",
            &format!(
                "SELECT hostname FROM certificates WHERE serial = '{}'",
                out["serial"].as_str().unwrap()
            )
        ),
        "sans.example.internal"
    );
    assert_eq!(pg.psql("ca", "SELECT count(*) FROM psks"), "0");
    server.assert_no_secret_leaks();
}
