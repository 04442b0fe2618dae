//! The tamper-evident audit trail (issue 20): an untouched trail verifies;
//! a field edited with sqlite3 or psql, a deleted row, a truncated tail, an
//! inserted row and reordered rows each fail `audit verify` (exit 1) naming
//! the row; aggregated refusals keep the chain valid; 10,000 issuances over
//! two replicas sharing PostgreSQL verify; `--audit-file` and
//! `--audit-syslog` carry every row with its chain hash.

use ca_client::keys::{HostKey, KeyType};
use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::*;
use policy::Psk;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

fn csr(cn: &str, psk: &str) -> Vec<u8> {
    let key = HostKey::generate(KeyType::P256).unwrap();
    key.csr_pem(cn, &[], Some(&Psk::new(psk.into()).unwrap()))
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// Issues a certificate to each of `n` hosts through `/v1/sign`.
fn issue(server: &mut CaServer, prefix: &str, n: usize) {
    let psks: Vec<(String, String)> = (0..n)
        .map(|i| {
            let host = format!("{prefix}{i}.example.internal");
            let psk = server.psk_add(&host, &[]);
            (host, psk)
        })
        .collect();
    let client = server.client();
    block_on(async {
        for (host, psk) in &psks {
            let reply = sign_csr(&client, csr(host, psk)).await.unwrap();
            assert_eq!(reply.status, http::StatusCode::CREATED, "{host}");
        }
    });
}

/// `audit verify --json` with `args` before the verb: (exit code, report).
fn verify(mut cmd: Command, extra: &[&str]) -> (i32, serde_json::Value, Output) {
    let out = run(cmd.args(["audit", "verify", "--json"]).args(extra));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit verify printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report, out)
}

/// A `ca-server` command on a copy of the stopped server's SQLite store.
struct Copy {
    _dir: tempfile::TempDir,
    db: PathBuf,
    data_dir: PathBuf,
}

impl Copy {
    fn of(server: &CaServer) -> Copy {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ca.db");
        for suffix in ["", "-wal"] {
            let from = server.data_dir.join(format!("ca.db{suffix}"));
            if from.exists() {
                std::fs::copy(&from, dir.path().join(format!("ca.db{suffix}"))).unwrap();
            }
        }
        Copy {
            _dir: dir,
            db,
            data_dir: server.data_dir.clone(),
        }
    }

    fn sql(&self, sql: &str) -> String {
        run_ok(Command::new("sqlite3").arg(&self.db).arg(sql))
            .trim()
            .to_owned()
    }

    /// `audit verify` with only the public key (as an auditor would).
    fn verify(&self) -> (i32, serde_json::Value, Output) {
        let mut cmd = Command::new(bin("ca-server"));
        cmd.arg("--data-dir")
            .arg(self.data_dir.join("nonexistent"))
            .arg("--database-url")
            .arg(format!("sqlite://{}", self.db.display()));
        let public = self.data_dir.join("audit-key.pub.pem");
        verify(cmd, &["--public-key", public.to_str().unwrap()])
    }

    fn id_at(&self, seq: i64) -> i64 {
        self.sql(&format!("SELECT id FROM audit WHERE chain_seq = {seq}"))
            .parse()
            .unwrap()
    }
}

fn assert_break(report: &serde_json::Value, kind: &str, position: i64, id: i64) {
    let b = &report["break"];
    assert_eq!(b["kind"], kind, "{report}");
    assert_eq!(b["position"], position, "{report}");
    assert_eq!(b["id"], id, "{report}");
}

