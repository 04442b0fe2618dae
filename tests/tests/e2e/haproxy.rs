//! The sample `examples/haproxy.cfg`, unchanged, in front of two replicas on
//! one PostgreSQL: hosts bootstrap through HAProxy; a replica killed with
//! `kill -9` is taken out by the /healthz check and the other serves; with
//! PostgreSQL stopped both are out (their /healthz says 503), and both come
//! back when it returns, without a restart.

use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `haproxy -db -f examples/haproxy.cfg`, killed on drop.
struct HaProxy {
    child: Child,
    log: PathBuf,
    url: String,
}

impl HaProxy {
    fn start(dir: &Path, root: &Path, replicas: &[&CaServer]) -> HaProxy {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/haproxy.cfg");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env = [
            ("CA_FRONTEND", format!("127.0.0.1:{port}")),
            ("CA_NAME", "localhost".to_owned()),
            ("CA_ROOT", root.display().to_string()),
            ("CA1", replicas[0].addr.clone()),
            ("CA2", replicas[1].addr.clone()),
        ];
        run_ok(
            Command::new("haproxy")
                .args(["-c", "-f"])
                .arg(&cfg)
                .envs(env.clone()),
        );
        let log = dir.join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&cfg)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting haproxy");
        let proxy = HaProxy {
            child,
            log,
            url: format!("https://localhost:{port}"),
        };
        wait_for(Duration::from_secs(30), "haproxy to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        proxy
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` has appeared `n` times in HAProxy's log.
    fn wait_log(&self, n: usize, needle: &str) {
        wait_for(Duration::from_secs(60), needle, || {
            (self.logs().matches(needle).count() >= n).then_some(())
        });
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let mut servers = CaServer::start_replicas(pg.server_options("ca"), 2);
    let work = tempfile::tempdir().unwrap();
    let proxy = HaProxy::start(
        work.path(),
        &servers[0].root_pem(),
        &[&servers[0], &servers[1]],
    );

    // Both replicas up: hosts bootstrap through HAProxy (TLS passes through,
    // the pinned fingerprint is the CA's own).
    for i in 0..4 {
        bootstrap_through(
            &proxy.url,
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
    proxy.wait_log(1, "Server ca_replicas/ca1 is DOWN");
    let issued = |s: &CaServer| s.logs().matches("status=201").count();
    let before = issued(&servers[1]);
    bootstrap_through(
        &proxy.url,
        &mut servers[1],
        "lb-after-kill.example.internal",
        work.path(),
    );
    assert_eq!(issued(&servers[1]), before + 1, "replica 2 issued it");

    // PostgreSQL stops: replica 2 answers /healthz with 503 and goes down too.
    pg.stop();
    proxy.wait_log(1, "Server ca_replicas/ca2 is DOWN");
    assert!(
        proxy.logs().contains("Layer7 wrong status, code: 503"),
        "{}",
        proxy.logs()
    );
    // PostgreSQL is back: the same replica process comes back up in HAProxy.
    pg.restart();
    proxy.wait_log(1, "Server ca_replicas/ca2 is UP");
    bootstrap_through(
        &proxy.url,
        &mut servers[1],
        "lb-after-pg.example.internal",
        work.path(),
    );
    assert_eq!(servers[1].logs().matches(" listening ").count(), 1);
    servers[1].assert_no_secret_leaks();
    drop(proxy);
    servers.pop();
}
