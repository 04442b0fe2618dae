//! Renewal over mTLS: `ca-client renew` when not due (says so, changes
//! nothing) and when due (a new serial, re-installed for nginx, HAProxy and
//! PostgreSQL, which keep serving through it); the old certificate listed as
//! superseded; revoked, replaced and foreign certificates refused with
//! precise answers; the same CSR retried gets the same certificate. After
//! expiry: renewed within `--renew-grace`, refused past it
//! (`renewal_expired`); HAProxy updated through its runtime API.

use ca_client::https::{HttpsClient, Reply, TransportError};
use ca_client::keys::{HostKey, KeyType};
use ca_tests::fleet::{
    HandshakeLoop, Host, assert_switched, bootstrap, ca_client_verb, install, strs,
};
use ca_tests::services::{Haproxy, Nginx, free_port, norm_serial, served_serial};
use ca_tests::trio::Trio;
use ca_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WEB: &str = "web.example.internal";
const DB: &str = "db.example.internal";
const APP: &str = "app.example.internal";

/// `ca-client renew --server URL --dir DIR --jitter 0` plus `args` (no
/// random delay before a due renewal in tests).
fn renew_cmd(ca: &CaServer, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = ca_client_verb("renew", ca, dir);
    cmd.args(["--jitter", "0"]).args(args);
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
    let new = norm_serial(&new_serial);
    assert_switched(&handshakes.finish(&new), &web.serial, &new);
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

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The notAfter of the certificate in `host`'s `cert.pem`.
fn not_after(host: &Host) -> i64 {
    let cert = pem::parse(read(&host.dir.join("cert.pem"))).unwrap();
    x509_parser::parse_x509_certificate(cert.contents())
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp()
}

/// (name, inode, mtime in ns, SHA-256 of the contents) of every file in
/// `dir`, following symlinks: what "nothing changed on disk" compares. The
/// empty `.lock` that `ca-client` locks the directory with is not material.
fn snapshot(dir: &Path) -> Vec<(String, u64, i128, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file() && e.file_name() != ".lock")
        .map(|e| {
            let m = std::fs::metadata(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.ino(),
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                hex::encode(ring::digest::digest(
                    &ring::digest::SHA256,
                    &read(&e.path()),
                )),
            )
        })
        .collect();
    files.sort();
    files
}

