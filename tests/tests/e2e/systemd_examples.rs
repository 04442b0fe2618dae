//! The systemd units in `examples/`: `systemd-analyze verify` accepts them,
//! and the command each service runs works against a real server, with the
//! environment file's variables substituted as systemd does.

use ca_tests::fleet::bootstrap;
use ca_tests::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `KEY=value` lines of an environment file.
fn env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A unit with the binary and environment file pointed at the test's own.
fn localise(unit: &str, env: &Path) -> String {
    unit.replace(
        "/usr/local/bin/ca-client",
        &bin("ca-client").display().to_string(),
    )
    .replace(
        "EnvironmentFile=/etc/default/ca-client",
        &format!("EnvironmentFile={}", env.display()),
    )
}

/// The `ExecStart=` command of a unit, `${VAR}`s expanded from `env`.
fn exec_start(unit: &str, env: &HashMap<String, String>) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    line.split_whitespace()
        .map(|word| {
            let mut w = word.to_owned();
            for (k, v) in env {
                w = w.replace(&format!("${{{k}}}"), v);
            }
            assert!(!w.contains("${"), "unexpanded variable in {word}");
            w
        })
        .collect()
}

#[test]
fn the_systemd_examples_verify_and_their_commands_run() {
    if !require_tool("systemd-analyze") {
        return;
    }
    // With the plain-HTTP listener, so that the leaf names an OCSP responder.
    let http_port = ca_tests::services::free_port();
    let mut ca = CaServer::start_with(ServerOptions {
        args: vec![
            "--http-listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--http-public-url".into(),
            format!("http://127.0.0.1:{http_port}"),
        ],
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let host = bootstrap(&mut ca, "web.example.internal", work.path(), "web");
    // A recorded install that needs no running nginx (check `true`, no reload).
    run_ok(
        ca_client()
            .args([
                "install",
                "nginx",
                "--no-reload",
                "--check",
                "true",
                "--dir",
            ])
            .arg(&host.dir)
            .arg("--dest")
            .arg(work.path().join("tls")),
    );

    let mut env = env_file(&std::fs::read_to_string(examples().join("ca-client.env")).unwrap());
    assert_eq!(
        env.keys()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        ["CA_CLIENT_DIR", "CA_CLIENT_SERVICES", "CA_SERVER"].into()
    );
    env.insert("CA_SERVER".into(), ca.url.clone());
    env.insert("CA_CLIENT_DIR".into(), host.dir.display().to_string());
    env.insert("CA_CLIENT_SERVICES".into(), "nginx".into());
    let env_path = write_file(
        work.path(),
        "ca-client.env",
        env.iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect::<String>(),
    );

    let units = work.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let mut names = Vec::new();
    for name in [
        "ca-client-crl.service",
        "ca-client-crl.timer",
        "ca-client-renew.service",
        "ca-client-renew.timer",
        "ca-client-ocsp.service",
        "ca-client-ocsp.timer",
    ] {
        let text = std::fs::read_to_string(examples().join(name)).unwrap();
        write_file(&units, name, localise(&text, &env_path));
        names.push(units.join(name));
    }
    let out = run(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the services run: the CRL first (installed for nginx), then renew (not due).
    let run_unit = |name: &str| {
        let unit = std::fs::read_to_string(units.join(name)).unwrap();
        let argv = exec_start(&unit, &env);
        run_ok(Command::new(&argv[0]).args(&argv[1..]))
    };
    let out = run_unit("ca-client-crl.service");
    assert!(out.starts_with("installed CRL number="), "{out}");
    assert!(out.contains("nginx at "), "{out}");
    assert!(work.path().join("tls/current/crl.pem").exists());
    let out = run_unit("ca-client-renew.service");
    assert!(out.starts_with("not due: web.example.internal"), "{out}");
    // The OCSP unit's fetch and verification (no HAProxy here: its
    // `--install haproxy --haproxy-socket ...` part is left off).
    let unit = std::fs::read_to_string(units.join("ca-client-ocsp.service")).unwrap();
    let argv = exec_start(&unit, &env);
    let cut = argv.iter().position(|a| a == "--install").unwrap();
    assert_eq!(
        argv[cut..],
        [
            "--install",
            "haproxy",
            "--haproxy-socket",
            "/run/haproxy/admin.sock"
        ]
    );
    let out = run_ok(Command::new(&argv[0]).args(&argv[1..cut]));
    assert!(out.starts_with("good serial="), "{out}");
    assert!(host.dir.join("cert.ocsp").exists());
}
