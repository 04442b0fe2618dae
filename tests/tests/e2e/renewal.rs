//! Renewal over mTLS: `ca-client renew` when not due (says so, changes
//! nothing) and when due (a new serial, re-installed for nginx, HAProxy and
//! PostgreSQL, which keep serving through it); the old certificate listed as
//! superseded; revoked, expired, replaced and foreign certificates refused
//! with precise answers; the same CSR retried gets the same certificate.

use ca_client::https::{HttpsClient, Reply, TransportError};
use ca_client::keys::{HostKey, KeyType};
use ca_tests::fleet::{HandshakeLoop, Host, assert_switched, bootstrap, ca_client_verb, strs};
use ca_tests::services::norm_serial;
use ca_tests::trio::Trio;
use ca_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WEB: &str = "web.example.internal";
const DB: &str = "db.example.internal";
const APP: &str = "app.example.internal";

/// `ca-client renew --server URL --dir DIR` plus `args`.
fn renew_cmd(ca: &CaServer, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = ca_client_verb("renew", ca, dir);
    cmd.args(args);
    cmd
}

/// The serial `ca-client renew` reports as new ("... -> SERIAL ...").
fn renewed_serial(out: &str) -> String {
    out.split(" -> ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no renewal in: {out}"))
        .to_owned()
}

