//! What operators use: /metrics (read by a real Prometheus), JSON logs, the
//! configuration file and its precedence, `config check`, `doctor`,
//! `intermediate rotate`, `audit` filters, scripts/probe.sh, the systemd
//! units (systemd-analyze), shell completions and man pages.

use ca_tests::services::Prometheus;
use ca_tests::{
    CaServer, ServerOptions, block_on, ca_client, openssl_csr, openssl_key, require_tool, run,
    run_ok, wait_for, write_file,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `GET /metrics` through the pinned client.
fn scrape(server: &CaServer) -> String {
    let reply = block_on(server.client().send(
        http::Method::GET,
        "/metrics",
        None,
        bytes::Bytes::new(),
    ))
    .expect("GET /metrics");
    assert_eq!(reply.status, 200);
    let ct = reply.headers["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// The value of the sample written exactly as `series` (name and labels), 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

/// POSTs `body` to /v1/sign; returns the status and error code.
fn sign(server: &CaServer, body: Vec<u8>) -> (u16, String) {
    let reply = block_on(server.client().send(
        http::Method::POST,
        "/v1/sign",
        Some("application/pkcs10"),
        body.into(),
    ))
    .expect("POST /v1/sign");
    (reply.status.as_u16(), ca_tests::error_code(&reply))
}

/// Bootstraps `host` with a fresh PSK through the real client.
fn bootstrap(server: &mut CaServer, host: &str, dir: &Path) -> serde_json::Value {
    let psk = server.psk_add(host, &[]);
    let psk_file = write_file(dir, &format!("{host}.psk"), &psk);
    let out = run_ok(
        server
            .bootstrap_cmd(host, &psk_file, &dir.join(host))
            .arg("--json"),
    );
    serde_json::from_str(&out).unwrap()
}

const ISSUED: &str = r#"ca_certificates_issued_total{route="/v1/sign"}"#;
const PSK_REJECTED: &str = r#"ca_sign_rejections_total{reason="psk_rejected"}"#;
const MALFORMED: &str = r#"ca_sign_rejections_total{reason="malformed_csr"}"#;

#[test]
fn metrics_move_with_issuance_and_refusals_and_prometheus_reads_them() {
    if !require_tool("openssl") || !require_tool("curl") || !require_tool("prometheus") {
        return;
    }
    // 5-day certificates, so a fresh one counts as expiring within 7 days.
    let mut server = CaServer::start_with(ServerOptions {
        args: vec!["--validity".into(), "5d".into()],
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let before = scrape(&server);
    for series in [ISSUED, PSK_REJECTED, "ca_psks_live", "ca_store_up"] {
        assert!(
            before.lines().any(|l| l.starts_with(&format!("{series} "))),
            "{series} is exported before anything happens:\n{before}"
        );
    }
    assert_eq!(sample(&before, "ca_store_up"), 1.0);
    assert!(sample(&before, "ca_intermediate_expiry_seconds") > 4.0 * 365.0 * 86_400.0);
    assert!(sample(&before, "ca_crl_expiry_seconds") > 0.0);

    // A PSK shows in the live gauge (store counts are cached a few seconds).
    let psk = server.psk_add("web1.example.internal", &[]);
    wait_for(Duration::from_secs(20), "ca_psks_live to be 1", || {
        (sample(&scrape(&server), "ca_psks_live") == 1.0).then_some(())
    });
    let psk_file = write_file(work.path(), "psk", &psk);
    run_ok(&mut server.bootstrap_cmd(
        "web1.example.internal",
        &psk_file,
        &work.path().join("web1"),
    ));

    // Refusals: a wrong PSK (403) and a body that is no CSR (400).
    let wrong = "wrongwrongwrongwrongwrongwrongwrongwrong123";
    server.remember_secret(wrong);
    let key = openssl_key(work.path(), "k.pem", "ec:P-256").unwrap();
    let csr = openssl_csr(&key, "web2.example.internal", Some(wrong), &[]).unwrap();
    assert_eq!(sign(&server, csr), (403, "psk_rejected".into()));
    assert_eq!(sign(&server, b"not a csr".to_vec()).0, 400);

    let after = scrape(&server);
    assert_eq!(sample(&after, ISSUED), sample(&before, ISSUED) + 1.0);
    assert_eq!(
        sample(&after, PSK_REJECTED),
        sample(&before, PSK_REJECTED) + 1.0
    );
    assert_eq!(sample(&after, MALFORMED), sample(&before, MALFORMED) + 1.0);
    let count = |status: u16| {
        sample(
            &after,
            &format!(
                r#"ca_http_request_duration_seconds_count{{route="/v1/sign",status="{status}"}}"#
            ),
        )
    };
    assert_eq!((count(201), count(403), count(400)), (1.0, 1.0, 1.0));
    wait_for(Duration::from_secs(20), "the 7-day expiry gauge", || {
        let m = scrape(&server);
        (sample(&m, "ca_psks_live") == 0.0
            && sample(&m, r#"ca_certificates_expiring{within="7d"}"#) == 1.0)
            .then_some(())
    });
    assert!(
        !after.contains("web1") && !after.contains("web2"),
        "no hostnames in metrics"
    );
    assert!(!after.contains(&psk));

    // The audit log keeps the precise reason the metrics do not show.
    let audit = run_ok(server.cli().args([
        "audit",
        "--since",
        "1h",
        "--host",
        "web2.example.internal",
        "--event",
        "sign",
        "--json",
    ]));
    let rows: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{audit}");
    assert_eq!(rows[0]["reason"], "psk_unknown_host");

    // A real Prometheus scrapes and parses the exposition.
    let prom = Prometheus::start(
        &work.path().join("prometheus"),
        &server.addr,
        &server.root_pem(),
        "localhost",
    );
    wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape the CA",
        || {
            let up = prom.query(r#"up{job="ca"}"#);
            (up.first()?.1 == 1.0).then_some(())
        },
    );
    let issued = prom.query(ISSUED);
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].1, sample(&after, ISSUED));
    let refused = prom.query(r#"sum(ca_sign_rejections_total)"#);
    assert_eq!(refused[0].1, 2.0);
    let latency = prom.query(
        r#"histogram_quantile(0.5, sum by (le) (ca_http_request_duration_seconds_bucket{route="/v1/sign"}))"#,
    );
    assert!(latency[0].1 > 0.0, "{latency:?}");
    server.assert_no_secret_leaks();
}

#[test]
fn json_logs_have_one_object_per_line_and_one_line_per_request() {
    // CA_LOG_FORMAT: the environment overlay reaches the global flag.
    let server = CaServer::start_with(ServerOptions {
        env: vec![("CA_LOG_FORMAT".into(), "json".into())],
        ..Default::default()
    });
    assert_eq!(sign(&server, b"junk".to_vec()).0, 400);
    block_on(
        server
            .client()
            .send(http::Method::GET, "/healthz", None, bytes::Bytes::new()),
    )
    .unwrap();
    let logs = wait_for(Duration::from_secs(10), "two request lines", || {
        let logs = server.logs();
        (logs.matches(r#""message":"request""#).count() >= 2).then_some(logs)
    });
    let mut requests = Vec::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["message"] == "request" {
            requests.push(v);
        }
    }
    let sign = requests
        .iter()
        .find(|r| r["path"].as_str().unwrap().contains("/v1/sign"))
        .unwrap();
    assert_eq!(sign["status"], 400);
    assert_eq!(sign["outcome"], "malformed_csr");
    assert_eq!(sign["method"], "POST");
    assert_eq!(sign["route"], "/v1/sign");
    assert!(sign["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(sign["micros"].is_u64());
}

/// The lifetime (notAfter - notBefore, seconds) of the server's own certificate.
fn server_cert_lifetime(server: &CaServer) -> i64 {
    let shown = run_ok(server.cli().args(["cert", "show", "localhost", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let der = pem::parse(v["pem"].as_str().unwrap())
        .unwrap()
        .into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()
}

#[test]
fn serve_settings_come_from_flags_then_environment_then_file_then_defaults() {
    let work = tempfile::tempdir().unwrap();
    // The file also sets a listen address the harness's --listen flag overrides.
    let config = write_file(
        work.path(),
        "ca.toml",
        "[serve]\nlisten = \"127.0.0.1:1\"\nvalidity = \"10d\"\ncrl_validity = \"2h\"\n",
    );
    let with = |env: &[(&str, &str)], args: &[&str]| {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("CA_CONFIG".into(), config.display().to_string()));
        let server = CaServer::start_with(ServerOptions {
            env,
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        });
        let lifetime = server_cert_lifetime(&server) - 300; // notBefore is backdated 5 min
        (lifetime / 86_400, server)
    };
    let (days, server) = with(&[], &[]);
    assert_eq!(days, 10, "from the file");
    assert_ne!(server.port, 1, "the --listen flag beats the file");
    let crl = block_on(server.client().send(
        http::Method::GET,
        "/v1/crl",
        None,
        bytes::Bytes::new(),
    ))
    .unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&crl.body).unwrap();
    let life = crl.next_update().unwrap().timestamp() - crl.last_update().timestamp();
    assert_eq!(life, 2 * 3600 + 300, "crl_validity from the file");
    drop(server);
    assert_eq!(with(&[("CA_VALIDITY", "20d")], &[]).0, 20, "env beats file");
    assert_eq!(
        with(&[("CA_VALIDITY", "20d")], &["--validity", "15d"]).0,
        15,
        "flag beats env"
    );
}

/// `config check --json` run with `args` and `env`: key -> (values, origin).
fn check_json(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = Command::new(ca_tests::bin("ca-server"));
    cmd.args(args).args(["config", "check", "--json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    serde_json::from_str(&run_ok(&mut cmd)).unwrap()
}

fn setting<'a>(all: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {all}"))
}

#[test]
fn config_check_shows_each_value_with_its_origin_in_precedence_order() {
    let work = tempfile::tempdir().unwrap();
    let file = write_file(
        work.path(),
        "ca.toml",
        "data_dir = \"/from/file\"\nlog_format = \"json\"\n\
         database_url = \"postgres://ca:hunter2hunter2@db.internal:5432/ca\"\n\
         [serve]\nvalidity = \"10d\"\nhostnames = [\"ca.example.internal\", \"localhost\"]\n",
    );
    let f = file.to_str().unwrap();
    let all = check_json(&["--config", f], &[]);
    let data_dir = setting(&all, "data_dir");
    assert_eq!(data_dir["values"][0], "/from/file");
    assert_eq!(data_dir["origin"], serde_json::json!({"file": 1}));
    assert_eq!(setting(&all, "log")["origin"], "default");
    assert_eq!(
        setting(&all, "hostnames")["values"],
        serde_json::json!(["ca.example.internal", "localhost"])
    );
    let url = setting(&all, "database_url")["values"][0].as_str().unwrap();
    assert_eq!(
        url, "postgres://ca:***@db.internal:5432/ca",
        "password redacted"
    );

    let env = [("CA_DATA_DIR", "/from/env"), ("CA_CONFIG", f)];
    let all = check_json(&[], &env);
    assert_eq!(setting(&all, "data_dir")["values"][0], "/from/env");
    assert_eq!(
        setting(&all, "data_dir")["origin"],
        serde_json::json!({"env": "CA_DATA_DIR"})
    );
    let all = check_json(&["--data-dir", "/from/flag"], &env);
    assert_eq!(setting(&all, "data_dir")["values"][0], "/from/flag");
    assert_eq!(setting(&all, "data_dir")["origin"], "flag");

    // The TOML output is a configuration file itself, and the secret is not in it.
    let shown = run_ok(
        Command::new(ca_tests::bin("ca-server"))
            .args(["--config", f, "config", "check"])
            .env_remove("CA_CONFIG"),
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    let again = write_file(work.path(), "again.toml", &shown);
    run_ok(Command::new(ca_tests::bin("ca-server")).args([
        "config",
        "check",
        again.to_str().unwrap(),
    ]));
}

#[test]
fn config_check_refuses_an_unknown_key_with_its_name_and_line() {
    let work = tempfile::tempdir().unwrap();
    let file = write_file(
        work.path(),
        "ca.toml",
        "# CA settings\ndata_dir = \"/var/lib/ca-server\"\n\n[serve]\nlisten = \"0.0.0.0:8443\"\nlisen = \"0.0.0.0:9443\"\n",
    );
    let f = file.to_str().unwrap();
    for args in [
        vec!["config", "check", f],
        vec!["--config", f, "config", "check"],
        // Any verb refuses to run on a broken file.
        vec!["--config", f, "psk", "list"],
    ] {
        let out = run(Command::new(ca_tests::bin("ca-server")).args(&args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{f}:6: unknown key `lisen` in [serve]")),
            "{args:?}: {stderr}"
        );
    }
    // Values are checked by the flag's own parser, with the line.
    let bad = write_file(work.path(), "bad.toml", "[serve]\n\nvalidity = \"soon\"\n");
    let out = run(Command::new(ca_tests::bin("ca-server")).args([
        "config",
        "check",
        bad.to_str().unwrap(),
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("bad.toml:3: `validity` in [serve]: invalid value 'soon'"),
        "{stderr}"
    );
    // The samples shipped in examples/ are valid.
    for sample in ["ca-server.toml", "ca-server-postgres.toml"] {
        run_ok(Command::new(ca_tests::bin("ca-server")).args([
            "config",
            "check",
            workspace().join("examples").join(sample).to_str().unwrap(),
        ]));
    }
}

/// `doctor` output and exit code.
fn doctor(server: &CaServer) -> (i32, String) {
    let out = run(server.cli().args(["doctor", "--server", &server.url]));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_finds_a_readable_key_and_an_expiring_intermediate_and_rotation_keeps_the_fleet() {
    if !require_tool("openssl") {
        return;
    }
    let mut server = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let (code, out) = doctor(&server);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the served CRL #"), "{out}");

    use std::os::unix::fs::PermissionsExt;
    let key = server.data_dir.join("intermediate.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out) = doctor(&server);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL  permissions: {} is world-readable (mode 0644)",
            key.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("fix: chmod 600 {}", key.display())),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A host enrolled under the first intermediate.
    let old = bootstrap(&mut server, "old.example.internal", work.path());

    // A short-lived intermediate: doctor must say so, and that the running
    // server still signs its CRL with the retired one.
    let rotated: serde_json::Value = serde_json::from_str(&run_ok(server.cli().args([
        "intermediate",
        "rotate",
        "--validity",
        "10d",
        "--json",
    ])))
    .unwrap();
    assert_eq!(rotated["root_fingerprint"], server.fingerprint.as_str());
    let (code, out) = doctor(&server);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  expiry: the intermediate expires in 9 days"),
        "{out}"
    );
    assert!(out.contains("intermediate rotate"), "{out}");
    assert!(
        out.contains("not signed by this data dir's intermediate"),
        "{out}"
    );

    // After a restart the server signs with the new intermediate; old and
    // new hosts verify against the same root with their own chains.
    server.restart();
    let (_, out) = doctor(&server);
    assert!(out.contains("signed by this intermediate"), "{out}");
    let new = bootstrap(&mut server, "new.example.internal", work.path());
    for (host, issued) in [
        ("old.example.internal", &old),
        ("new.example.internal", &new),
    ] {
        let dir = work.path().join(host);
        run_ok(
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(dir.join("ca.pem"))
                .arg("-untrusted")
                .arg(dir.join("chain.pem"))
                .arg(dir.join("cert.pem")),
        );
        assert!(issued["serial"].is_string());
    }
    let new_chain =
        std::fs::read_to_string(work.path().join("new.example.internal/chain.pem")).unwrap();
    let old_chain =
        std::fs::read_to_string(work.path().join("old.example.internal/chain.pem")).unwrap();
    assert_ne!(
        new_chain.split("-----END CERTIFICATE-----").nth(1),
        old_chain.split("-----END CERTIFICATE-----").nth(1),
        "different intermediates"
    );
    server.assert_no_secret_leaks();
}

/// scripts/probe.sh against `server`, with `env`.
fn probe(
    server: &CaServer,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> std::process::Output {
    let mut cmd = Command::new(workspace().join("scripts/probe.sh"));
    cmd.args(["--server", &server.url])
        .args(args)
        .env("CA_SERVER_BIN", ca_tests::bin("ca-server"))
        .env("CA_CLIENT_BIN", ca_tests::bin("ca-client"))
        .env("CA_DATA_DIR", &server.data_dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

#[test]
fn probe_passes_against_a_running_server_and_fails_clearly_when_refused() {
    if !require_tool("openssl") || !require_tool("curl") {
        return;
    }
    let server = CaServer::start();
    let out = probe(&server, &[], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("probe: OK host=ca-probe.invalid serial="),
        "{stdout}"
    );
    let certs = server.certs_of("ca-probe.invalid");
    assert_eq!(certs.len(), 1);
    // The probe's last step revoked its certificate.
    assert_eq!(certs[0]["status"], "revoked");

    // The probe's PSK goes into another store than the server's: refused.
    let other = tempfile::tempdir().unwrap();
    let out = probe(
        &server,
        &["--fingerprint", &server.fingerprint, "--no-revoke"],
        &[("CA_DATA_DIR", other.path().as_os_str())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.starts_with("probe: FAIL issue: the CA refused the probe's PSK (403"),
        "{stderr}"
    );
    // Nothing reaches the terminal but the verdict: no PSK.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    server.assert_no_secret_leaks();
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    if !require_tool("systemd-analyze") || !require_tool("man") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let bin_dir = ca_tests::bin("ca-server").parent().unwrap().to_path_buf();
    // The units name man pages: generate them where `man` finds them.
    let man = work.path().join("man/man1");
    run_ok(
        Command::new(ca_tests::bin("ca-server"))
            .arg("man")
            .arg("--out-dir")
            .arg(&man),
    );
    run_ok(ca_client().arg("man").arg("--out-dir").arg(&man));
    let units = work.path().join("units");
    std::fs::create_dir_all(&units).unwrap();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(workspace().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".service") && !name.ends_with(".timer") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Installed binaries live in /usr/local/bin; here, in the build dir.
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(units.join(&name), text).unwrap();
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "ca-client-crl.service",
            "ca-client-crl.timer",
            "ca-client-ocsp.service",
            "ca-client-ocsp.timer",
            "ca-client-renew.service",
            "ca-client-renew.timer",
            "ca-server.service"
        ]
    );
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .current_dir(&units)
        .env("MANPATH", work.path().join("man")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("ca-"),
        "warnings about our units: {stderr}"
    );

    // The server's exposure score (0 best, 10 worst): "OK" is below 4.
    let out = run(Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=true",
            "--no-pager",
            "ca-server.service",
        ])
        .current_dir(&units));
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for ca-server.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(score <= 2.0, "ca-server.service exposure {score}:\n{text}");
    let unit = std::fs::read_to_string(units.join("ca-server.service")).unwrap();
    for line in [
        "User=ca-server",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
}

#[test]
fn completions_load_in_bash_and_man_pages_render() {
    if !require_tool("bash") || !require_tool("man") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    for bin in ["ca-server", "ca-client"] {
        let script = run_ok(Command::new(ca_tests::bin(bin)).args(["completions", "bash"]));
        let file = write_file(work.path(), &format!("{bin}.bash"), &script);
        let out = run_ok(
            Command::new("bash")
                .arg("-c")
                .arg(format!("source {} && complete -p {bin}", file.display())),
        );
        assert!(out.contains(bin), "{out}");
        let dir = work.path().join(bin);
        run_ok(
            Command::new(ca_tests::bin(bin))
                .arg("man")
                .arg("--out-dir")
                .arg(&dir),
        );
        let page = dir.join(format!("{bin}.1"));
        let out = run(Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "0"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("completions"), "{text}");
    }
    assert!(work.path().join("ca-server/ca-server-doctor.1").exists());
    assert!(
        work.path()
            .join("ca-server/ca-server-config-check.1")
            .exists()
    );
}

#[test]
fn metrics_show_the_store_down_and_its_errors_and_doctor_names_it() {
    if !ca_tests::pg::require_postgres() || !require_tool("openssl") {
        return;
    }
    let mut pg = ca_tests::pg::PgCluster::start();
    let mut server = CaServer::start_with(pg.server_options("ca"));
    let work = tempfile::tempdir().unwrap();
    let psk = server.psk_add("pg1.example.internal", &[]);
    let key = openssl_key(work.path(), "k.pem", "ec:P-256").unwrap();
    let csr = openssl_csr(&key, "pg1.example.internal", Some(&psk), &[]).unwrap();
    let errors = |m: &str| {
        sample(m, r#"ca_store_errors_total{kind="database"}"#)
            + sample(m, r#"ca_store_errors_total{kind="down"}"#)
    };
    let before = scrape(&server);
    assert_eq!(sample(&before, "ca_store_up"), 1.0);

    pg.stop();
    wait_for(Duration::from_secs(30), "ca_store_up to be 0", || {
        (sample(&scrape(&server), "ca_store_up") == 0.0).then_some(())
    });
    assert_eq!(
        sign(&server, csr.clone()),
        (503, "store_unavailable".into())
    );
    let down = scrape(&server);
    assert!(errors(&down) > errors(&before), "{down}");
    let out = run(server.cli().args(["doctor", "--server", &server.url]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  store: postgres://"), "{text}");
    assert!(
        text.contains("/healthz answers 503 store_unavailable"),
        "{text}"
    );

    pg.restart();
    wait_for(Duration::from_secs(30), "ca_store_up to be 1", || {
        (sample(&scrape(&server), "ca_store_up") == 1.0).then_some(())
    });
    assert_eq!(sign(&server, csr).0, 201, "the PSK survived the outage");
    server.assert_no_secret_leaks();
}

/// A server whose stderr is a pipe nobody reads (a stalled journald, a
/// `| tee` on a full disk) keeps issuing: log lines queue for a writer
/// thread and are dropped, counted, when the queue is full, instead of
/// blocking the workers once the pipe's 64 KiB fill (`cli/log_sink.rs`).
#[test]
fn a_stderr_nobody_reads_does_not_stop_issuance() {
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    run_ok(
        Command::new(ca_tests::bin("ca-server"))
            .arg("--data-dir")
            .arg(&data)
            .args(["init", "--name", "Stuck log"]),
    );
    let port = ca_tests::services::free_port();
    // `debug` writes several lines per request: ~2,000 requests are far
    // more than the pipe holds. The pipe's read end stays open, unread.
    let mut server = Command::new(ca_tests::bin("ca-server"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--log", "debug", "serve", "--hostname", "localhost"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ca-server");
    let root = data.join("root.crt");
    let url = format!("https://localhost:{port}");
    wait_for(Duration::from_secs(30), "ca-server to answer", || {
        let ok = Command::new("curl")
            .args(["-sf", "--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg("--cacert")
            .arg(&root)
            .arg(format!("{url}/healthz"))
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(())
    });
    let mut load = Command::new(ca_tests::bin("loadgen"))
        .args(["--server", &url])
        .arg("--root")
        .arg(&root)
        .args(["--target", "ours", "--requests", "2000"])
        .args(["--concurrency", "8", "--mode", "keepalive"])
        .arg("--ca-server")
        .arg(ca_tests::bin("ca-server"))
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen");
    // A liveness bound, not a timing: a blocked server never finishes.
    let status = wait_for(Duration::from_secs(300), "2,000 issuances", || {
        load.try_wait().expect("loadgen status")
    });
    let out = load.wait_with_output().expect("loadgen output");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        status.success(),
        "loadgen failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // loadgen checked the store: 2,000 certificates recorded, 2,000 PSKs spent.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 2000 "), "{text}");
}