#[test]
fn an_untouched_trail_verifies_and_every_tampering_is_named() {
    if !require_tool("sqlite3") {
        return;
    }
    let mut server = CaServer::start();
    issue(&mut server, "t", 5);
    // On demand: a signed checkpoint of the head.
    let out = run_ok(server.cli().args(["audit", "checkpoint", "--json"]));
    let cp: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(cp["seq"].as_i64().unwrap() >= 10, "{cp}");
    issue(&mut server, "u", 3);
    let (code, report, _) = verify(server.cli(), &[]);
    assert_eq!(code, 0, "{report}");
    assert!(report["break"].is_null(), "{report}");
    // The text form says so too.
    let text = run_ok(server.cli().args(["audit", "verify"]));
    assert!(text.starts_with("intact: "), "{text}");
    // The listing still works, and hides nothing of what it showed before.
    let listed = run_ok(server.cli().args(["audit", "--since", "1h", "--json"]));
    assert!(listed.lines().any(|l| l.contains("\"issued\"")), "{listed}");
    // The key is the data dir's, 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.data_dir.join("audit-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Stopping writes a last checkpoint covering every row.
    server.stop();
    let intact = Copy::of(&server);
    let (code, report, _) = intact.verify();
    assert_eq!(code, 0, "{report}");
    let rows = report["rows"].as_i64().unwrap();
    assert_eq!(report["last_checkpoint"], rows, "{report}");
    assert!(rows >= 16, "{report}");

    // One field edited with sqlite3.
    let edited = Copy::of(&server);
    let id = edited.id_at(7);
    edited.sql("UPDATE audit SET hostname = 'evil.example.internal' WHERE chain_seq = 7");
    let (code, report, out) = edited.verify();
    assert_eq!(code, 1, "{report}");
    assert_break(&report, "edited", 7, id);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("row id {id} at position 7")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A deleted row.
    let deleted = Copy::of(&server);
    let next = deleted.id_at(6);
    deleted.sql("DELETE FROM audit WHERE chain_seq = 5");
    let (code, report, _) = deleted.verify();
    assert_eq!(code, 1, "{report}");
    assert_break(&report, "deleted", 5, next);

    // A truncated tail, the head row made to agree: the last checkpoint tells.
    let truncated = Copy::of(&server);
    let keep = rows - 3;
    truncated.sql(&format!(
        "DELETE FROM audit WHERE chain_seq > {keep}; \
         UPDATE audit_chain SET seq = {keep}, \
         head = (SELECT chain_hash FROM audit WHERE chain_seq = {keep})"
    ));
    let (code, report, _) = truncated.verify();
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["break"]["kind"], "truncated", "{report}");
    assert_eq!(report["break"]["position"], keep, "{report}");
    assert_eq!(report["break"]["checkpoint_seq"], rows, "{report}");

    // An inserted row.
    let inserted = Copy::of(&server);
    inserted.sql(
        "INSERT INTO audit (at, event, hostname, outcome, actor) \
         VALUES (1800000000, 'issued', 'ghost.example.internal', 'ok', 'cli:root(uid 0)')",
    );
    let ghost = inserted
        .sql("SELECT id FROM audit WHERE hostname = 'ghost.example.internal'")
        .parse()
        .unwrap();
    let (code, report, _) = inserted.verify();
    assert_eq!(code, 1, "{report}");
    assert_break(&report, "inserted", rows + 1, ghost);

    // Two rows reordered (their ids swapped).
    let reordered = Copy::of(&server);
    let (a, b) = (reordered.id_at(3), reordered.id_at(4));
    reordered.sql(&format!(
        "UPDATE audit SET id = -1 WHERE id = {a}; UPDATE audit SET id = {a} WHERE id = {b}; \
         UPDATE audit SET id = {b} WHERE id = -1"
    ));
    let (code, report, _) = reordered.verify();
    assert_eq!(code, 1, "{report}");
    assert_break(&report, "reordered", 3, a);

    // Rewriting the chain from the edit on (hashes recomputed) is caught by
    // a signed checkpoint: here, a forged checkpoint is refused.
    let forged = Copy::of(&server);
    forged.sql("UPDATE audit_checkpoints SET seq = seq - 1");
    let (code, report, _) = forged.verify();
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        report["break"]["kind"], "bad_checkpoint_signature",
        "{report}"
    );
}

