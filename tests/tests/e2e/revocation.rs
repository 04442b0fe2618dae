//! Revocation that reaches the services: `ca-server revoke`, the CRL the
//! server publishes at once, `ca-client crl --install` on the server hosts,
//! and nginx, HAProxy and PostgreSQL refusing the revoked client certificate
//! while still accepting the others; `openssl verify -crl_check` agrees.
//! Also: revoking by host, twice, or an unknown serial, and `ca-client crl`
//! refusing a foreign or older CRL.

use ca_tests::fleet::{Host, bootstrap, ca_client_verb};
use ca_tests::trio::Trio;
use ca_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const WEB: &str = "web.example.internal";
const DB: &str = "db.example.internal";
const A: &str = "a.example.internal";
const B: &str = "b.example.internal";

/// `ca-client crl --server URL --dir DIR` plus `args`.
fn crl_cmd(ca: &CaServer, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = ca_client_verb("crl", ca, dir);
    cmd.args(args);
    cmd
}

/// The intermediate CRL of a bundle file (its first PEM block), DER.
fn first_crl(path: &Path) -> Vec<u8> {
    pem::parse_many(read(path))
        .unwrap()
        .remove(0)
        .into_contents()
}

/// (CRL number, serials listed with their reason codes) of a DER CRL.
fn crl_facts(der: &[u8]) -> (u64, Vec<(String, Option<u8>)>) {
    let (_, crl) = x509_parser::parse_x509_crl(der).unwrap();
    let number = u64::try_from(crl.crl_number().unwrap()).unwrap();
    let listed = crl
        .iter_revoked_certificates()
        .map(|r| {
            (
                hex::encode(r.raw_serial()),
                r.reason_code().map(|(_, c)| c.0),
            )
        })
        .collect();
    (number, listed)
}

/// The CRL `/v1/crl` serves now, DER.
fn served_crl(ca: &CaServer) -> Vec<u8> {
    let r = ca_tests::curl::curl(ca, "GET", "/v1/crl", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    r.body
}

/// The serial as `openssl x509 -serial` prints it (uppercase hex).
fn openssl_serial(host: &Host) -> String {
    run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(host.dir.join("cert.pem")),
    )
    .trim()
    .trim_start_matches("serial=")
    .to_owned()
}

/// `openssl verify -crl_check` (the leaf) and `-crl_check_all` (the whole
/// chain) of `host`'s certificate with a CRL bundle: both must agree.
fn openssl_verify(ca: &CaServer, host: &Host, crl: &Path) -> Result<String, String> {
    let leaf = openssl_verify_with(ca, host, crl, "-crl_check");
    let chain = openssl_verify_with(ca, host, crl, "-crl_check_all");
    assert_eq!(leaf.is_ok(), chain.is_ok(), "{leaf:?} {chain:?}");
    chain
}

