//! The remote spawner: admin certificates, the mTLS admin API under
//! `/v1/admin/`, the CLI's `--server URL --admin-cert DIR`, the bootstrap
//! bundle and `scripts/spawn-host.sh`. Every admin endpoint refuses a host
//! certificate, a revoked or expired admin certificate, another CA's admin
//! certificate and no certificate; listing PSKs never shows a secret or its
//! hash (checked on the response bytes).

use ca_client::https::{HttpsClient, Reply, TransportError};
use ca_tests::fleet::{Host, bootstrap, mtls_client};
use ca_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const WEB: &str = "web.example.internal";
const ADMIN_SUBJECT: &str = "CN=spawner, OU=ca-server admin";

/// `ca-server admin-cert issue NAME --out work/NAME` plus `args`; the directory.
fn issue_admin(ca: &CaServer, work: &Path, name: &str, args: &[&str]) -> PathBuf {
    let dir = work.join(name);
    run_ok(
        ca.cli()
            .args(["admin-cert", "issue", name, "--out"])
            .arg(&dir)
            .args(args),
    );
    dir
}

/// `ca-server ARGS --server URL --admin-cert DIR` as a spawner elsewhere
/// runs it: an empty data dir of its own, the verb sent to `ca`'s admin API.
fn remote_cli(ca: &CaServer, admin: &Path, spawner: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("ca-server"));
    cmd.arg("--data-dir")
        .arg(spawner.join("no-data-dir"))
        .args(args)
        .args(["--server", &ca.url, "--admin-cert"])
        .arg(admin);
    cmd
}

