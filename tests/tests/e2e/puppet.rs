//! Stock Puppet agents (Debian's puppet-agent 7.23) enrol with
//! `pp_preshared_key` through the Puppet CA API, and the API itself answers
//! as the agent expects (checked with curl).

use ca_tests::curl::curl;
use ca_tests::puppet::{PuppetAgent, agent_output, require_puppet, without_noise};
use ca_tests::*;
use std::process::{Child, Command};
use std::time::Duration;

/// Kills a background agent if the test fails before it exits.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The peer address of the request log line for `method path`.
fn peer_of(logs: &str, method: &str, path: &str) -> String {
    let line = logs
        .lines()
        .find(|l| {
            l.contains(&format!("method={method} ")) && l.contains(&format!("path=\"{path}\""))
        })
        .unwrap_or_else(|| panic!("no {method} {path} in the server log:\n{logs}"));
    line.split("peer=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned()
}

fn audit_reasons(server: &CaServer, host: &str) -> Vec<String> {
    run_ok(server.cli().args(["audit", "--since", "1h", "--json"]))
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["hostname"] == host)
        .map(|v| v["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn live_psks(server: &CaServer) -> String {
    run_ok(server.cli().args(["psk", "list", "--json"]))
}

#[test]
fn a_stock_puppet_agent_enrols_with_its_psk_and_refused_agents_show_why() {
    if !require_puppet() || !require_tool("openssl") {
        return;
    }
    let mut server = CaServer::start();
    let host = "agent1.example.internal";
    let psk = server.psk_add(host, &[]);

    // The agent pins the CA bundle by Puppet's `ca_fingerprint` (SHA-256 of
    // the bundle text), read here over a root-pinned connection.
    let bundle = block_on(server.client().send(
        http::Method::GET,
        "/puppet-ca/v1/certificate/ca",
        None,
        bytes::Bytes::new(),
    ))
    .unwrap();
    assert_eq!(bundle.status, 200);
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bundle.body));

    let agent = PuppetAgent::new(&server, host, Some(&psk));
    let out = agent.bootstrap(&["--ca_fingerprint", &digest]);
    let text = agent_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Verified CA bundle with digest"), "{text}");
    assert!(text.contains("Completed SSL initialization"), "{text}");

    // The certificate: CN = certname, no PSK extension, the agent's own key.
    let cert_text = openssl_text(&agent.cert_path());
    assert!(
        cert_text.contains(&format!("Subject: CN = {host}")),
        "{cert_text}"
    );
    assert!(cert_text.contains(&format!("DNS:{host}")), "{cert_text}");
    assert!(
        !cert_text.contains("1.3.6.1.4.1.34380") && !cert_text.contains(&psk),
        "the PSK extension is never copied:\n{cert_text}"
    );
    let key_pub = run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(agent.key_path()),
    );
    let cert_pub = run_ok(
        Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(agent.cert_path()),
    );
    assert_eq!(key_pub, cert_pub);

    // The CA bundle and CRLs the agent saved verify its certificate with
    // revocation checked on the whole chain, as the agent's OpenSSL did.
    let crls = String::from_utf8(read(&agent.crl_path())).unwrap();
    assert_eq!(crls.matches("BEGIN X509 CRL").count(), 2, "{crls}");
    let verify = run_ok(
        Command::new("openssl")
            .args(["verify", "-crl_check_all", "-CAfile"])
            .arg(agent.ca_path())
            .arg("-CRLfile")
            .arg(agent.crl_path())
            .arg(agent.cert_path()),
    );
    assert!(verify.trim().ends_with(": OK"), "{verify}");

    // The PSK is spent: gone from the store, one certificate recorded.
    assert!(!live_psks(&server).contains(host));
    assert_eq!(server.certs_of(host).len(), 1);

    // No keep-alive stall (PUPPET_AGENT_PROTOCOL.md section 3): a stalled agent
    // would reconnect for the GET after the server's idle timeout; this one
    // fetched its certificate on the connection that sent the CSR.
    // Request lines reach the log from the server's log thread, just after the answer.
    let get_line = format!("/puppet-ca/v1/certificate/{host}");
    let logs = wait_for(Duration::from_secs(10), "the GET's log line", || {
        let logs = server.logs();
        logs.contains(&get_line).then_some(logs)
    });
    assert_eq!(
        peer_of(
            &logs,
            "PUT",
            &format!("/puppet-ca/v1/certificate_request/{host}")
        ),
        peer_of(&logs, "GET", &format!("/puppet-ca/v1/certificate/{host}")),
    );

    // A second agent replaying the spent PSK with a new key gets nothing, and
    // its output says the CA refused its CSR.
    let replay = PuppetAgent::new(&server, host, Some(&psk));
    let out = replay.bootstrap(&[]);
    let text = agent_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Failed to submit the CSR, HTTP response was 403"),
        "{text}"
    );
    assert!(!replay.cert_path().exists());
    assert_eq!(server.certs_of(host).len(), 1);
    assert!(audit_reasons(&server, host).contains(&"psk_used".to_string()));

    // A wrong PSK for a host that has one: the waiting agent says why on every
    // attempt (with --debug, the reason too), nothing is left pending, the real
    // PSK stays usable, and once the host has it the same agent completes.
    let host2 = "agent2.example.internal";
    let psk2 = server.psk_add(host2, &[]);
    let wrong = "Wr0ngWr0ngWr0ngWr0ngWr0ngWr0ngWr0ngWr0ngWr0";
    server.remember_secret(wrong);
    let waiting = PuppetAgent::new(&server, host2, Some(wrong));
    let mut child = Background(waiting.spawn_bootstrap(&["--waitforcert", "1", "--debug"]));
    let log = || std::fs::read_to_string(waiting.log_path()).unwrap_or_default();
    wait_for(Duration::from_secs(90), "two refused attempts", || {
        (log().matches("HTTP response was 403").count() >= 2).then_some(())
    });
    assert!(
        live_psks(&server).contains(host2),
        "a wrong guess spends nothing"
    );
    assert!(server.certs_of(host2).is_empty());
    assert!(audit_reasons(&server, host2).contains(&"psk_wrong".to_string()));
    let text = without_noise(&log());
    assert!(text.contains("Will try again in 1 seconds."), "{text}");
    assert!(
        text.contains("returned 403 PSK rejected: unknown host, wrong, used or expired PSK"),
        "{text}"
    );

    waiting.set_psk(Some(&psk2));
    let status = wait_for(Duration::from_secs(90), "the agent to finish", || {
        child.0.try_wait().unwrap()
    });
    let text = without_noise(&log());
    assert!(status.success(), "{text}");
    assert!(text.contains("Completed SSL initialization"), "{text}");
    assert!(waiting.cert_path().exists());
    assert!(!live_psks(&server).contains(host2));
    assert_eq!(server.certs_of(host2).len(), 1);
    server.assert_no_secret_leaks();
}