/// `cert list --stale --json` rows as (hostname, stale).
fn stale_hosts(ca: &CaServer, args: &[&str]) -> Vec<(String, String)> {
    let out = run_ok(
        ca.cli()
            .args(["cert", "list", "--stale", "--json"])
            .args(args),
    );
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["status"], "expired", "{v}");
            (
                v["hostname"].as_str().unwrap().to_owned(),
                v["stale"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// One wait for three hosts' certificates to expire, then: within the
/// default grace the installed host renews (nginx serves the new serial)
/// and a second run is "not due" and touches nothing; two parallel
/// renewals with one expired certificate give one new certificate; the
/// superseded certificate cannot renew again; an expired admin certificate
/// opens no admin endpoint; `cert list --stale` and the gauges see the
/// stale hosts; with `--renew-grace 0` the last host gets 403
/// `renewal_expired`, exit 6, the remedy, and nothing on disk changes.
#[test]
fn expired_certificates_renew_within_the_grace_and_not_past_it() {
    if !require_tool("nginx") || !require_tool("openssl") {
        return;
    }
    // Certificates valid for 20 s (counted from issuance; notBefore is
    // backdated, notAfter is not). The server then restarts with the default
    // validity so that its own TLS certificate is current again.
    let mut ca = CaServer::start_with(ServerOptions {
        args: vec!["--validity".into(), "20s".into()],
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let db = bootstrap(&mut ca, DB, work.path(), "db");
    let app = bootstrap(&mut ca, APP, work.path(), "app");
    let admin = work.path().join("admin");
    run_ok(
        ca.cli()
            .args([
                "admin-cert",
                "issue",
                "expired",
                "--validity",
                "1s",
                "--out",
            ])
            .arg(&admin),
    );
    // A valid admin certificate (1 h, whatever --validity says) for the remote CLI.
    let spawner = work.path().join("spawner");
    run_ok(
        ca.cli()
            .args([
                "admin-cert",
                "issue",
                "spawner",
                "--validity",
                "1h",
                "--out",
            ])
            .arg(&spawner),
    );
    // web is installed into a running nginx.
    let port = free_port();
    let dest = work.path().join("nginx/tls");
    let inc = format!("include {}/current/nginx-ssl.conf;", dest.display());
    let mut nginx = Nginx::configure(
        &work.path().join("nginx"),
        &format!(
            "server {{ listen 127.0.0.1:{port} ssl; server_name {WEB}; {inc}\n  location / {{ return 200 \"ok\\n\"; }} }}"
        ),
    );
    let nginx_flags = vec![
        "--config".to_string(),
        nginx.conf.display().to_string(),
        "--pid-file".into(),
        nginx.pid_file.display().to_string(),
        "--probe".into(),
        format!("127.0.0.1:{port}"),
    ];
    run_ok(&mut install("nginx", &web, &dest, &strs(&nginx_flags)));
    nginx.start(&[port]);
    let ca_pem = web.dir.join("ca.pem");
    assert_eq!(served_serial(port, WEB, &ca_pem, &[]).unwrap(), web.serial);

    ca.opts.args.clear();
    ca.restart();
    let last = not_after(&app);
    wait_for(
        Duration::from_secs(60),
        "the certificates to expire",
        || (unix_now() > last).then_some(()),
    );

    // All three are stale, within the (default, 14 d) grace.
    let mut stale = stale_hosts(&ca, &[]);
    stale.sort();
    let within = |h: &str| (h.to_owned(), "within_grace".to_owned());
    assert_eq!(stale, vec![within(APP), within(DB), within(WEB)]);

    // web renews after expiry and nginx serves the new certificate.
    let old_web = work.path().join("web-old");
    copy_dir(&web.dir, &old_web);
    let out = run_ok(&mut renew_cmd(&ca, &web.dir, &["--install", "nginx"]));
    let new_serial = renewed_serial(&out);
    assert!(
        out.contains("nginx at ") && out.contains("new certificate served"),
        "{out}"
    );
    assert_eq!(
        served_serial(port, WEB, &ca_pem, &[]).unwrap(),
        norm_serial(&new_serial),
        "{}",
        nginx.logs()
    );
    // Audited as a renewal after expiry, with how long it had been expired.
    let audit = run_ok(
        ca.cli()
            .args(["audit", "--event", "renewed_after_expiry", "--json"]),
    );
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{audit}");
    assert_eq!(rows[0]["serial"], new_serial.as_str());
    assert_eq!(
        rows[0]["actor"],
        format!("cert:{}", web.raw_serial).as_str()
    );
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains(" after expiry (expired ") && reason.contains("grace 1209600 s"),
        "{reason}"
    );

    // Not due now: nothing is re-installed, nothing reloaded, nothing written.
    let marker = work.path().join("reloaded");
    let installed = snapshot(&dest.join("current"));
    let link = std::fs::read_link(dest.join("current")).unwrap();
    let dir_before = snapshot(&web.dir);
    let reload = format!("touch {}", marker.display());
    let out = run_ok(&mut renew_cmd(
        &ca,
        &web.dir,
        &["--install", "nginx", "--reload", &reload],
    ));
    assert!(out.starts_with("not due: "), "{out}");
    assert_eq!(snapshot(&dest.join("current")), installed);
    assert_eq!(std::fs::read_link(dest.join("current")).unwrap(), link);
    assert_eq!(snapshot(&web.dir), dir_before);
    assert!(!marker.exists(), "the reload command must not run");

    // The superseded (old, expired) certificate cannot renew again.
    let out = run(&mut renew_cmd(&ca, &old_web, &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("certificate_superseded"), "{err}");

    // Two renewals at once with app's expired certificate: one certificate.
    let racers: Vec<_> = (0..2)
        .map(|_| {
            let client = mtls_client(&ca, Some(&app));
            std::thread::spawn(move || {
                let key = HostKey::generate(KeyType::P256).unwrap();
                post_renew(&client, &csr(&key, APP, &[])).unwrap()
            })
        })
        .collect();
    let mut statuses: Vec<(u16, String)> = racers
        .into_iter()
        .map(|t| {
            let reply = t.join().unwrap();
            let code = if reply.status.as_u16() == 201 {
                String::new()
            } else {
                error_code(&reply)
            };
            (reply.status.as_u16(), code)
        })
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        vec![(201, String::new()), (403, "certificate_superseded".into())]
    );
    assert_eq!(ca.certs_of(APP).len(), 2);

    // An expired admin certificate opens no admin endpoint, grace or not.
    let reply = block_on(ca_tests::fleet::mtls_client(&ca, Some(&admin)).send(
        http::Method::GET,
        "/v1/admin/psks",
        None,
        bytes::Bytes::new(),
    ))
    .unwrap();
    assert_eq!(reply.status.as_u16(), 403, "{reply:?}");
    assert_eq!(error_code(&reply), "certificate_expired");

    // Only db is stale now; past a grace of 0 it counts as beyond.
    assert_eq!(stale_hosts(&ca, &[]), vec![within(DB)]);
    assert_eq!(
        stale_hosts(&ca, &["--renew-grace", "0"]),
        vec![(DB.to_owned(), "beyond_grace".to_owned())]
    );

    // With --renew-grace 0, db cannot renew: 403 renewal_expired, exit 6,
    // the remedy printed, its directory untouched, no reload.
    ca.opts.args = vec!["--renew-grace".into(), "0".into()];
    ca.restart();
    // Remotely, --stale splits by the server's own grace (0 here).
    let remote = run_ok(
        Command::new(bin("ca-server"))
            .arg("--data-dir")
            .arg(work.path().join("no-data-dir"))
            .args([
                "cert",
                "list",
                "--stale",
                "--server",
                &ca.url,
                "--admin-cert",
            ])
            .arg(&spawner),
    );
    assert!(
        remote.contains(DB) && remote.contains("stale=beyond_grace") && remote.lines().count() == 1,
        "{remote}"
    );
    let metrics = run_ok(Command::new("curl").args(["-sk", &format!("{}/metrics", ca.url)]));
    assert!(
        metrics.contains("ca_hosts_expired_within_grace 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ca_hosts_expired_beyond_grace 1"),
        "{metrics}"
    );
    let before = snapshot(&db.dir);
    let out = run(&mut renew_cmd(&ca, &db.dir, &["--reload", &reload]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("renewal_expired"), "{err}");
    assert!(err.contains(&format!("ca-server psk add {DB}")), "{err}");
    assert!(err.contains("renewal after expiry is off"), "{err}");
    assert_eq!(snapshot(&db.dir), before, "nothing on disk changes");
    assert!(!marker.exists());
    assert_eq!(ca.certs_of(DB).len(), 1);
    ca.assert_no_secret_leaks();
}

/// With `--haproxy-socket`, a renewal reaches HAProxy through its runtime
/// API: a TLS connection opened before stays open and working, new
/// handshakes see the new serial, and HAProxy is never reloaded.
#[test]
fn haproxy_takes_a_renewal_through_its_runtime_api_without_dropping_connections() {
    if !require_tool("haproxy") || !require_tool("openssl") {
        return;
    }
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let port = free_port();
    let hdir = work.path().join("haproxy");
    let dest = hdir.join("tls");
    let socket = hdir.join("admin.sock");
    let current = format!("{}/current", dest.display());
    std::fs::create_dir_all(&hdir).unwrap();
    let conf = hdir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  log stderr local0 notice\n  stats socket {} mode 600 level admin\n\
             defaults\n  log global\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 30s\n\
             frontend fe\n  bind 127.0.0.1:{port} ssl crt {current}/haproxy.pem \
             ca-file {current}/ca.pem verify optional crl-file {current}/crl.pem\n\
             http-request return status 200 content-type text/plain string ok\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut haproxy = Haproxy::with_config(&hdir, &conf);
    let flags = vec![
        "--config".to_string(),
        conf.display().to_string(),
        "--pid-file".into(),
        haproxy.pid_file.display().to_string(),
        "--probe".into(),
        format!("127.0.0.1:{port}"),
    ];
    let socket_arg = socket.display().to_string();
    // With a CRL: a renewal leaves it as it is, so the runtime API suffices.
    run_ok(&mut ca_client_verb("crl", &ca, &web.dir));
    // Recorded without the socket; HAProxy is not running yet.
    let out = run_ok(&mut install("haproxy", &web, &dest, &strs(&flags)));
    assert!(out.contains("(not running)"), "{out}");
    haproxy.start(&[port]);
    let ca_pem = web.dir.join("ca.pem");
    assert_eq!(served_serial(port, WEB, &ca_pem, &[]).unwrap(), web.serial);

    // A connection opened before the renewal.
    let mut open = TlsConn::open(port, &ca_pem);
    assert_eq!(open.serial, web.serial);
    assert!(open.get().contains("200 OK"));

    // `renew --haproxy-socket`: the runtime API instead of a reload.
    let out = run_ok(&mut renew_cmd(
        &ca,
        &web.dir,
        &[
            "--force",
            "--install",
            "haproxy",
            "--haproxy-socket",
            &socket_arg,
        ],
    ));
    assert!(
        out.contains("(updated through the runtime API, new certificate served)"),
        "{out}\n{}",
        haproxy.logs()
    );
    let second = norm_serial(&renewed_serial(&out));
    assert_eq!(served_serial(port, WEB, &ca_pem, &[]).unwrap(), second);
    // The old connection still works, on its old session.
    assert!(open.get().contains("200 OK"), "{}", haproxy.logs());

    // `install --haproxy-socket` does the same and is remembered for `renew`.
    let renewed = Host {
        dir: web.dir.clone(),
        serial: second.clone(),
        raw_serial: String::new(),
    };
    let out = run_ok(
        install("haproxy", &renewed, &dest, &strs(&flags)).args(["--haproxy-socket", &socket_arg]),
    );
    assert!(out.contains("updated through the runtime API"), "{out}");
    let out = run_ok(&mut renew_cmd(
        &ca,
        &web.dir,
        &["--force", "--install", "haproxy"],
    ));
    assert!(out.contains("updated through the runtime API"), "{out}");
    let third = norm_serial(&renewed_serial(&out));
    assert_eq!(served_serial(port, WEB, &ca_pem, &[]).unwrap(), third);
    assert!(open.get().contains("200 OK"), "{}", haproxy.logs());
    assert_eq!(open.serial, web.serial);
    // Never reloaded: a reload re-executes the master.
    assert!(
        !haproxy.logs().contains("Reexecuting"),
        "{}",
        haproxy.logs()
    );
}

/// A kept-alive HTTPS connection (rustls), for showing it survives a swap.
struct TlsConn {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    serial: String,
}

impl TlsConn {
    fn open(port: u16, ca_pem: &Path) -> TlsConn {
        let root = pem::parse(read(ca_pem)).unwrap().into_contents();
        let config = ca_client::trust::pinned_client_config(&root, None).unwrap();
        let name = rustls::pki_types::ServerName::try_from(WEB).unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).unwrap();
        }
        let leaf = stream.conn.peer_certificates().unwrap()[0].clone();
        let serial = x509_parser::parse_x509_certificate(&leaf)
            .map(|(_, c)| norm_serial(&hex::encode(c.raw_serial())))
            .unwrap();
        TlsConn { stream, serial }
    }

    /// One request on the open connection; the response head and body.
    fn get(&mut self) -> String {
        use std::io::{Read, Write};
        self.stream
            .write_all(format!("GET / HTTP/1.1\r\nHost: {WEB}\r\n\r\n").as_bytes())
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with("ok") {
            let n = self.stream.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }
}