fn call(
    client: &HttpsClient,
    method: &str,
    path: &str,
    body: &str,
) -> Result<Reply, TransportError> {
    let content_type = (!body.is_empty()).then_some("application/json");
    block_on(client.send(
        method.parse().unwrap(),
        path,
        content_type,
        bytes::Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The spellings of a PSK's SHA-256 (what the store keeps) to look for.
fn hash_forms(psk: &str) -> Vec<String> {
    use base64::Engine as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, psk.as_bytes());
    let d = digest.as_ref();
    vec![
        hex::encode(d),
        hex::encode_upper(d),
        base64::engine::general_purpose::STANDARD.encode(d),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d),
    ]
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn every_admin_endpoint_refuses_host_revoked_expired_foreign_and_missing_certificates() {
    // Refusals count against the address; this test makes many on purpose.
    let mut ca = CaServer::start_with(ServerOptions {
        args: vec!["--throttle-failures".into(), "10000".into()],
        ..Default::default()
    });
    let mut other_ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let host: Host = bootstrap(&mut ca, WEB, work.path(), "web");
    let admin = issue_admin(&ca, work.path(), "spawner", &[]);
    let revoked = issue_admin(&ca, work.path(), "revoked", &[]);
    let expired = issue_admin(&ca, work.path(), "expired", &["--validity", "1s"]);
    let foreign = issue_admin(&other_ca, work.path(), "foreign", &[]);
    let spare_psk = ca.psk_add("spare.example.internal", &[]);
    let _ = other_ca.psk_add("unused.example.internal", &[]);

    // Admin certificates are listed and revoked like others.
    let listed = ca.certs_of("admin:revoked");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["kind"], "admin");
    assert_eq!(listed[0]["status"], "valid");
    let ok = call(
        &mtls_client(&ca, Some(&revoked)),
        "GET",
        "/v1/admin/psks",
        "",
    )
    .unwrap();
    assert_eq!(ok.status.as_u16(), 200, "before its revocation: {ok:?}");
    let out = run_ok(ca.cli().args(["revoke", "--host", "admin:revoked"]));
    assert!(out.starts_with("revoked "), "{out}");
    assert_eq!(ca.certs_of("admin:revoked")[0]["status"], "revoked");
    // The expired one was valid for a second; wait until it is not.
    wait_for(std::time::Duration::from_secs(10), "expiry", || {
        (ca.certs_of("admin:expired")[0]["status"] == "expired").then_some(())
    });

    // The foreign certificate is a working admin certificate at its own CA.
    let ok = call(
        &mtls_client(&other_ca, Some(&foreign)),
        "GET",
        "/v1/admin/psks",
        "",
    )
    .unwrap();
    assert_eq!(ok.status.as_u16(), 200, "{ok:?}");

    // Nor can an admin certificate act as a host: /v1/renew does not know it.
    let reply = block_on(mtls_client(&ca, Some(&admin)).send(
        http::Method::POST,
        "/v1/renew",
        Some("application/pkcs10"),
        bytes::Bytes::from_static(b"not read"),
    ))
    .unwrap();
    assert_eq!(reply.status.as_u16(), 403, "{reply:?}");
    assert_eq!(error_code(&reply), "certificate_unknown");

    // Valid requests, so that only the certificate can be the reason.
    let endpoints: [(&str, String, String); 10] = [
        ("GET", "/v1/admin/psks".into(), String::new()),
        (
            "POST",
            "/v1/admin/psks".into(),
            r#"{"hostname":"new.example.internal","ttl_secs":600}"#.into(),
        ),
        (
            "POST",
            "/v1/admin/psks/batch".into(),
            r#"{"hostnames":["b1.example.internal"],"ttl_secs":600}"#.into(),
        ),
        (
            "DELETE",
            "/v1/admin/psks/spare.example.internal".into(),
            String::new(),
        ),
        ("GET", "/v1/admin/certs".into(), String::new()),
        (
            "GET",
            format!("/v1/admin/certs/{}", host.serial),
            String::new(),
        ),
        (
            "POST",
            "/v1/admin/revoke".into(),
            format!(r#"{{"host":"{WEB}"}}"#),
        ),
        (
            "GET",
            "/v1/admin/audit?since_secs=3600".into(),
            String::new(),
        ),
        ("GET", "/v1/admin/no-such-endpoint".into(), String::new()),
        ("PUT", "/v1/admin/psks".into(), String::new()),
    ];
    let callers: [(&str, Option<&Path>, Option<&str>); 5] = [
        ("no certificate", None, Some("admin_certificate_required")),
        ("host certificate", Some(&host.dir), Some("not_an_admin")),
        ("revoked admin", Some(&revoked), Some("certificate_revoked")),
        ("expired admin", Some(&expired), Some("certificate_expired")),
        // Another CA's admin certificate fails the TLS handshake itself.
        ("foreign admin", Some(&foreign), None),
    ];
    for (who, dir, code) in callers {
        let client = mtls_client(&ca, dir);
        for (method, path, body) in &endpoints {
            let result = call(&client, method, path, body);
            match code {
                Some(code) => {
                    let reply = result.unwrap_or_else(|e| panic!("{who} {method} {path}: {e}"));
                    assert_eq!(
                        reply.status.as_u16(),
                        403,
                        "{who} {method} {path}: {reply:?}"
                    );
                    assert_eq!(error_code(&reply), code, "{who} {method} {path}");
                }
                None => assert!(result.is_err(), "{who} {method} {path}: {result:?}"),
            }
        }
    }
    // Nothing happened: no PSK created or removed, nothing revoked.
    let psks = run_ok(ca.cli().args(["psk", "list"]));
    assert!(psks.contains("spare.example.internal"), "{psks}");
    assert!(
        !psks.contains("new.example") && !psks.contains("b1.example"),
        "{psks}"
    );
    assert_eq!(ca.certs_of(WEB)[0]["status"], "valid");
    // Each refusal audited (aggregated per code) with the presented subject.
    let audit = run_ok(ca.cli().args(["audit", "--event", "admin", "--json"]));
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (actor, reason) in [
        (None, "admin_certificate_required"),
        (Some(format!("presented:CN={WEB}")), "not_an_admin"),
        (
            Some("presented:CN=revoked, OU=ca-server admin".to_owned()),
            "certificate_revoked",
        ),
        (
            Some("presented:CN=expired, OU=ca-server admin".to_owned()),
            "certificate_expired",
        ),
    ] {
        let row = rows
            .iter()
            .find(|r| r["reason"].as_str().unwrap_or("").starts_with(reason))
            .unwrap_or_else(|| panic!("no audit row for {reason}: {audit}"));
        assert_eq!(row["outcome"], "rejected");
        assert_eq!(row["actor"].as_str(), actor.as_deref(), "{row}");
        assert_eq!(row["peer"], "127.0.0.1");
    }

    // The valid admin certificate gets through every endpoint (the table is
    // not refusing for some other reason), each action audited with it.
    let client = mtls_client(&ca, Some(&admin));
    let expected = [200, 201, 201, 200, 200, 200, 200, 200, 404, 405];
    for ((method, path, body), status) in endpoints.iter().zip(expected) {
        let reply = call(&client, method, path, body).unwrap();
        assert_eq!(reply.status.as_u16(), status, "{method} {path}: {reply:?}");
        let created = serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap();
        match status {
            404 => assert_eq!(created["error"], "not_found"),
            405 => assert_eq!(created["error"], "method_not_allowed"),
            _ => {}
        }
        if let Some(psk) = created.get("psk").and_then(|p| p.as_str()) {
            ca.remember_secret(psk);
        }
        if let Some(list) = created.as_array() {
            for item in list {
                if let Some(psk) = item.get("psk").and_then(|p| p.as_str()) {
                    ca.remember_secret(psk);
                }
            }
        }
    }
    assert_eq!(ca.certs_of(WEB)[0]["status"], "revoked");
    let audit = run_ok(ca.cli().args(["audit", "--json"]));
    let actor = format!("admin:{ADMIN_SUBJECT} serial=");
    for event in ["psk_added", "psk_removed", "revoked", "admin_read"] {
        assert!(
            audit.lines().any(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["event"] == event && v["actor"].as_str().unwrap_or("").starts_with(&actor)
            }),
            "no {event} by the admin in:\n{audit}"
        );
    }
    // The removed PSK is gone; no PSK leaked anywhere.
    ca.remember_secret(&spare_psk);
    ca.assert_no_secret_leaks();
    drop(other_ca);
}

#[test]
fn a_spawner_creates_the_psk_remotely_and_the_host_bootstraps_from_the_bundle_alone() {
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let spawner = work.path().join("elsewhere");
    std::fs::create_dir(&spawner).unwrap();
    let admin = issue_admin(&ca, work.path(), "spawner", &["--json"]);
    assert_eq!(mode(&admin.join("key.pem")), 0o600);
    assert_eq!(mode(&admin), 0o700);
    let text = openssl_text(&admin.join("cert.pem"));
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    assert!(
        text.contains("2.25.227538881362168576492200639827097800561"),
        "the admin EKU mark: {text}"
    );

    // The spawner, elsewhere: a PSK with an extra name, into a bundle.
    let bundle = work.path().join("web.bundle");
    let bundle_arg = bundle.to_str().unwrap();
    let out = run(&mut remote_cli(
        &ca,
        &admin,
        &spawner,
        &[
            "psk", "add", WEB, "--san", "10.0.0.5", "--ttl", "10m", "--bundle", bundle_arg,
        ],
    ));
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "the PSK goes into the bundle only");
    assert_eq!(mode(&bundle), 0o600);
    let b: serde_json::Value = serde_json::from_slice(&read(&bundle)).unwrap();
    assert_eq!(b["server"], ca.url.as_str());
    assert_eq!(b["fingerprint"], ca.fingerprint.as_str());
    assert_eq!(b["hostname"], WEB);
    assert_eq!(b["sans"], serde_json::json!(["10.0.0.5"]));
    let psk = b["psk"].as_str().unwrap().to_owned();
    ca.remember_secret(&psk);
    let copy = write_file(work.path(), "copy.bundle", read(&bundle));

    // Listing PSKs, remotely: hostnames and expiry, never the secret or hash.
    let reply = call(&mtls_client(&ca, Some(&admin)), "GET", "/v1/admin/psks", "").unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    assert!(contains(&reply.body, WEB), "{reply:?}");
    for form in secret_forms(&psk).into_iter().chain(hash_forms(&psk)) {
        assert!(!contains(&reply.body, &form), "{form} in {reply:?}");
    }
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&reply.body).unwrap();
    let mut keys: Vec<&String> = listed[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        ["allowed_sans", "created_at", "expires_at", "hostname"]
    );

    // The host: the bundle and nothing else.
    let tls = work.path().join("tls");
    let out = run_ok(
        ca_client()
            .args(["bootstrap", "--bundle"])
            .arg(&bundle)
            .arg("--dir")
            .arg(&tls),
    );
    assert!(out.contains(WEB), "{out}");
    assert!(!bundle.exists(), "the bundle is deleted after success");
    let cert = openssl_text(&tls.join("cert.pem"));
    assert!(cert.contains("IP Address:10.0.0.5"), "{cert}");
    // The PSK is gone: from the list, and a second use is refused.
    let list = run_ok(&mut remote_cli(&ca, &admin, &spawner, &["psk", "list"]));
    assert!(!list.contains(WEB), "{list}");
    let again = run(ca_client()
        .args(["bootstrap", "--bundle"])
        .arg(&copy)
        .arg("--dir")
        .arg(work.path().join("tls2")));
    assert_eq!(again.status.code(), Some(4), "{again:?}");
    assert!(copy.exists(), "a failed bootstrap keeps the bundle");

    // Locally, a bundle needs the URL hosts reach the CA at; asked first,
    // so no PSK is created without its bundle.
    let local_bundle = work.path().join("local.bundle");
    let out = run(ca
        .cli()
        .args(["psk", "add", "app.example.internal", "--bundle"])
        .arg(&local_bundle));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!local_bundle.exists());
    assert!(!run_ok(ca.cli().args(["psk", "list"])).contains("app.example"));
    let out = run_ok(
        ca.cli()
            .args(["psk", "add", "app.example.internal", "--json"])
            .args([
                "--server-url",
                "https://ca.example.internal:8443",
                "--bundle",
            ])
            .arg(&local_bundle),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["server_url"], "https://ca.example.internal:8443");
    assert!(v.get("psk").is_none(), "{out}");
    assert_eq!(mode(&local_bundle), 0o600);
    let b: serde_json::Value = serde_json::from_slice(&read(&local_bundle)).unwrap();
    assert_eq!(b["server"], "https://ca.example.internal:8443");
    assert_eq!(b["fingerprint"], ca.fingerprint.as_str());
    ca.remember_secret(b["psk"].as_str().unwrap());

    // Remote and local print the same bytes.
    run_ok(
        ca.cli()
            .args(["psk", "add", "db.example.internal", "--san", "10.0.0.9"]),
    );
    let serial = ca.certs_of(WEB)[0]["serial"].as_str().unwrap().to_owned();
    for args in [
        vec!["psk", "list"],
        vec!["psk", "list", "--json"],
        vec!["cert", "list"],
        vec!["cert", "list", "--json", "--host", WEB],
        vec!["cert", "show", &serial],
        vec!["audit", "--event", "psk_added"],
        vec!["audit", "--event", "issued", "--json"],
    ] {
        let local = run_ok(ca.cli().args(&args));
        let remote = run_ok(&mut remote_cli(&ca, &admin, &spawner, &args));
        assert!(!local.is_empty(), "{args:?}");
        assert_eq!(local, remote, "{args:?}");
    }
    // Errors keep their meaning and exit codes remotely.
    let missing = run(&mut remote_cli(
        &ca,
        &admin,
        &spawner,
        &["psk", "remove", "nope.example"],
    ));
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    let bad = run(&mut remote_cli(
        &ca,
        &admin,
        &spawner,
        &["psk", "add", "Bad Host"],
    ));
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("hostname"),
        "{bad:?}"
    );

    // A remote revocation, published by the server; audited with the admin.
    let out = run(&mut remote_cli(
        &ca,
        &admin,
        &spawner,
        &["revoke", "--host", WEB, "--reason", "keyCompromise"],
    ));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("revoked {serial} \"{WEB}\" reason=keyCompromise")),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("published CRL number"));
    assert_eq!(ca.certs_of(WEB)[0]["status"], "revoked");
    let audit = run_ok(ca.cli().args(["audit", "--event", "revoked"]));
    assert!(
        audit.contains(&format!("actor=\"admin:{ADMIN_SUBJECT} serial=")),
        "{audit}"
    );
    let audit = run_ok(
        ca.cli()
            .args(["audit", "--event", "psk_added", "--host", WEB]),
    );
    assert!(
        audit.contains(&format!("actor=\"admin:{ADMIN_SUBJECT} serial=")),
        "{audit}"
    );

    // The pinned root: a server of another CA is refused by the spawner.
    let other = CaServer::start();
    let out = run(&mut remote_cli(&other, &admin, &spawner, &["psk", "list"]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca.pem"),
        "{out:?}"
    );
    ca.assert_no_secret_leaks();
}