fn openssl_verify_with(
    ca: &CaServer,
    host: &Host,
    crl: &Path,
    flag: &str,
) -> Result<String, String> {
    let out = run(Command::new("openssl")
        .args(["verify", flag, "-CAfile"])
        .arg(ca.root_pem())
        .arg("-untrusted")
        .arg(ca.intermediate_pem())
        .arg("-CRLfile")
        .arg(crl)
        .arg(host.dir.join("cert.pem")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn a_revoked_client_certificate_is_refused_by_nginx_haproxy_and_postgres() {
    if !Trio::tools_present() {
        return;
    }
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let db = bootstrap(&mut ca, DB, work.path(), "db");
    let a = bootstrap(&mut ca, A, work.path(), "a");
    let b = bootstrap(&mut ca, B, work.path(), "b");

    // The server hosts fetch the CRL bundle first, so the services check it.
    for host in [&web, &db] {
        let out = run_ok(&mut crl_cmd(&ca, &host.dir, &[]));
        assert!(out.starts_with("installed CRL number="), "{out}");
    }
    let bundle = web.dir.join("crl.pem");
    let text = String::from_utf8(read(&bundle)).unwrap();
    assert_eq!(
        text.matches("BEGIN X509 CRL").count(),
        2,
        "the intermediate's CRL and the root's"
    );
    let (before, listed) = crl_facts(&first_crl(&bundle));
    assert!(listed.is_empty());

    let trio = Trio::start(work.path(), (&web, WEB), (&db, DB), &[A, B]);
    for (name, host) in [("A", &a), ("B", &b)] {
        trio.all_let_in(host, if name == "A" { A } else { B })
            .unwrap_or_else(|e| panic!("{name} before the revocation: {e}\n{}", trio.logs()));
    }
    openssl_verify(&ca, &a, &bundle).expect("A verifies before");

    // Revoke A by its serial as openssl prints it.
    let out = run_ok(
        ca.cli()
            .args(["revoke", &openssl_serial(&a), "--reason", "keyCompromise"]),
    );
    assert_eq!(
        out.trim(),
        format!("revoked {} \"{A}\" reason=keyCompromise", a.raw_serial)
    );
    // The CLI published the new CRL; the server serves it within a poll.
    wait_for(Duration::from_secs(30), "/v1/crl to list A", || {
        let (_, listed) = crl_facts(&served_crl(&ca));
        listed.iter().any(|(s, _)| *s == a.raw_serial).then_some(())
    });

    // On the server hosts: fetch, verify, install for every service.
    let out = run_ok(&mut crl_cmd(&ca, &web.dir, &["--install", "nginx,haproxy"]));
    assert!(out.contains(&format!("(was {before})")), "{out}");
    assert!(
        out.contains("nginx at ") && out.contains("haproxy at "),
        "{out}"
    );
    assert!(out.contains("new certificate served"), "{out}");
    let out = run_ok(&mut crl_cmd(&ca, &db.dir, &["--install", "postgres"]));
    assert!(out.contains("postgres at "), "{out}");

    // The CRL: a higher number, A with its reason (keyCompromise = 1).
    let (after, listed) = crl_facts(&first_crl(&bundle));
    assert!(after > before, "{after} > {before}");
    assert_eq!(listed, vec![(a.raw_serial.clone(), Some(1))]);
    assert_eq!(read(&bundle), read(&db.dir.join("crl.pem")));

    // All three refuse A (once reloaded workers answer) and still take B.
    wait_for(Duration::from_secs(30), "nginx to refuse A", || {
        trio.nginx_lets_in(&a).is_err().then_some(())
    });
    wait_for(Duration::from_secs(30), "HAProxy to refuse A", || {
        trio.haproxy_lets_in(&a).is_err().then_some(())
    });
    wait_for(Duration::from_secs(30), "PostgreSQL to refuse A", || {
        trio.postgres_lets_in(&a, A).is_err().then_some(())
    });
    // Each names the reason: revoked, not some other failure.
    assert!(
        trio.nginx.logs().contains("certificate revoked"),
        "{}",
        trio.logs()
    );
    for refused in [
        trio.haproxy_lets_in(&a).unwrap_err(),
        trio.postgres_lets_in(&a, A).unwrap_err(),
    ] {
        assert!(refused.contains("certificate revoked"), "{refused}");
    }
    trio.all_let_in(&b, B)
        .unwrap_or_else(|e| panic!("B after A's revocation: {e}\n{}", trio.logs()));
    // The services still serve their own certificates.
    let served = trio.served(&b);
    assert_eq!(served[0].as_deref(), Ok(web.serial.as_str()));
    assert_eq!(served[1].as_deref(), Ok(web.serial.as_str()));
    assert_eq!(served[2].as_deref(), Ok(db.serial.as_str()));

    // openssl agrees.
    let err = openssl_verify(&ca, &a, &bundle).unwrap_err();
    assert!(err.contains("certificate revoked"), "{err}");
    openssl_verify(&ca, &b, &bundle).expect("B still verifies");

    // Revoking again changes nothing: no new CRL, the same time and reason.
    let listed_before = run_ok(ca.cli().args(["cert", "show", &a.raw_serial, "--json"]));
    let out = run_ok(
        ca.cli()
            .args(["revoke", &a.raw_serial, "--reason", "superseded"]),
    );
    assert!(out.starts_with("already revoked"), "{out}");
    assert_eq!(
        run_ok(ca.cli().args(["cert", "show", &a.raw_serial, "--json"])),
        listed_before
    );
    let out = run_ok(&mut crl_cmd(&ca, &web.dir, &["--install", "nginx,haproxy"]));
    assert!(
        out.starts_with(&format!("up to date: CRL number={after}")),
        "{out}"
    );
    assert!(out.contains("CRL already installed"), "{out}");

    // cert list shows the status; the audit log the admin and the reason.
    let list = run_ok(ca.cli().args(["cert", "list"]));
    let line = list.lines().find(|l| l.starts_with(&a.raw_serial)).unwrap();
    assert!(
        line.contains(" revoked ") && line.contains("reason=keyCompromise"),
        "{line}"
    );
    let audit = run_ok(ca.cli().args(["audit", "--since", "1h", "--json"]));
    let row: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["event"] == "revoked")
        .expect("an audit row for the revocation");
    assert_eq!(row["serial"], a.raw_serial.as_str());
    assert_eq!(row["reason"], "keyCompromise");
    assert!(row["actor"].as_str().unwrap().starts_with("cli:"), "{row}");
    assert_eq!(audit.matches("\"event\":\"revoked\"").count(), 1);
    ca.assert_no_secret_leaks();
}

#[test]
fn revoke_by_host_twice_unknown_and_with_a_bad_reason() {
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let first = bootstrap(&mut ca, B, work.path(), "b1");
    let second = bootstrap(&mut ca, B, work.path(), "b2");
    let other = bootstrap(&mut ca, A, work.path(), "a");

    let out = run_ok(ca.cli().args([
        "revoke",
        "--host",
        B,
        "--reason",
        "cessationOfOperation",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let mut revoked: Vec<&str> = v["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["serial"].as_str().unwrap())
        .collect();
    revoked.sort();
    let mut want = vec![first.raw_serial.as_str(), second.raw_serial.as_str()];
    want.sort();
    assert_eq!(revoked, want);
    let number = v["crl_number"].as_i64().expect("published at once");
    for c in ca.certs_of(B) {
        assert_eq!(c["status"], "revoked", "{c}");
        assert_eq!(c["revocation_reason"], "cessationOfOperation");
    }
    assert_eq!(
        ca.certs_of(A)[0]["status"],
        "valid",
        "other hosts are untouched"
    );
    let _ = other;

    // Again: nothing left to revoke, nothing published.
    let out = run_ok(ca.cli().args(["revoke", "--host", B, "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["revoked"].as_array().unwrap().len(), 0);
    assert!(v["crl_number"].is_null());
    let bundle = work.path().join("bundle.pem");
    run_ok(ca.cli().arg("crl").arg("--out").arg(&bundle));
    assert_eq!(crl_facts(&first_crl(&bundle)).0 as i64, number);
    // `crl --sign` signs a new generation on demand, listing the same.
    run_ok(ca.cli().args(["crl", "--sign", "--out"]).arg(&bundle));
    let (resigned, listed) = crl_facts(&first_crl(&bundle));
    assert!(resigned as i64 > number);
    assert_eq!(listed.len(), 2);

    // Unknown serial or host: exit 3. Bad reason or no target: usage, exit 2.
    for args in [
        vec!["revoke", "00ff00ff"],
        vec!["revoke", "--host", "nobody.example.internal"],
    ] {
        let out = run(ca.cli().args(&args));
        assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
    }
    for args in [
        vec!["revoke", &first.raw_serial, "--reason", "certificateHold"],
        vec!["revoke"],
        vec!["revoke", &first.raw_serial, "--host", B],
    ] {
        let out = run(ca.cli().args(&args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[test]
fn ca_client_crl_refuses_a_foreign_or_older_crl_and_keeps_the_installed_one() {
    if !require_tool("curl") {
        return;
    }
    let mut ca = CaServer::start();
    let other_ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let host = bootstrap(&mut ca, WEB, work.path(), "web");
    let victim = bootstrap(&mut ca, A, work.path(), "a");
    let installed = host.dir.join("crl.pem");

    run_ok(&mut crl_cmd(&ca, &host.dir, &[]));
    let old = work.path().join("old.pem");
    std::fs::copy(&installed, &old).unwrap();
    run_ok(ca.cli().args(["revoke", &victim.raw_serial]));
    wait_for(
        Duration::from_secs(30),
        "a CRL listing the revocation",
        || {
            let (_, listed) = crl_facts(&served_crl(&ca));
            (!listed.is_empty()).then_some(())
        },
    );
    run_ok(&mut crl_cmd(&ca, &host.dir, &[]));
    let current = read(&installed);
    assert_ne!(current, read(&old));

    // The older bundle (a replay, or a lagging mirror): refused, exit 8.
    let out = run(ca_client()
        .args(["crl", "--dir"])
        .arg(&host.dir)
        .arg("--from-file")
        .arg(&old));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains("older than the installed one"), "{err}");
    assert_eq!(read(&installed), current);

    // Another CA's CRLs, as a file: refused, exit 8.
    let foreign = work.path().join("foreign.pem");
    run_ok(other_ca.cli().arg("crl").arg("--out").arg(&foreign));
    let out = run(ca_client()
        .args(["crl", "--dir"])
        .arg(&host.dir)
        .arg("--from-file")
        .arg(&foreign));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains("not from the pinned CA"), "{err}");
    assert_eq!(read(&installed), current);

    // Another CA's server: its TLS does not even verify against the pin (exit 3).
    let out = run(ca_client()
        .args(["crl", "--server", &other_ca.url, "--dir"])
        .arg(&host.dir));
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read(&installed), current);

    // The installed bundle as a file: the same CRL, nothing to do.
    let out = run_ok(
        ca_client()
            .args(["crl", "--dir"])
            .arg(&host.dir)
            .arg("--from-file")
            .arg(&installed),
    );
    assert!(out.starts_with("up to date:"), "{out}");
}

#[test]
fn a_key_revoked_as_compromised_never_gets_a_certificate_again() {
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let a = bootstrap(&mut ca, A, work.path(), "a");
    let b = bootstrap(&mut ca, B, work.path(), "b");
    run_ok(
        ca.cli()
            .args(["revoke", &a.raw_serial, "--reason", "keyCompromise"]),
    );
    run_ok(
        ca.cli()
            .args(["revoke", &b.raw_serial, "--reason", "superseded"]),
    );

    // The compromised key, for its own host or another: 422, the PSK stays live.
    for (host, label) in [(A, "a-again"), (B, "b-with-a-key")] {
        let psk = ca.psk_add(host, &[]);
        let psk_file = write_file(work.path(), &format!("{label}.psk"), &psk);
        let out = run(ca
            .bootstrap_cmd(host, &psk_file, &work.path().join(label))
            .arg("--key")
            .arg(a.dir.join("key.pem")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{host}: {err}");
        assert!(
            err.contains("key_not_allowed") && err.contains("compromised"),
            "{err}"
        );
        let live = run_ok(ca.cli().args(["psk", "list"]));
        assert!(live.contains(host), "{live}");
        // A new key with the same PSK works.
        run_ok(&mut ca.bootstrap_cmd(host, &psk_file, &work.path().join(format!("{label}-new"))));
    }
    // A key revoked for another reason may be used again (e.g. after an
    // administrative revocation).
    let psk = ca.psk_add(B, &[]);
    let psk_file = write_file(work.path(), "b-reuse.psk", &psk);
    run_ok(
        ca.bootstrap_cmd(B, &psk_file, &work.path().join("b-reuse"))
            .arg("--key")
            .arg(b.dir.join("key.pem")),
    );
    let audit = run_ok(ca.cli().args(["audit", "--since", "1h"]));
    assert!(
        audit.contains("key_not_allowed: key not allowed: a key revoked as compromised"),
        "{audit}"
    );
    ca.assert_no_secret_leaks();
}
