//! The sample `examples/haproxy.cfg`, unchanged, in front of two replicas on
//! one PostgreSQL: hosts bootstrap through HAProxy; a replica killed with
//! `kill -9` is taken out by the /healthz check and the other serves; with
//! PostgreSQL stopped both are out (their /healthz says 503), and both come
//! back when it returns, without a restart.

use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::services::{Haproxy, free_port};
use ca_tests::*;
use std::path::Path;
use std::time::Duration;

/// `examples/haproxy.cfg`, unchanged, in front of `replicas`; returns the
/// proxy and its URL.
fn start_proxy(dir: &Path, root: &Path, replicas: &[&CaServer]) -> (Haproxy, String) {
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/haproxy.cfg");
    let port = free_port();
    let mut proxy = Haproxy::with_config(dir, &cfg);
    proxy.env = vec![
        ("CA_FRONTEND".into(), format!("127.0.0.1:{port}")),
        ("CA_NAME".into(), "localhost".into()),
        ("CA_ROOT".into(), root.display().to_string()),
        ("CA1".into(), replicas[0].addr.clone()),
        ("CA2".into(), replicas[1].addr.clone()),
    ];
    let check = proxy.check();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    proxy.start(&[port]);
    (proxy, format!("https://localhost:{port}"))
}

/// Waits until `needle` appears in HAProxy's log.
fn wait_log(proxy: &Haproxy, needle: &str) {
    wait_for(Duration::from_secs(60), needle, || {
        proxy.logs().contains(needle).then_some(())
    });
}

/// `ca-client bootstrap` for `host` through `url`.
fn bootstrap_through(url: &str, server: &mut CaServer, host: &str, work: &Path) {
    let psk = server.psk_add(host, &[]);
    let psk_file = write_file(work, &format!("{host}.psk"), &psk);
    let out = run_ok(
        ca_client()
            .args(["bootstrap", "--server", url, "--fingerprint"])
            .arg(&server.fingerprint)
            .args(["--hostname", host, "--psk-file"])
            .arg(&psk_file)
            .arg("--dir")
            .arg(work.join(host))
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hostname"], host);
    assert_eq!(v["recovered"], false);
}

#[test]
fn the_sample_haproxy_config_balances_replicas_and_follows_their_health() {
    if !require_tool("haproxy") || !require_postgres() {
        return;
    }
    let mut pg = PgCluster::start();
    let mut opts = pg.server_options("ca");
    // The sample config sends a PROXY v2 header naming each client.
    opts.args
        .extend(["--proxy-protocol-from".into(), "127.0.0.1".into()]);
    let mut servers = CaServer::start_replicas(opts, 2);
    let work = tempfile::tempdir().unwrap();
    let (proxy, url) = start_proxy(
        work.path(),
        &servers[0].root_pem(),
        &[&servers[0], &servers[1]],
    );

    // Both replicas up: hosts bootstrap through HAProxy (TLS passes through,
    // the pinned fingerprint is the CA's own).
    for i in 0..4 {
        bootstrap_through(
            &url,
            &mut servers[0],
            &format!("lb{i}.example.internal"),
            work.path(),
        );
    }
    wait_for(
        Duration::from_secs(30),
        "HAProxy to check both replicas",
        || {
            servers
                .iter()
                .all(|s| s.logs().contains("path=\"/healthz\" status=200"))
                .then_some(())
        },
    );
    assert!(!proxy.logs().contains("is DOWN"), "{}", proxy.logs());

    // Replica 1 dies: HAProxy marks it down; replica 2 serves alone.
    servers[0].kill9();
    wait_log(&proxy, "Server ca_replicas/ca1 is DOWN");
    let issued = |s: &CaServer| s.logs().matches("status=201").count();
    let before = issued(&servers[1]);
    bootstrap_through(
        &url,
        &mut servers[1],
        "lb-after-kill.example.internal",
        work.path(),
    );
    // (The request line reaches the log from the server's log thread.)
    wait_for(Duration::from_secs(10), "replica 2's request line", || {
        (issued(&servers[1]) == before + 1).then_some(())
    });

    // PostgreSQL stops: replica 2 answers /healthz with 503 and goes down too.
    pg.stop();
    wait_log(&proxy, "Server ca_replicas/ca2 is DOWN");
    assert!(
        proxy.logs().contains("Layer7 wrong status, code: 503"),
        "{}",
        proxy.logs()
    );
    // PostgreSQL is back: the same replica process comes back up in HAProxy.
    pg.restart();
    wait_log(&proxy, "Server ca_replicas/ca2 is UP");
    bootstrap_through(
        &url,
        &mut servers[1],
        "lb-after-pg.example.internal",
        work.path(),
    );
    assert_eq!(servers[1].logs().matches(" listening ").count(), 1);
    servers[1].assert_no_secret_leaks();
    drop(proxy);
    servers.pop();
}