#[test]
fn spawn_host_sh_produces_cloud_init_that_bootstraps_the_host() {
    if !require_tool("base64") {
        return;
    }
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let admin = issue_admin(&ca, work.path(), "spawner", &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/spawn-host.sh");
    let out = run(Command::new("bash")
        .arg(&script)
        .args(["--server", &ca.url, "--admin-cert"])
        .arg(&admin)
        .args(["--san", "10.0.0.7", "--client-dir", "/etc/ca-client", WEB])
        .env("CA_SERVER_BIN", bin("ca-server"))
        .env("TMPDIR", work.path()));
    assert!(out.status.success(), "{out:?}");
    let user_data = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = user_data.lines().collect();
    assert_eq!(lines[0], "#cloud-config");
    assert!(lines.contains(&"    permissions: '0600'"), "{user_data}");
    assert!(lines.contains(&"    encoding: b64"), "{user_data}");
    assert!(
        lines.contains(
            &"  - [ ca-client, bootstrap, --bundle, /run/ca-client-bundle.json, --dir, /etc/ca-client ]"
        ),
        "{user_data}"
    );
    // The script's temporary bundle is gone.
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("tmp."))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // What cloud-init does on the VM: write_files (0600), then runcmd.
    let content = lines
        .iter()
        .find_map(|l| l.strip_prefix("    content: "))
        .expect("the bundle in write_files");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(content)
        .unwrap();
    let b: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
    ca.remember_secret(b["psk"].as_str().unwrap());
    let bundle = write_file(work.path(), "bundle.json", &decoded);
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tls = work.path().join("tls");
    run_ok(
        ca_client()
            .args(["bootstrap", "--bundle"])
            .arg(&bundle)
            .arg("--dir")
            .arg(&tls),
    );
    assert!(!bundle.exists());
    let cert = openssl_text(&tls.join("cert.pem"));
    assert!(cert.contains("IP Address:10.0.0.7"), "{cert}");
    assert!(!run_ok(ca.cli().args(["psk", "list"])).contains(WEB));

    // A directory that would break the YAML: a usage error, nothing created.
    let out = run(Command::new("bash")
        .arg(&script)
        .args(["--server", &ca.url, "--admin-cert"])
        .arg(&admin)
        .args(["--client-dir", "/etc/x: y", "db.example.internal"])
        .env("CA_SERVER_BIN", bin("ca-server")));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    // A refused admin certificate: exit 1, no user-data on stdout.
    run_ok(ca.cli().args(["revoke", "--host", "admin:spawner"]));
    let out = run(Command::new("bash")
        .arg(&script)
        .args(["--server", &ca.url, "--admin-cert"])
        .arg(&admin)
        .arg("db.example.internal")
        .env("CA_SERVER_BIN", bin("ca-server")));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate_revoked"),
        "{out:?}"
    );
    assert!(!run_ok(ca.cli().args(["psk", "list"])).contains("db.example"));
    ca.assert_no_secret_leaks();
}

