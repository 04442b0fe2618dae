//! Backup and restore as docs/replicas.md describes them: `pg_dump` /
//! `pg_restore` for PostgreSQL, `ca-server store copy` for SQLite (a
//! verified, consistent copy taken while the server runs). After restoring
//! an older backup, PSKs spent since are live again until removed, as the
//! runbook warns.

use ca_tests::pg::{PgCluster, bin_dir, require_postgres};
use ca_tests::*;
use std::path::Path;
use std::process::Command;

/// Bootstraps `host` with a fresh PSK; returns the serial.
fn issue(server: &mut CaServer, host: &str, work: &Path) -> String {
    let psk = server.psk_add(host, &[]);
    redeem(server, host, &psk, work)
}

/// Bootstraps `host` with `psk`; returns the serial.
fn redeem(server: &CaServer, host: &str, psk: &str, work: &Path) -> String {
    let psk_file = write_file(work, &format!("{host}.psk"), psk);
    let out = run_ok(
        server
            .bootstrap_cmd(host, &psk_file, &work.join(host))
            .arg("--json"),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["serial"].as_str().unwrap().to_owned()
}

/// One field of every line of a `--json` listing.
fn listed(server: &CaServer, args: &[&str], field: &str) -> Vec<String> {
    run_ok(server.cli().args(args))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v[field].as_str().unwrap().to_owned()
        })
        .collect()
}

fn serials(server: &CaServer) -> Vec<String> {
    listed(server, &["cert", "list", "--json"], "serial")
}

fn live_psks(server: &CaServer) -> Vec<String> {
    listed(server, &["psk", "list", "--json"], "hostname")
}

/// What a restore must show: the backup's certificates, not the later one;
/// the PSK spent after the backup live again until the operator removes it.
fn check_restored(server: &CaServer, at_backup: &[String], later: &str) {
    let now = serials(server);
    for s in at_backup {
        assert!(now.contains(s), "{s} survives the restore");
    }
    assert!(!now.contains(&later.to_owned()));
    assert!(live_psks(server).contains(&"after.example.internal".to_owned()));
    run_ok(
        server
            .cli()
            .args(["psk", "remove", "after.example.internal"]),
    );
    assert!(live_psks(server).contains(&"live.example.internal".to_owned()));
}

#[test]
fn postgresql_pg_dump_and_pg_restore() {
    if !require_postgres() {
        return;
    }
    let pg = PgCluster::start();
    let mut server = CaServer::start_with(pg.server_options("ca"));
    let work = tempfile::tempdir().unwrap();
    issue(&mut server, "before.example.internal", work.path());
    server.psk_add("live.example.internal", &[]);
    // Added before the backup, spent after it.
    let after_psk = server.psk_add("after.example.internal", &[]);
    let at_backup = serials(&server);

    let dump = work.path().join("ca.dump");
    let pg_tool = |tool: &str| {
        let mut cmd = Command::new(bin_dir().unwrap().join(tool));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ]);
        cmd
    };
    run_ok(
        pg_tool("pg_dump")
            .args(["-Fc", "-d", "ca", "-f"])
            .arg(&dump),
    );
    let later = redeem(&server, "after.example.internal", &after_psk, work.path());

    // Restore into a fresh database with the server stopped.
    server.stop();
    pg.psql("postgres", "DROP DATABASE ca");
    pg.psql("postgres", "CREATE DATABASE ca");
    run_ok(pg_tool("pg_restore").args(["-d", "ca"]).arg(&dump));
    server.restart();
    check_restored(&server, &at_backup, &later);
    // The restored store issues again, audit ids and all.
    issue(&mut server, "restored.example.internal", work.path());
    server.assert_no_secret_leaks();
}

#[test]
fn sqlite_backup_with_store_copy_while_serving_and_restore() {
    let mut server = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    issue(&mut server, "before.example.internal", work.path());
    server.psk_add("live.example.internal", &[]);
    // Added before the backup, spent after it.
    let after_psk = server.psk_add("after.example.internal", &[]);
    let at_backup = serials(&server);

    // Online backup: a consistent snapshot, verified, into one file.
    let backup = work.path().join("backup.db");
    run_ok(server.cli().args([
        "store",
        "copy",
        "--to",
        &format!("sqlite://{}", backup.display()),
    ]));
    assert!(!work.path().join("backup.db-wal").exists());
    let later = redeem(&server, "after.example.internal", &after_psk, work.path());

    // Restore: stop, move the live store away, copy the backup back.
    server.stop();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(server.data_dir.join(format!("ca.db{suffix}")));
    }
    run_ok(
        server
            .cli()
            .arg("--database-url")
            .arg(format!("sqlite://{}", backup.display()))
            .args([
                "store",
                "copy",
                "--to",
                &format!("sqlite://{}", server.data_dir.join("ca.db").display()),
            ]),
    );
    server.restart();
    check_restored(&server, &at_backup, &later);
    issue(&mut server, "restored.example.internal", work.path());
    server.assert_no_secret_leaks();
}