#[test]
fn aggregated_refusals_keep_the_chain_valid() {
    if !require_tool("sqlite3") {
        return;
    }
    let mut server = CaServer::start_with(ServerOptions {
        args: vec!["--throttle-failures".into(), "1000000".into()],
        ..Default::default()
    });
    issue(&mut server, "r", 2);
    let client = server.client();
    const BAD: usize = 300;
    block_on(async {
        for i in 0..BAD {
            let reply = sign_csr(&client, format!("not a CSR {i}")).await.unwrap();
            assert!(reply.status.is_client_error(), "{}", reply.status);
        }
    });
    // The flush (once a second) adds the repeats: count and chain agree.
    let counted = || -> i64 {
        let out = run_ok(server.cli().args(["audit", "--since", "1h", "--json"]));
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["outcome"] == "rejected")
            .map(|r| r["count"].as_i64().unwrap_or(1))
            .sum()
    };
    wait_for(
        Duration::from_secs(20),
        "the refusals to be counted",
        || (counted() == BAD as i64).then_some(()),
    );
    let (code, report, _) = verify(server.cli(), &[]);
    assert_eq!(code, 0, "{report}");
    server.stop();

    // Lowering an aggregated count (hiding refusals) is named.
    let copy = Copy::of(&server);
    let (id, count) = {
        let row = copy.sql(
            "SELECT id, repeat_count FROM audit WHERE repeats_of IS NULL \
             AND repeat_count > 1 ORDER BY id LIMIT 1",
        );
        let (id, count) = row.split_once('|').unwrap();
        (id.parse::<i64>().unwrap(), count.parse::<i64>().unwrap())
    };
    let seq: i64 = copy
        .sql(&format!("SELECT chain_seq FROM audit WHERE id = {id}"))
        .parse()
        .unwrap();
    copy.sql(&format!(
        "UPDATE audit SET repeat_count = 1 WHERE id = {id}"
    ));
    let (code, report, _) = copy.verify();
    assert_eq!(code, 1, "{report}");
    assert_break(&report, "repeats_edited", seq, id);
    assert_eq!(report["break"]["chained_count"], count, "{report}");
}