/// The CA's own names (every `--hostname`, the public URL's host) get no
/// PSK and are no PSK's extra name: through the admin API (the server's
/// configuration), locally (this machine's configuration, and the live
/// server certificate in the store). And the admin API bounds `audit`'s
/// limit (1-10,000) instead of reading "no limit" from a negative one.
#[test]
fn the_cas_own_names_get_no_psk_and_the_admin_audit_limit_is_bounded() {
    const CA_NAME: &str = "ca.example.internal";
    const PUBLIC: &str = "ca-public.example.internal";
    let ca = CaServer::start_with(ServerOptions {
        args: vec![
            "--hostname".into(),
            CA_NAME.into(),
            "--public-url".into(),
            format!("https://{PUBLIC}:8443"),
        ],
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let admin = issue_admin(&ca, work.path(), "spawner", &[]);
    let client = mtls_client(&ca, Some(&admin));
    let refused = |body: &str, name: &str| {
        let reply = call(&client, "POST", "/v1/admin/psks", body).unwrap();
        assert_eq!(reply.status.as_u16(), 400, "{body}: {reply:?}");
        let (code, message) = reply.api_error().unwrap();
        assert_eq!(code, "bad_request");
        assert!(
            message.contains(name) && message.contains("one of the CA's own names"),
            "{message}"
        );
    };
    // Remotely: the server's names and its public URL's host, as hostname or --san.
    refused(r#"{"hostname":"localhost","ttl_secs":60}"#, "localhost");
    refused(
        &format!(r#"{{"hostname":"{CA_NAME}","ttl_secs":60}}"#),
        CA_NAME,
    );
    refused(
        &format!(r#"{{"hostname":"{PUBLIC}","ttl_secs":60}}"#),
        PUBLIC,
    );
    refused(
        &format!(r#"{{"hostname":"web.example.internal","ttl_secs":60,"sans":["{CA_NAME}"]}}"#),
        CA_NAME,
    );
    let batch = call(
        &client,
        "POST",
        "/v1/admin/psks/batch",
        &format!(r#"{{"hostnames":["a.example.internal","{PUBLIC}"],"ttl_secs":60}}"#),
    )
    .unwrap();
    assert_eq!(batch.status.as_u16(), 400, "{batch:?}");
    let fine = call(
        &client,
        "POST",
        "/v1/admin/psks",
        r#"{"hostname":"web.example.internal","ttl_secs":60,"sans":["www.example.internal"]}"#,
    )
    .unwrap();
    assert!(fine.status.is_success(), "{fine:?}");

    // Locally: the live server certificate's name from the store ...
    let out = run(ca.cli().args(["psk", "add", "localhost"]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("one of the CA's own names"),
        "{out:?}"
    );
    // ... and this machine's configuration of `serve`.
    let out = run(ca
        .cli()
        .env("CA_HOSTNAMES", CA_NAME)
        .args(["psk", "add", CA_NAME]));
    assert!(!out.status.success(), "{out:?}");
    let out = run(ca
        .cli()
        .env("CA_PUBLIC_URL", format!("https://{PUBLIC}"))
        .args(["psk", "add", "db.example.internal", "--san", PUBLIC]));
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("an extra name (--san)"),
        "{out:?}"
    );
    let listed = run_ok(ca.cli().args(["psk", "list", "--json"]));
    for name in [
        "localhost",
        CA_NAME,
        PUBLIC,
        "a.example.internal",
        "db.example.internal",
    ] {
        assert!(!listed.contains(&format!("\"{name}\"")), "{name}: {listed}");
    }
    assert!(listed.contains("web.example.internal"), "{listed}");

    // The audit limit over the admin API.
    for bad in ["-1", "0", "10001"] {
        let reply = call(
            &client,
            "GET",
            &format!("/v1/admin/audit?since_secs=3600&limit={bad}"),
            "",
        )
        .unwrap();
        assert_eq!(reply.status.as_u16(), 400, "limit={bad}: {reply:?}");
        assert!(
            reply.api_error().unwrap().1.contains("between 1 and 10000"),
            "{reply:?}"
        );
    }
    let reply = call(
        &client,
        "GET",
        "/v1/admin/audit?since_secs=3600&limit=10000",
        "",
    )
    .unwrap();
    assert_eq!(reply.status.as_u16(), 200, "{reply:?}");
    let out = run(ca.cli().args(["audit", "--limit", "0"]));
    assert!(!out.status.success(), "{out:?}");
}
