//! Two `ca-server` replicas on one PostgreSQL, under load: 1,000 PSKs, each
//! redeemed at the same moment by 8 clients (different keys) spread over
//! both replicas. Clean, with one replica killed (`kill -9`) mid-load, and
//! with PostgreSQL stopped and started again mid-load.
//!
//! The clients behave like `ca-client`: on a transport error they retry the
//! same CSR (same key) on the other replica, on 503 they retry after a pause,
//! and 201, 200 (idempotent retry) and 403 are final.

use bytes::Bytes;
use ca_client::https::{Connection, HttpsClient};
use ca_client::keys::{HostKey, KeyType};
use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::*;
use http::{Method, StatusCode};
use policy::Psk;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PSKS: usize = 1000;
const CLIENTS: usize = 8;
const DOMAIN: &str = "fleet.example.internal";

/// Two replicas sharing a data dir and a PostgreSQL database.
struct Fleet {
    servers: Vec<CaServer>,
    pg: PgCluster,
    db_url: String,
}

impl Fleet {
    fn start() -> Option<Fleet> {
        Fleet::start_with(&[])
    }

    /// Two replicas with `extra` serve arguments.
    fn start_with(extra: &[&str]) -> Option<Fleet> {
        if !require_postgres() {
            return None;
        }
        let pg = PgCluster::start();
        let mut opts = pg.server_options("ca");
        // Every load client is 127.0.0.1 and 7 of 8 are refused by design:
        // the per-address throttle would turn those 403s into 429s.
        opts.args
            .extend(["--throttle-failures".into(), "1000000".into()]);
        opts.args.extend(extra.iter().map(|a| a.to_string()));
        let db_url = opts.database_url.clone().unwrap();
        // Both start at once against the empty database: their migrations race.
        let servers = CaServer::start_replicas(opts, 2);
        Some(Fleet {
            servers,
            pg,
            db_url,
        })
    }

    /// A fleet with `PSKS` PSKs added.
    fn with_psks() -> Option<(Fleet, Vec<String>)> {
        Fleet::with_psks_and(&[])
    }

    fn with_psks_and(extra: &[&str]) -> Option<(Fleet, Vec<String>)> {
        let fleet = Fleet::start_with(extra)?;
        let psks = seed_psks(&fleet.servers[0], PSKS);
        Some((fleet, psks))
    }

    /// Checks [`live_and_consumed`] now and says what it found.
    fn snapshot(&self, when: &str) {
        let (live, consumed) = live_and_consumed(self);
        eprintln!("{when}: {live} live, {consumed} consumed");
    }

    fn clients(&self) -> Vec<HttpsClient> {
        self.servers
            .iter()
            .map(|s| {
                let mut c = s.client();
                c.timeout = Duration::from_secs(60);
                c
            })
            .collect()
    }

    fn sql(&self, sql: &str) -> String {
        self.pg.psql("ca", sql)
    }

    /// `/healthz` status of replica `i` (0 if it does not answer).
    fn healthz(&self, i: usize) -> u16 {
        let client = self.servers[i].client();
        block_on(async move {
            client
                .send(Method::GET, "/healthz", None, Bytes::new())
                .await
                .map(|r| r.status.as_u16())
                .unwrap_or(0)
        })
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Replicas first (the first one owns the data dir), PostgreSQL last.
        while let Some(s) = self.servers.pop() {
            drop(s);
        }
    }
}

fn host(i: usize) -> String {
    format!("h{i:04}.{DOMAIN}")
}