#[test]
fn the_puppet_ca_api_answers_in_text_and_binds_the_csr_to_the_certname() {
    if !require_tool("openssl") || !require_tool("curl") {
        return;
    }
    let mut server = CaServer::start();
    let work = tempfile::tempdir().unwrap();

    // certificate/ca: the same bundle as /v1/ca, as text/plain.
    let ca = curl(
        &server,
        "GET",
        "/puppet-ca/v1/certificate/ca",
        &["Accept: text/plain"],
        None,
    );
    assert_eq!(ca.status, 200);
    assert_eq!(ca.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(ca.body, curl(&server, "GET", "/v1/ca", &[], None).body);

    // certificate_revocation_list/ca: both CRLs, Last-Modified, and 304 for
    // an If-Modified-Since at or after it.
    let crl = curl(
        &server,
        "GET",
        "/puppet-ca/v1/certificate_revocation_list/ca",
        &[],
        None,
    );
    assert_eq!(crl.status, 200);
    assert_eq!(crl.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(crl.text().matches("BEGIN X509 CRL").count(), 2);
    let last_modified = crl.header("last-modified").expect("Last-Modified");
    let ims = format!("If-Modified-Since: {last_modified}");
    let again = curl(
        &server,
        "GET",
        "/puppet-ca/v1/certificate_revocation_list/ca",
        &[&ims],
        None,
    );
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let old = curl(
        &server,
        "GET",
        "/puppet-ca/v1/certificate_revocation_list/ca",
        &["If-Modified-Since: Mon, 01 Jan 2024 00:00:00 GMT"],
        None,
    );
    assert_eq!(old.status, 200);
    let other = curl(
        &server,
        "GET",
        "/puppet-ca/v1/certificate_revocation_list/x",
        &[],
        None,
    );
    assert_eq!(other.status, 404);

    // Unknown or invalid names: 404 text.
    for name in ["nobody.example.internal", "UPPER.example", "a..b", "a%2fb"] {
        let r = curl(
            &server,
            "GET",
            &format!("/puppet-ca/v1/certificate/{name}"),
            &[],
            None,
        );
        assert_eq!(r.status, 404, "{name}");
        assert!(
            r.text().starts_with("Could not find certificate"),
            "{name}: {}",
            r.text()
        );
    }

    let host = "p1.example.internal";
    let psk = server.psk_add(host, &[]);
    let key = openssl_key(work.path(), "k.pem", "rsa:2048").unwrap();
    let put = |csr: &std::path::Path, name: &str| {
        curl(
            &server,
            "PUT",
            &format!("/puppet-ca/v1/certificate_request/{name}"),
            &["Content-Type: text/plain", "Accept: text/plain"],
            Some(csr),
        )
    };

    // The CSR's CN must be the certname in the URL (checked before the PSK).
    let other_cn = write_file(
        work.path(),
        "other.csr",
        openssl_csr(&key, "p2.example.internal", Some(&psk), &[]).unwrap(),
    );
    let r = put(&other_cn, host);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(
        r.text().contains("does not match the certname"),
        "{}",
        r.text()
    );
    assert!(
        audit_reasons(&server, "p2.example.internal")
            .iter()
            .any(|r| r.starts_with("certname_mismatch")),
        "the precise reason is audited"
    );

    // A body the CA cannot read: 422, not the 400 an agent takes for "already
    // requested" (it would then wait silently).
    let garbage = write_file(work.path(), "garbage.csr", "not a CSR");
    let r = put(&garbage, host);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("CSR is not valid"), "{}", r.text());

    // No PSK: the generic 403 (the audit says psk_missing), nothing kept.
    let no_psk = write_file(
        work.path(),
        "nopsk.csr",
        openssl_csr(&key, host, None, &[]).unwrap(),
    );
    let r = put(&no_psk, host);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert!(audit_reasons(&server, host).contains(&"psk_missing".to_string()));
    let r = curl(
        &server,
        "GET",
        &format!("/puppet-ca/v1/certificate/{host}"),
        &[],
        None,
    );
    assert_eq!(r.status, 404);
    assert!(live_psks(&server).contains(host), "refusals spend nothing");

    // The right PSK: 200 with an empty body, then the certificate by name.
    let good = write_file(
        work.path(),
        "good.csr",
        openssl_csr(&key, host, Some(&psk), &[]).unwrap(),
    );
    let r = put(&good, host);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    let cert = curl(
        &server,
        "GET",
        &format!("/puppet-ca/v1/certificate/{host}"),
        &[],
        None,
    );
    assert_eq!(cert.status, 200);
    assert_eq!(cert.header("content-type").as_deref(), Some("text/plain"));
    let cert_file = write_file(work.path(), "cert.pem", &cert.body);
    let cert_pub = run_ok(
        Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(&cert_file),
    );
    let key_pub = run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key),
    );
    assert_eq!(cert_pub, key_pub);

    // The same CSR again (a lost response): the recorded certificate, 200.
    let r = put(&good, host);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(server.certs_of(host).len(), 1);
    wait_for(
        Duration::from_secs(10),
        "the replayed request's log line",
        || server.logs().contains("outcome=\"replayed\"").then_some(()),
    );

    // Pending CSRs are never kept or served.
    let r = curl(
        &server,
        "GET",
        &format!("/puppet-ca/v1/certificate_request/{host}"),
        &[],
        None,
    );
    assert_eq!(r.status, 405);
    server.assert_no_secret_leaks();
}

#[test]
fn a_puppet_agent_can_carry_the_psk_as_challenge_password() {
    if !require_puppet() {
        return;
    }
    let mut server = CaServer::start();
    let host = "agent3.example.internal";
    // Ruby writes challengePassword as a PrintableString, whatever it holds:
    // this PSK has the `_` that PrintableString does not allow.
    let psk = "Zg4iPgx_OFNITw_dRhJ05omhxk-QEymzPbWJbcZubaw";
    let mut add = server.cli();
    add.args(["psk", "add", host, "--psk-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = add.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), psk.as_bytes()).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    server.remember_secret(psk);

    let agent = PuppetAgent::new(&server, host, None);
    std::fs::write(
        agent.confdir().join("csr_attributes.yaml"),
        format!("custom_attributes:\n  1.2.840.113549.1.9.7: \"{psk}\"\n"),
    )
    .unwrap();
    let out = agent.bootstrap(&[]);
    let text = agent_output(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Completed SSL initialization"), "{text}");
    assert!(!live_psks(&server).contains(host));
    let cert_text = openssl_text(&agent.cert_path());
    assert!(!cert_text.contains(psk), "{cert_text}");
    server.assert_no_secret_leaks();
}
