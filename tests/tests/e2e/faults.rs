//! Fault injection against the real server: `kill -9` during sustained
//! issuance, the store on a full filesystem, a store that refuses the
//! certificate INSERT, and a client whose clock runs behind. After each, no
//! certificate exists that the store does not hold, no PSK is spent without
//! its certificate, and the server recovers.

use bytes::Bytes;
use ca_tests::forge::{CsrSpec, forge, p256};
use ca_tests::*;
use http::{Method, StatusCode};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn live_psks(server: &CaServer) -> BTreeSet<String> {
    run_ok(server.cli().args(["psk", "list", "--json"]))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["hostname"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// (hostname, serial) of every host certificate in the store.
fn host_certs(server: &CaServer) -> Vec<(String, String)> {
    run_ok(server.cli().args(["cert", "list", "--json"]))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "host")
        .map(|v| {
            (
                v["hostname"].as_str().unwrap().to_owned(),
                v["serial"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn post(client: &ca_client::https::HttpsClient, body: &[u8]) -> Option<(StatusCode, String)> {
    let reply = sign_csr(client, body.to_vec()).await.ok()?;
    let serial = reply
        .headers
        .get("x-certificate-serial")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Some((reply.status, serial))
}

#[test]
fn kill_9_during_sustained_issuance_loses_no_certificate_and_no_psk() {
    const HOSTS: usize = 60;
    let mut server = CaServer::start();
    let hosts: Vec<String> = (0..HOSTS)
        .map(|i| format!("k{i}.example.internal"))
        .collect();
    let bodies: Vec<Vec<u8>> = hosts
        .iter()
        .map(|h| {
            let psk = server.psk_add(h, &[]);
            forge(&p256(), &CsrSpec::host(h, &psk))
        })
        .collect();

    // Six clients issue without pause; the server is killed once 15
    // certificates have been answered, with requests in flight.
    let answered = Arc::new(AtomicUsize::new(0));
    let client = server.client();
    let worker = {
        let (answered, bodies) = (answered.clone(), bodies.clone());
        std::thread::spawn(move || {
            block_on(async move {
                let next = Arc::new(AtomicUsize::new(0));
                let tasks: Vec<_> = (0..6)
                    .map(|_| {
                        let (client, bodies, next, answered) = (
                            client.clone(),
                            bodies.clone(),
                            next.clone(),
                            answered.clone(),
                        );
                        tokio::spawn(async move {
                            let mut got = Vec::new();
                            loop {
                                let i = next.fetch_add(1, Ordering::SeqCst);
                                if i >= bodies.len() {
                                    return got;
                                }
                                let result = post(&client, &bodies[i]).await;
                                if matches!(result, Some((StatusCode::CREATED, _))) {
                                    answered.fetch_add(1, Ordering::SeqCst);
                                }
                                got.push((i, result));
                            }
                        })
                    })
                    .collect();
                let mut all = BTreeMap::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                all
            })
        })
    };
    wait_for(Duration::from_secs(60), "15 certificates", || {
        (answered.load(Ordering::SeqCst) >= 15).then_some(())
    });
    server.kill9();
    let results = worker.join().unwrap();
    let issued: BTreeMap<usize, String> = results
        .iter()
        .filter_map(|(i, r)| match r {
            Some((StatusCode::CREATED, serial)) => Some((*i, serial.clone())),
            _ => None,
        })
        .collect();
    assert!(
        issued.len() >= 15 && issued.len() < HOSTS,
        "the kill came mid-run: {} issued",
        issued.len()
    );

    server.restart();
    let psks = live_psks(&server);
    let certs = host_certs(&server);
    let mut certs_by_host: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (h, s) in &certs {
        certs_by_host.entry(h).or_default().push(s);
    }
    for (i, host) in hosts.iter().enumerate() {
        let recorded = certs_by_host
            .get(host.as_str())
            .cloned()
            .unwrap_or_default();
        if let Some(serial) = issued.get(&i) {
            assert_eq!(
                recorded,
                [serial.as_str()],
                "{host}: the answered certificate is recorded"
            );
        }
        assert!(recorded.len() <= 1, "{host}: {recorded:?}");
        assert_eq!(
            psks.contains(host),
            recorded.is_empty(),
            "{host}: a PSK is spent if and only if its certificate is recorded"
        );
    }

    // Every host finishes: a lost answer is recovered by the idempotent retry
    // (200, the recorded serial), an untouched PSK still works (201).
    let client = server.client();
    block_on(async {
        for (i, host) in hosts.iter().enumerate() {
            if issued.contains_key(&i) {
                continue;
            }
            let (status, serial) = post(&client, &bodies[i]).await.expect("an answer");
            match certs_by_host.get(host.as_str()) {
                Some(recorded) => {
                    assert_eq!(status, StatusCode::OK, "{host}");
                    assert_eq!(serial, recorded[0], "{host}");
                }
                None => assert_eq!(status, StatusCode::CREATED, "{host}"),
            }
        }
    });
    assert!(live_psks(&server).is_empty());
    assert_eq!(host_certs(&server).len(), HOSTS);
    server.assert_no_secret_leaks();
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a `size` tmpfs at `dir`; `None` (a skip outside CI) if mounting
    /// is not permitted here.
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir));
        if out.status.success() {
            return Some(Tmpfs(dir.to_path_buf()));
        }
        let why = String::from_utf8_lossy(&out.stderr);
        if in_ci() {
            panic!("mounting a tmpfs is required under CI=true (run as root): {why}");
        }
        eprintln!("SKIP: cannot mount a tmpfs here ({why})");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `path` until the filesystem refuses (ENOSPC).
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_filesystem_under_the_store_gives_503_and_recovers() {
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("store");
    let Some(_tmpfs) = Tmpfs::mount(&mnt, "16m") else {
        return;
    };
    let mut server = CaServer::start_with(ServerOptions {
        database_url: Some(format!("sqlite://{}", mnt.join("ca.db").display())),
        ..Default::default()
    });
    let host = "full.example.internal";
    let psk = server.psk_add(host, &[]);
    let body = forge(&p256(), &CsrSpec::host(host, &psk));
    let client = server.client();
    fill(&mnt.join("filler"));
    block_on(async {
        let reply = sign_csr(&client, body.clone()).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&reply), "store_unavailable");
        assert_eq!(reply.retry_after(), Some(5));
        let health = client
            .send(Method::GET, "/healthz", None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    });
    assert!(live_psks(&server).contains(host), "nothing was consumed");
    assert!(host_certs(&server).is_empty());

    // Space returns: the same request succeeds, without a restart.
    std::fs::remove_file(mnt.join("filler")).unwrap();
    block_on(async {
        let health = client
            .send(Method::GET, "/healthz", None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(health.status, StatusCode::OK);
        let reply = sign_csr(&client, body).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    });
    assert_eq!(host_certs(&server).len(), 1);
    server.assert_no_secret_leaks();
    server.stop();
}

#[test]
fn a_store_that_refuses_the_certificate_insert_hands_out_nothing() {
    if !require_tool("sqlite3") {
        return;
    }
    let mut server = CaServer::start();
    let host = "trigger.example.internal";
    let psk = server.psk_add(host, &[]);
    let body = forge(&p256(), &CsrSpec::host(host, &psk));
    let db = server.data_dir.join("ca.db");
    let sql = |stmt: &str| {
        run_ok(
            Command::new("sqlite3")
                .arg(&db)
                .arg(format!("PRAGMA busy_timeout=5000; {stmt}")),
        );
    };
    sql("CREATE TRIGGER fail_cert BEFORE INSERT ON certificates \
         BEGIN SELECT RAISE(ABORT, 'injected fault'); END;");
    let client = server.client();
    block_on(async {
        let reply = sign_csr(&client, body.clone()).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&reply), "store_unavailable");
        assert!(!String::from_utf8_lossy(&reply.body).contains("CERTIFICATE"));
    });
    assert!(live_psks(&server).contains(host), "the PSK is intact");
    assert!(host_certs(&server).is_empty());
    // The cause is logged (by the server's log thread, just after the answer).
    wait_for(
        Duration::from_secs(10),
        "the injected fault in the log",
        || server.logs().contains("injected fault").then_some(()),
    );

    sql("DROP TRIGGER fail_cert;");
    block_on(async {
        let reply = sign_csr(&client, body).await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        let serial = reply.headers["x-certificate-serial"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(host_certs(&server), [(host.to_owned(), serial)]);
    });
    server.assert_no_secret_leaks();
}

#[test]
fn a_client_clock_four_minutes_behind_is_tolerated_by_the_backdated_not_before() {
    if !require_tool("faketime") || !require_tool("openssl") {
        return;
    }
    let mut server = CaServer::start();
    let host = "skew.example.internal";
    let psk = server.psk_add(host, &[]);
    let work = tempfile::tempdir().unwrap();
    let psk_file = write_file(work.path(), "psk", &psk);
    let dir = work.path().join("tls");
    // The client runs four minutes in the past: it must still trust the
    // server's certificate and get one it considers valid.
    let bootstrap = server.bootstrap_cmd(host, &psk_file, &dir);
    let mut cmd = Command::new("faketime");
    cmd.arg("-f")
        .arg("-4m")
        .arg(bootstrap.get_program())
        .args(bootstrap.get_args());
    run_ok(&mut cmd);
    let verify = |offset: &str| {
        run(Command::new("faketime")
            .args(["-f", offset, "openssl", "verify", "-CAfile"])
            .arg(dir.join("ca.pem"))
            .arg("-untrusted")
            .arg(dir.join("chain.pem"))
            .arg(dir.join("cert.pem")))
    };
    assert!(
        verify("-4m").status.success(),
        "valid four minutes in the past"
    );
    // Beyond the 5-minute backdate it is not yet valid: the backdate is what
    // tolerates the skew, not a lax check.
    let out = verify("-6m");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not yet valid")
            || String::from_utf8_lossy(&out.stderr).contains("not yet valid"),
        "{out:?}"
    );
    // The faked clock reaches ca-client too: six minutes behind, even the
    // server's own (equally backdated) certificate is not valid yet for it.
    let other = "skew2.example.internal";
    let psk2 = server.psk_add(other, &[]);
    let psk_file = write_file(work.path(), "psk2", &psk2);
    let bootstrap = server.bootstrap_cmd(other, &psk_file, &work.path().join("tls2"));
    let out = run(Command::new("faketime")
        .arg("-f")
        .arg("-6m")
        .arg(bootstrap.get_program())
        .args(bootstrap.get_args()));
    assert_eq!(out.status.code(), Some(3), "a trust failure: {out:?}");
    assert!(server.certs_of(other).is_empty());
    server.assert_no_secret_leaks();
}