/// Adds `n` PSKs with `ca-server psk batch` (one transaction); returns
/// them in host order.
fn seed_psks(server: &CaServer, n: usize) -> Vec<String> {
    use std::io::Write;
    let mut child = server
        .cli()
        .args(["psk", "batch", "--ttl", "1h"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psk batch");
    let hosts: String = (0..n).map(|i| format!("{}\n", host(i))).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(hosts.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "psk batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let psks: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let (h, psk) = l.split_once('\t').expect("HOST<TAB>PSK");
            assert_eq!(h, host(i));
            psk.to_owned()
        })
        .collect();
    assert_eq!(psks.len(), n);
    psks
}

/// What one client finally got for one PSK.
#[derive(Debug, Clone)]
struct Outcome {
    psk: usize,
    #[allow(dead_code)] // shown in assertion messages
    client: usize,
    status: u16,
    serial: Option<String>,
    key_sha256: Vec<u8>,
    /// An earlier request for this PSK lost its response (transport error).
    lost_response: bool,
    /// An earlier request for this PSK got no final answer (lost, or 503).
    retried: bool,
}

/// Counters the test thread watches while the load runs.
#[derive(Debug, Default)]
struct Progress {
    /// PSKs every client has finished.
    done: AtomicUsize,
    /// 503 answers seen.
    unavailable: AtomicUsize,
    /// Error codes of 503 answers other than `store_unavailable`.
    other_503: AtomicUsize,
    transport_errors: AtomicUsize,
}

/// Runs the load on its own thread; `disrupt` runs on this thread once a
/// third of the PSKs are done, while the load goes on.
fn run_load(
    fleet: &mut Fleet,
    psks: &[String],
    disrupt: impl FnOnce(&mut Fleet, &Progress),
) -> (Vec<Outcome>, Arc<Progress>, Duration) {
    let clients = fleet.clients();
    let psks = Arc::new(psks.to_vec());
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let load = {
        let (psks, progress) = (psks.clone(), progress.clone());
        std::thread::spawn(move || {
            block_on(async move {
                let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
                let tasks: Vec<_> = (0..CLIENTS)
                    .map(|w| {
                        tokio::spawn(client(
                            w,
                            clients.clone(),
                            psks.clone(),
                            barrier.clone(),
                            progress.clone(),
                        ))
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.unwrap());
                }
                all
            })
        })
    };
    wait_for(Duration::from_secs(600), "a third of the load", || {
        (progress.done.load(Ordering::SeqCst) >= psks.len() / 3 || load.is_finished()).then_some(())
    });
    disrupt(fleet, &progress);
    let outcomes = load.join().expect("load thread");
    (outcomes, progress, started.elapsed())
}

/// One client: for every PSK in turn, waits for the other clients (so all 8
/// requests for a PSK are in flight together), then redeems it with a key of
/// its own until it gets a final answer.
async fn client(
    w: usize,
    servers: Vec<HttpsClient>,
    psks: Arc<Vec<String>>,
    barrier: Arc<tokio::sync::Barrier>,
    progress: Arc<Progress>,
) -> Vec<Outcome> {
    let mut replica = w % servers.len();
    let mut conn: Option<Connection> = None;
    let mut out = Vec::with_capacity(psks.len());
    for (i, psk) in psks.iter().enumerate() {
        let key = HostKey::generate(KeyType::P256).unwrap();
        let csr = Bytes::from(
            key.csr_pem(&host(i), &[], Some(&Psk::new(psk.clone()).unwrap()))
                .unwrap()
                .as_bytes()
                .to_vec(),
        );
        let key_sha256 = policy::csr::spki_sha256(&key.spki_der()).to_vec();
        if barrier.wait().await.is_leader() {
            progress.done.store(i, Ordering::SeqCst);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lost_response = false;
        let mut retried = false;
        let status = loop {
            if Instant::now() > deadline {
                break 0;
            }
            if conn.is_none() {
                match servers[replica].connect().await {
                    Ok(c) => conn = Some(c),
                    Err(_) => {
                        progress.transport_errors.fetch_add(1, Ordering::SeqCst);
                        replica = (replica + 1) % servers.len();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected");
            match c
                .send(
                    Method::POST,
                    "/v1/sign",
                    Some("application/pkcs10"),
                    csr.clone(),
                )
                .await
            {
                Err(_) => {
                    // The response is lost: retry the same CSR on the other replica.
                    progress.transport_errors.fetch_add(1, Ordering::SeqCst);
                    lost_response = true;
                    retried = true;
                    conn = None;
                    replica = (replica + 1) % servers.len();
                }
                Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => {
                    retried = true;
                    progress.unavailable.fetch_add(1, Ordering::SeqCst);
                    if error_code(&r) != "store_unavailable" {
                        progress.other_503.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(r) => {
                    let serial = r
                        .headers
                        .get("x-certificate-serial")
                        .map(|v| v.to_str().unwrap().to_owned());
                    out.push(Outcome {
                        psk: i,
                        client: w,
                        status: r.status.as_u16(),
                        serial,
                        key_sha256: key_sha256.clone(),
                        lost_response,
                        retried,
                    });
                    break r.status.as_u16();
                }
            }
        };
        if status == 0 {
            out.push(Outcome {
                psk: i,
                client: w,
                status,
                serial: None,
                key_sha256,
                lost_response,
                retried,
            });
        }
    }
    if barrier.wait().await.is_leader() {
        progress.done.store(psks.len(), Ordering::SeqCst);
    }
    out
}

/// Every PSK is live or consumed with its certificate, never one without the
/// other, and no host has two: checked in one SQL statement (one snapshot),
/// so it holds at any instant, load or not. Returns (live, consumed).
fn live_and_consumed(fleet: &Fleet) -> (usize, usize) {
    let row = fleet.sql(&format!(
        "SELECT (SELECT count(*) FROM psks WHERE hostname LIKE '%.{DOMAIN}'), \
                (SELECT count(DISTINCT hostname) FROM certificates WHERE hostname LIKE '%.{DOMAIN}'), \
                (SELECT count(*) FROM certificates WHERE hostname LIKE '%.{DOMAIN}'), \
                (SELECT count(*) FROM psks p JOIN certificates c ON c.hostname = p.hostname)"
    ));
    let n: Vec<usize> = row.split('|').map(|v| v.parse().unwrap()).collect();
    assert_eq!(
        n[3], 0,
        "a PSK is live although its certificate is recorded"
    );
    assert_eq!(n[1], n[2], "a host has two certificates: a double spend");
    assert_eq!(n[0] + n[1], PSKS, "a PSK vanished without its certificate");
    (n[0], n[1])
}

/// The final state: every PSK consumed exactly once, every certificate a
/// client holds is the recorded one (same serial, same key), every other
/// client was refused. Returns the 403 count per PSK.
fn check_outcomes(fleet: &Fleet, outcomes: &[Outcome]) -> Vec<usize> {
    assert_eq!(live_and_consumed(fleet), (0, PSKS));
    let recorded: HashMap<String, (String, String)> = fleet
        .sql(&format!(
            "SELECT hostname, serial, encode(public_key_sha256, 'hex') FROM certificates \
             WHERE hostname LIKE '%.{DOMAIN}'"
        ))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f[0].to_owned(), (f[1].to_owned(), f[2].to_owned()))
        })
        .collect();
    assert_eq!(recorded.len(), PSKS);
    assert_eq!(
        outcomes.len(),
        PSKS * CLIENTS,
        "one final answer per client and PSK"
    );
    let mut holders = vec![0usize; PSKS];
    let mut refused = vec![0usize; PSKS];
    for o in outcomes {
        match o.status {
            201 | 200 => {
                holders[o.psk] += 1;
                let (serial, key) = &recorded[&host(o.psk)];
                assert_eq!(o.serial.as_ref(), Some(serial), "{o:?}");
                assert_eq!(&hex::encode(&o.key_sha256), key, "{o:?}");
                // A 200 is only ever the client's own certificate, recovered
                // after an attempt that got no final answer.
                if o.status == 200 {
                    assert!(o.retried, "a replay without an earlier attempt: {o:?}");
                }
            }
            403 => refused[o.psk] += 1,
            _ => panic!("no final answer: {o:?}"),
        }
    }
    let double: Vec<_> = (0..PSKS).filter(|&i| holders[i] != 1).collect();
    assert!(
        double.is_empty(),
        "PSKs with other than one certificate holder: {double:?}"
    );
    refused
}

/// Refused attempts in the audit log, per host.
/// Refusals for a spent PSK counted in the audit log. Repeated refusals
/// from one address fold into rows with a `repeat_count` (and, past 16 rows
/// per address and window, without the hostname: see rejection_log.rs), so
/// the count is the sum over those rows.
fn audited_refusals(fleet: &Fleet) -> usize {
    fleet
        .sql(
            "SELECT coalesce(sum(repeat_count), 0) FROM audit WHERE event = 'sign' \
             AND outcome = 'rejected' AND reason LIKE 'psk_used%'",
        )
        .trim()
        .parse()
        .unwrap()
}

fn by_replica(fleet: &Fleet) -> String {
    fleet
        .servers
        .iter()
        .map(|s| s.logs().matches("outcome=\"issued\"").count().to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn two_replicas_on_postgresql_issue_exactly_one_certificate_per_psk() {
    let Some((mut fleet, psks)) = Fleet::with_psks() else {
        return;
    };
    let (outcomes, progress, took) = run_load(&mut fleet, &psks, |fleet, _| {
        // Mid-load, the invariant holds in a snapshot.
        fleet.snapshot("mid-load");
    });
    let refused = check_outcomes(&fleet, &outcomes);
    assert_eq!(progress.transport_errors.load(Ordering::SeqCst), 0);
    assert_eq!(progress.unavailable.load(Ordering::SeqCst), 0);
    assert_eq!(refused, vec![CLIENTS - 1; PSKS]);
    assert_eq!(
        outcomes.iter().filter(|o| o.status == 201).count(),
        PSKS,
        "exactly 1,000 certificates"
    );
    // Every refused attempt is in the audit log with its precise reason
    // (repeats reach their rows with each replica's flush, once a second).
    let audited = wait_for(Duration::from_secs(10), "the refusal counts' flush", || {
        let n = audited_refusals(&fleet);
        (n >= PSKS * (CLIENTS - 1)).then_some(n)
    });
    assert_eq!(
        audited,
        PSKS * (CLIENTS - 1),
        "every refused attempt is counted in the audit log"
    );
    assert_eq!(
        fleet.sql(&format!(
            "SELECT count(*) FROM audit WHERE event = 'issued' AND hostname LIKE '%.{DOMAIN}'"
        )),
        PSKS.to_string()
    );
    // Both replicas issued: the races were really spread over two processes.
    let per_replica = by_replica(&fleet);
    assert!(
        per_replica.split('/').all(|n| n != "0"),
        "issued per replica: {per_replica}"
    );
    eprintln!(
        "{} requests in {took:?} ({:.0}/s); issued per replica {per_replica}",
        PSKS * CLIENTS,
        (PSKS * CLIENTS) as f64 / took.as_secs_f64()
    );
    for s in fleet.servers.iter_mut() {
        for p in psks.iter().take(10) {
            s.remember_secret(p);
        }
        s.assert_no_secret_leaks();
    }
}

#[test]
fn a_replica_killed_mid_load_loses_no_psk_and_its_clients_recover_on_the_other() {
    // Repeat counts written with each refusal: a kill -9 would otherwise take
    // the killed replica's last second of counts (never a first row) with it.
    let Some((mut fleet, psks)) = Fleet::with_psks_and(&["--audit-flush-interval", "0s"]) else {
        return;
    };
    let (outcomes, progress, took) = run_load(&mut fleet, &psks, |fleet, _| {
        fleet.servers[0].kill9();
        // Right after the kill: nothing half-written.
        fleet.snapshot("after kill -9");
    });
    let refused = check_outcomes(&fleet, &outcomes);
    let lost = outcomes.iter().filter(|o| o.lost_response).count();
    let recovered = outcomes
        .iter()
        .filter(|o| o.lost_response && o.status == 200)
        .count();
    let lost_and_refused = outcomes
        .iter()
        .filter(|o| o.lost_response && o.status == 403)
        .count();
    assert!(
        progress.transport_errors.load(Ordering::SeqCst) > 0 && lost > 0,
        "the kill cut requests"
    );
    // Every answer a client saw is audited; lost ones may be audited too.
    assert!(audited_refusals(&fleet) >= refused.iter().sum::<usize>());
    eprintln!(
        "kill -9 mid-load: {} requests in {took:?}; {lost} lost responses: {recovered} recovered by the idempotent retry on the other replica, {lost_and_refused} refused there (another client had won)",
        PSKS * CLIENTS
    );
}

#[test]
fn a_response_lost_to_kill_9_is_recovered_from_the_other_replica() {
    let Some(mut fleet) = Fleet::start() else {
        return;
    };
    if !require_tool("openssl") {
        return;
    }
    let h = host(0);
    let psk = fleet.servers[0].psk_add(&h, &[]);
    let work = tempfile::tempdir().unwrap();
    let key = openssl_key(work.path(), "key.pem", "ec:P-256").unwrap();
    let csr = openssl_csr(&key, &h, Some(&psk), &[]).unwrap();

    // Replica 0 commits the certificate; it dies before the client reads the answer.
    let serial = {
        let (fleet_ref, h) = (&fleet, h.clone());
        block_on(async move {
            let mut conn = fleet_ref.servers[0].client().connect().await.unwrap();
            let send = tokio::spawn(async move {
                conn.send(
                    Method::POST,
                    "/v1/sign",
                    Some("application/pkcs10"),
                    Bytes::from(csr),
                )
                .await
            });
            let serial = wait_for(
                Duration::from_secs(30),
                "the certificate to be recorded",
                || {
                    let s = fleet_ref.sql(&format!(
                        "SELECT serial FROM certificates WHERE hostname = '{h}'"
                    ));
                    (!s.is_empty()).then_some(s)
                },
            );
            send.abort();
            serial
        })
    };
    fleet.servers[0].kill9();

    // The host retries through replica 1 with the same key: it gets the recorded certificate.
    fleet.servers[1].assert_retry_recovers(&h, &psk, &key, &serial);
    // Another key with the spent PSK is refused on replica 1 too.
    let psk_file = write_file(work.path(), "psk2", &psk);
    let out = run(&mut fleet.servers[1].bootstrap_cmd(&h, &psk_file, &work.path().join("other")));
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(fleet.servers[1].certs_of(&h).len(), 1);
    fleet.servers[1].remember_secret(&psk);
    fleet.servers[1].assert_no_secret_leaks();
}

#[test]
fn postgresql_stopped_mid_load_gives_503_and_issuance_resumes_without_restart() {
    let Some((mut fleet, psks)) = Fleet::with_psks() else {
        return;
    };
    let (outcomes, progress, took) = run_load(&mut fleet, &psks, |fleet, progress| {
        fleet.pg.stop();
        let seen = progress.unavailable.load(Ordering::SeqCst);
        wait_for(Duration::from_secs(60), "clients to get 503", || {
            (progress.unavailable.load(Ordering::SeqCst) >= seen + 2 * CLIENTS).then_some(())
        });
        for i in 0..fleet.servers.len() {
            wait_for(Duration::from_secs(30), "/healthz to fail", || {
                (fleet.healthz(i) == 503).then_some(())
            });
        }
        let done = progress.done.load(Ordering::SeqCst);
        fleet.pg.restart();
        // Right after the restart: nothing half-written.
        fleet.snapshot(&format!("PostgreSQL back after {done} PSKs"));
        for i in 0..fleet.servers.len() {
            wait_for(Duration::from_secs(30), "/healthz to recover", || {
                (fleet.healthz(i) == 200).then_some(())
            });
        }
    });
    check_outcomes(&fleet, &outcomes);
    assert_eq!(
        progress.other_503.load(Ordering::SeqCst),
        0,
        "every 503 says store_unavailable"
    );
    // The same processes served before, during and after.
    for s in fleet.servers.iter() {
        s.wait_log("store reachable again");
        assert_eq!(s.logs().matches(" listening ").count(), 1);
    }
    eprintln!(
        "PostgreSQL stop mid-load: {} requests in {took:?}; {} answers were 503",
        PSKS * CLIENTS,
        progress.unavailable.load(Ordering::SeqCst)
    );
}

#[test]
fn a_replica_with_another_cas_data_dir_refuses_the_shared_store() {
    let Some(fleet) = Fleet::start() else {
        return;
    };
    let servers_before = fleet.sql("SELECT count(*) FROM certificates WHERE kind = 'server'");
    // An empty data dir: `serve` initialises a brand-new CA there, then must
    // refuse the store the fleet's CA writes to (`timeout` ends a server
    // that wrongly started).
    let tmp = tempfile::tempdir().unwrap();
    let out = run(std::process::Command::new("timeout")
        .arg("60")
        .arg(bin("ca-server"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--database-url", &fleet.db_url])
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "localhost",
        ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("belongs to another CA"), "{stderr}");
    assert_eq!(
        fleet.sql("SELECT count(*) FROM certificates WHERE kind = 'server'"),
        servers_before,
        "nothing was issued into the fleet's store"
    );
}