#[test]
fn renewal_over_mtls_reinstalls_and_the_services_keep_serving() {
    if !Trio::tools_present() {
        return;
    }
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let db = bootstrap(&mut ca, DB, work.path(), "db");
    let app = bootstrap(&mut ca, APP, work.path(), "app");
    let trio = Trio::start(work.path(), (&web, WEB), (&db, DB), &[APP]);
    trio.all_let_in(&app, APP)
        .unwrap_or_else(|e| panic!("{e}\n{}", trio.logs()));

    // Not due: says so, exit 0, nothing changes.
    let cert_before = read(&web.dir.join("cert.pem"));
    let out = run_ok(&mut renew_cmd(
        &ca,
        &web.dir,
        &["--install", "nginx,haproxy"],
    ));
    assert!(
        out.starts_with(&format!("not due: {WEB} serial={}", web.raw_serial)),
        "{out}"
    );
    assert!(out.contains("renews at 33%"), "{out}");
    assert_eq!(read(&web.dir.join("cert.pem")), cert_before);
    assert_eq!(ca.certs_of(WEB).len(), 1);

    // Due (here: whenever 100% is left): renewed and re-installed while a
    // handshake loop runs against nginx; every handshake succeeds.
    let old_dir = work.path().join("web-old");
    copy_dir(&web.dir, &old_dir);
    let flags = client_cert_flags(&app);
    let handshakes =
        HandshakeLoop::start(trio.nginx_port, WEB, &web.dir.join("ca.pem"), &strs(&flags));
    let out = run_ok(&mut renew_cmd(
        &ca,
        &web.dir,
        &["--when-remaining", "100%", "--install", "nginx,haproxy"],
    ));
    assert!(
        out.starts_with(&format!("renewed {WEB} serial={} -> ", web.raw_serial)),
        "{out}"
    );
    let new_serial = renewed_serial(&out);
    assert_ne!(new_serial, web.raw_serial);
    assert!(
        out.contains("nginx at ") && out.contains("haproxy at "),
        "{out}"
    );
    assert_eq!(out.matches("new certificate served").count(), 2, "{out}");
    assert_switched(&handshakes.finish(), &web.serial, &norm_serial(&new_serial));
    assert_ne!(
        read(&web.dir.join("key.pem")),
        read(&old_dir.join("key.pem")),
        "a new key by default"
    );
    assert!(!web.dir.join("pending-key.pem").exists());
    // HAProxy too (an old nginx or HAProxy worker may answer a handshake
    // or two more while it drains).
    let want = norm_serial(&new_serial);
    wait_for(
        Duration::from_secs(30),
        "both to serve the new certificate",
        || {
            let served = trio.served(&app);
            (served[0].as_deref() == Ok(want.as_str()) && served[1].as_deref() == Ok(want.as_str()))
                .then_some(())
        },
    );
    trio.all_let_in(&app, APP)
        .unwrap_or_else(|e| panic!("{e}\n{}", trio.logs()));

    // The store lists the old one as superseded by the new one.
    let rows = ca.certs_of(WEB);
    let old = rows
        .iter()
        .find(|r| r["serial"] == web.raw_serial.as_str())
        .unwrap();
    assert_eq!(old["status"], "superseded");
    assert_eq!(old["superseded_by"], new_serial.as_str());
    let new = rows
        .iter()
        .find(|r| r["serial"] == new_serial.as_str())
        .unwrap();
    assert_eq!(new["status"], "valid");

    // PostgreSQL: renewed with --when-remaining as a duration, reloaded,
    // still serving; then --reload CMD runs.
    assert_eq!(trio.served(&app)[2].as_deref(), Ok(db.serial.as_str()));
    let marker = work.path().join("reload-ran");
    let reload = format!("touch {}", marker.display());
    let out = run_ok(&mut renew_cmd(
        &ca,
        &db.dir,
        &[
            "--when-remaining",
            "3650d",
            "--install",
            "postgres",
            "--reload",
            &reload,
        ],
    ));
    let db_new = renewed_serial(&out);
    assert!(
        out.contains("postgres at ") && out.contains("reload ran"),
        "{out}"
    );
    assert!(marker.exists());
    assert_eq!(
        trio.served(&app)[2].as_deref(),
        Ok(norm_serial(&db_new).as_str())
    );
    trio.postgres_lets_in(&app, APP)
        .unwrap_or_else(|e| panic!("{e}\n{}", trio.logs()));
    // A failing --reload is reported (exit 1); the renewal itself stands.
    let out = run(&mut renew_cmd(
        &ca,
        &db.dir,
        &["--force", "--reload", "exit 3"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("was renewed, but --reload"), "{err}");
    assert_eq!(ca.certs_of(DB).len(), 3);

    // The replaced certificate cannot renew again.
    let out = run(&mut renew_cmd(&ca, &old_dir, &["--force"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("certificate_superseded"), "{err}");

    // A revoked certificate cannot renew: 403, exit 6, nothing changes.
    run_ok(
        ca.cli()
            .args(["revoke", &new_serial, "--reason", "keyCompromise"]),
    );
    let cert_now = read(&web.dir.join("cert.pem"));
    let out = run(&mut renew_cmd(
        &ca,
        &web.dir,
        &["--force", "--install", "nginx"],
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("certificate_revoked") && err.contains("bootstrap again"),
        "{err}"
    );
    assert_eq!(read(&web.dir.join("cert.pem")), cert_now);
    assert_eq!(
        trio.served(&app)[0].as_deref(),
        Ok(norm_serial(&new_serial).as_str())
    );
    // And the audit log says who renewed: the old certificate.
    let audit = run_ok(ca.cli().args(["audit", "--since", "1h", "--json"]));
    let renewed: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "renewed")
        .collect();
    assert_eq!(renewed.len(), 3, "web once, db twice");
    assert_eq!(
        renewed[1]["actor"],
        format!("cert:{}", db.raw_serial).as_str()
    );
    assert_eq!(renewed[0]["serial"], new_serial.as_str());
    assert_eq!(
        renewed[0]["actor"],
        format!("cert:{}", web.raw_serial).as_str()
    );
    ca.assert_no_secret_leaks();
}

/// openssl s_client flags presenting `host`'s certificate (leaf + intermediate).
fn client_cert_flags(host: &Host) -> Vec<String> {
    let path = |f: &str| host.dir.join(f).display().to_string();
    vec![
        "-cert".into(),
        path("cert.pem"),
        "-cert_chain".into(),
        path("chain.pem"),
        "-key".into(),
        path("key.pem"),
    ]
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A client for `/v1/renew` presenting `host`'s certificate and key (or none).
fn mtls_client(ca: &CaServer, host: Option<&Host>) -> HttpsClient {
    ca_tests::fleet::mtls_client(ca, host.map(|h| h.dir.as_path()))
}

fn post_renew(client: &HttpsClient, body: &[u8]) -> Result<Reply, TransportError> {
    block_on(client.send(
        http::Method::POST,
        "/v1/renew",
        Some("application/pkcs10"),
        bytes::Bytes::copy_from_slice(body),
    ))
}

fn csr(key: &HostKey, host: &str, sans: &[&str]) -> Vec<u8> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    key.csr_pem(host, &sans, None).unwrap().as_bytes().to_vec()
}

#[test]
fn renewal_answers_are_precise_and_a_retry_gets_the_same_certificate() {
    let mut ca = CaServer::start();
    let other_ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let host = bootstrap(&mut ca, WEB, work.path(), "web");
    let mut other = other_ca;
    let foreign = bootstrap(&mut other, WEB, work.path(), "foreign");
    let client = mtls_client(&ca, Some(&host));
    let key = HostKey::generate(KeyType::P256).unwrap();

    let refusals: [(Option<&Host>, Vec<u8>, u16, &str); 5] = [
        (
            None,
            csr(&key, WEB, &[]),
            403,
            "client_certificate_required",
        ),
        (
            Some(&host),
            csr(&key, "db.example.internal", &[]),
            422,
            "hostname_mismatch",
        ),
        (
            Some(&host),
            csr(&key, WEB, &["api.example.internal"]),
            422,
            "name_not_allowed",
        ),
        (Some(&host), b"not a CSR".to_vec(), 400, "malformed_csr"),
        (
            Some(&host),
            csr(&key, "*.example.internal", &[]),
            422,
            "invalid_hostname",
        ),
    ];
    for (who, body, status, code) in refusals {
        let reply = post_renew(&mtls_client(&ca, who), &body).unwrap();
        assert_eq!(reply.status.as_u16(), status, "{code}: {reply:?}");
        assert_eq!(error_code(&reply), code);
    }
    // Another CA's certificate does not get through the handshake: no
    // answer at all (under TLS 1.3 the client sees the alert on its first read).
    let result = post_renew(&mtls_client(&ca, Some(&foreign)), &csr(&key, WEB, &[]));
    assert!(result.is_err(), "{result:?}");
    assert_eq!(ca.certs_of(WEB).len(), 1);

    // A renewal, then its retry (the answer was lost): the same certificate.
    let body = csr(&key, WEB, &[]);
    let first = post_renew(&client, &body).unwrap();
    assert_eq!(first.status.as_u16(), 201, "{first:?}");
    let serial = first.headers["x-certificate-serial"]
        .to_str()
        .unwrap()
        .to_owned();
    let again = post_renew(&client, &body).unwrap();
    assert_eq!(again.status.as_u16(), 200, "{again:?}");
    assert_eq!(again.body, first.body);
    // A different key with the replaced certificate: refused.
    let other_key = HostKey::generate(KeyType::P256).unwrap();
    let reply = post_renew(&client, &csr(&other_key, WEB, &[])).unwrap();
    assert_eq!(reply.status.as_u16(), 403);
    assert_eq!(error_code(&reply), "certificate_superseded");
    assert_eq!(
        ca.certs_of(WEB).len(),
        2,
        "one renewal, one new certificate"
    );
    let audit = run_ok(ca.cli().args(["audit", "--since", "1h"]));
    assert!(
        audit.contains(&format!(
            "renew_replayed outcome=issued host=\"{WEB}\" serial={serial}"
        )),
        "{audit}"
    );
    assert!(
        audit.contains(&format!("actor=\"cert:{}\"", host.raw_serial)),
        "{audit}"
    );
}

#[test]
fn an_expired_certificate_cannot_renew() {
    // Certificates valid for 10 s; then the server restarts with the
    // default validity, so that its own TLS certificate is current again.
    let mut ca = CaServer::start_with(ServerOptions {
        args: vec!["--validity".into(), "10s".into()],
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let host = bootstrap(&mut ca, WEB, work.path(), "web");
    ca.opts.args.clear();
    ca.restart();
    let cert = pem::parse(read(&host.dir.join("cert.pem"))).unwrap();
    let not_after = x509_parser::parse_x509_certificate(cert.contents())
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp();
    wait_for(Duration::from_secs(60), "the certificate to expire", || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        (now > not_after).then_some(())
    });

    // The expired certificate completes the TLS handshake and gets a JSON 403.
    let key = HostKey::generate(KeyType::P256).unwrap();
    let reply = post_renew(&mtls_client(&ca, Some(&host)), &csr(&key, WEB, &[])).unwrap();
    assert_eq!(reply.status.as_u16(), 403, "{reply:?}");
    assert_eq!(error_code(&reply), "certificate_expired");
    // ca-client says so itself.
    let out = run(&mut renew_cmd(&ca, &host.dir, &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("expired") && err.contains("new PSK"), "{err}");
}