/// Runs the load generator against one replica: `n` PSKs, `n` issuances at c=8.
fn loadgen(server: &CaServer, db_url: &str, n: usize) -> std::process::Child {
    Command::new(bin("loadgen"))
        .args(["--server", &server.url])
        .arg("--root")
        .arg(server.root_pem())
        .args(["--target", "ours", "--requests", &n.to_string()])
        .args(["--concurrency", "8", "--mode", "keepalive"])
        .arg("--ca-server")
        .arg(bin("ca-server"))
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args(["--database-url", db_url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("loadgen")
}

#[test]
fn ten_thousand_issuances_over_two_replicas_verify_and_a_psql_edit_is_named() {
    if !require_postgres() {
        return;
    }
    let pg = PgCluster::start();
    let mut opts = pg.server_options("ca");
    opts.args
        .extend(["--throttle-failures".into(), "1000000".into()]);
    let db_url = opts.database_url.clone().unwrap();
    let mut servers = CaServer::start_replicas(opts, 2);
    let runs: Vec<_> = servers.iter().map(|s| loadgen(s, &db_url, 5_000)).collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "loadgen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every issuance recorded, each with its audit row in the one chain.
    let issued: i64 = pg
        .psql(
            "ca",
            "SELECT count(*) FROM audit WHERE event = 'issued' AND chain_seq IS NOT NULL",
        )
        .trim()
        .parse()
        .unwrap();
    assert_eq!(issued, 10_000);
    run_ok(servers[0].cli().args(["audit", "checkpoint"]));
    let (code, report, _) = verify(servers[1].cli(), &[]);
    assert_eq!(code, 0, "{report}");
    assert!(report["rows"].as_i64().unwrap() >= 20_000, "{report}");
    for s in servers.iter_mut().rev() {
        s.stop();
    }

    // One field edited with psql.
    let (id, seq) = {
        let row = pg.psql(
            "ca",
            "SELECT id, chain_seq FROM audit WHERE event = 'issued' ORDER BY chain_seq OFFSET 4321 LIMIT 1",
        );
        let (id, seq) = row.trim().split_once('|').unwrap();
        (id.parse::<i64>().unwrap(), seq.parse::<i64>().unwrap())
    };
    pg.psql(
        "ca",
        &format!("UPDATE audit SET serial = 'ff' || serial WHERE id = {id}"),
    );
    let (code, report, _) = verify(servers[0].cli(), &[]);
    assert_eq!(code, 1, "{report}");
    assert_break(&report, "edited", seq, id);
}

#[test]
fn audit_file_and_syslog_carry_every_row_with_its_chain_hash() {
    if !require_tool("sqlite3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let socket_path = dir.path().join("log.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut server = CaServer::start_with(ServerOptions {
        args: vec![
            "--audit-file".into(),
            file.to_str().unwrap().into(),
            "--audit-syslog".into(),
            socket_path.to_str().unwrap().into(),
        ],
        ..Default::default()
    });
    let psk = server.psk_add("f0.example.internal", &[]);
    let client = server.client();
    block_on(async {
        let reply = sign_csr(&client, csr("f0.example.internal", &psk))
            .await
            .unwrap();
        assert_eq!(reply.status, http::StatusCode::CREATED);
    });
    issue(&mut server, "f", 3);
    server.stop();

    // The file: every chained row, in order, each hash as the store has it.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&psk), "a PSK in the audit file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let stored = run_ok(
        Command::new("sqlite3")
            .arg(server.data_dir.join("ca.db"))
            .arg("SELECT chain_seq, id, lower(hex(chain_hash)) FROM audit WHERE chain_seq IS NOT NULL ORDER BY chain_seq"),
    );
    let stored: Vec<(i64, i64, String)> = stored
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].to_owned(),
            )
        })
        .collect();
    assert_eq!(lines.len(), stored.len(), "{text}");
    for (line, (seq, id, hash)) in lines.iter().zip(&stored) {
        assert_eq!(line["seq"], *seq, "{line}");
        assert_eq!(line["id"], *id, "{line}");
        assert_eq!(line["hash"], hash.as_str(), "{line}");
    }
    assert!(lines.iter().filter(|l| l["event"] == "issued").count() >= 4);

    // Syslog: an RFC 5424 datagram per row exported since the start.
    let mut buf = vec![0u8; 65536];
    let mut seen = Vec::new();
    while seen.len() < stored.len() {
        let Ok(n) = socket.recv(&mut buf) else { break };
        seen.push(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    assert!(seen.len() >= 8, "{seen:?}");
    for msg in &seen {
        assert!(msg.starts_with("<110>1 "), "{msg}");
        let (header, json) = msg.split_once(" audit - ").unwrap();
        assert!(header.contains(" ca-server "), "{msg}");
        let line: serde_json::Value = serde_json::from_str(json).unwrap();
        let seq = line["seq"].as_i64().unwrap();
        let (_, _, hash) = stored.iter().find(|s| s.0 == seq).unwrap();
        assert_eq!(line["hash"], hash.as_str(), "{msg}");
        assert!(!msg.contains(&psk), "a PSK sent to syslog");
    }
    let last = &seen.last().unwrap();
    assert!(
        last.contains(&format!("\"seq\":{}", stored.last().unwrap().0)),
        "{last}"
    );

    // A restart resumes the file after its last line: no duplicates, no gap.
    server.restart();
    issue(&mut server, "g", 1);
    server.stop();
    let text = std::fs::read_to_string(&file).unwrap();
    let seqs: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
}

#[test]
fn a_server_with_another_audit_key_refuses_the_store() {
    let mut server = CaServer::start();
    server.stop();
    // Another key in the data dir, as a replica initialised apart would have.
    let other = tempfile::tempdir().unwrap();
    let other_dir = other.path().join("data");
    run_ok(
        Command::new(bin("ca-server"))
            .arg("--data-dir")
            .arg(&other_dir)
            .arg("init"),
    );
    std::fs::copy(
        other_dir.join("audit-key.pem"),
        server.data_dir.join("audit-key.pem"),
    )
    .unwrap();
    let mut child = Command::new(bin("ca-server"))
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "localhost",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(30), "serve to refuse", || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("is not the audit key this store's checkpoints are signed with"),
        "{stderr}"
    );
}
