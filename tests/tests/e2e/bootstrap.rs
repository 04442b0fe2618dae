//! The PSK loop end to end: spawner -> host -> verified certificate.

use ca_tests::*;
use std::process::Command;

const HOST: &str = "web1.example.internal";

#[test]
fn bootstrap_issues_a_verifiable_certificate_and_spends_the_psk() {
    if !require_tool("openssl") {
        return;
    }
    let mut server = CaServer::start();
    let psk = server.psk_add(HOST, &[]);
    let work = tempfile::tempdir().unwrap();
    let psk_file = write_file(work.path(), "psk", &psk);
    let dir = work.path().join("tls");

    let out = run_ok(&mut server.bootstrap_cmd(HOST, &psk_file, &dir));
    assert!(out.contains("issued web1.example.internal"), "{out}");
    assert!(!psk_file.exists(), "the PSK file is deleted after success");

    // The chain verifies with openssl against the root, the intermediate untrusted.
    let cert = dir.join("cert.pem");
    let verify = run_ok(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(server.root_pem())
            .arg("-untrusted")
            .arg(server.intermediate_pem())
            .arg(&cert),
    );
    assert!(verify.trim().ends_with(": OK"), "{verify}");
    // ca.pem is the pinned root, chain.pem leaf + intermediate.
    let der = |p: &std::path::Path| pem::parse(read(p)).unwrap().into_contents();
    assert_eq!(der(&dir.join("ca.pem")), der(&server.root_pem()));
    let chain = String::from_utf8(read(&dir.join("chain.pem"))).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);

    let text = openssl_text(&cert);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains(&format!("DNS:{HOST}")), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains(&format!("Subject: CN = {HOST}")), "{text}");
    assert!(
        !text.contains("1.3.6.1.4.1.34380"),
        "the PSK extension is never copied:\n{text}"
    );
    assert!(!text.contains(&psk));

    // File modes: key 0600, the rest 0644.
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| std::fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("key.pem"), 0o600);
    for f in ["cert.pem", "chain.pem", "ca.pem"] {
        assert_eq!(mode(f), 0o644, "{f}");
    }
    // The key matches the certificate.
    let key_pub = run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.join("key.pem")),
    );
    let cert_pub = run_ok(
        Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(&cert),
    );
    assert_eq!(key_pub, cert_pub);

    // The PSK is gone from the store, and exactly one host certificate exists.
    let psks = run_ok(server.cli().args(["psk", "list", "--json"]));
    assert!(!psks.contains(HOST), "{psks}");
    assert_eq!(server.certs_of(HOST).len(), 1);

    // A second host with the same (spent) PSK and a new key is refused with exit code 4.
    let psk_file2 = write_file(work.path(), "psk2", &psk);
    let out = run(&mut server.bootstrap_cmd(HOST, &psk_file2, &work.path().join("other")));
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rejected the PSK"));
    assert_eq!(server.certs_of(HOST).len(), 1);
    server.assert_no_secret_leaks();
}

#[test]
fn bootstrap_refuses_a_server_whose_root_does_not_match_the_fingerprint() {
    let mut server = CaServer::start();
    let psk = server.psk_add(HOST, &[]);
    let work = tempfile::tempdir().unwrap();
    let psk_file = write_file(work.path(), "psk", &psk);
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let out = run(ca_client()
        .args([
            "bootstrap",
            "--server",
            &server.url,
            "--fingerprint",
            &wrong,
        ])
        .args(["--hostname", HOST, "--psk-file"])
        .arg(&psk_file)
        .arg("--dir")
        .arg(work.path().join("tls")));
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match --fingerprint"), "{stderr}");
    assert!(
        psk_file.exists(),
        "the PSK is kept when nothing was redeemed"
    );
    // Nothing was sent to /v1/sign: the PSK is still live.
    assert!(run_ok(server.cli().args(["psk", "list"])).contains(HOST));
}

#[test]
fn bootstrap_reports_an_unreachable_server() {
    let work = tempfile::tempdir().unwrap();
    let psk_file = write_file(work.path(), "psk", "x".repeat(43));
    // A port nobody listens on: bind and drop.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(ca_client()
        .args([
            "bootstrap",
            "--server",
            &format!("https://127.0.0.1:{port}"),
        ])
        .args(["--fingerprint", &format!("sha256:{}", "00".repeat(32))])
        .args(["--hostname", HOST, "--psk-file"])
        .arg(&psk_file)
        .arg("--dir")
        .arg(work.path().join("tls"))
        .args(["--retry-for", "2s"]));
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be reached"));
}

#[test]
fn openssl_made_csrs_of_every_allowed_key_type_are_signed() {
    if !require_tool("openssl") || !require_tool("curl") {
        return;
    }
    let mut server = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    for (i, spec) in ["ec:P-256", "ec:P-384", "ed25519", "rsa:2048"]
        .iter()
        .enumerate()
    {
        let host = format!("host{i}.example.internal");
        let psk = server.psk_add(&host, &[]);
        let key = openssl_key(work.path(), &format!("k{i}.pem"), spec).unwrap();
        let csr = write_file(
            work.path(),
            &format!("r{i}.pem"),
            openssl_csr(&key, &host, Some(&psk), &[]).unwrap(),
        );
        let out_cert = work.path().join(format!("c{i}.pem"));
        // curl is the client: the real TLS stack of another implementation.
        let status = run_ok(
            Command::new("curl")
                .args(["-sS", "-o"])
                .arg(&out_cert)
                .args(["-w", "%{http_code}", "--cacert"])
                .arg(server.root_pem())
                .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
                .arg(format!("@{}", csr.display()))
                .arg(format!("{}/v1/sign", server.url)),
        );
        assert_eq!(
            status,
            "201",
            "{spec}: {}",
            String::from_utf8_lossy(&read(&out_cert))
        );
        let verify = run_ok(
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(server.root_pem())
                .arg("-untrusted")
                .arg(&out_cert)
                .arg(&out_cert),
        );
        assert!(verify.contains(": OK"), "{spec}: {verify}");
        let text = openssl_text(&out_cert);
        assert!(text.contains(&format!("DNS:{host}")));
        assert!(!text.contains("1.3.6.1.4.1.34380"));
        if spec.starts_with("rsa") {
            assert!(
                text.contains("Digital Signature, Key Encipherment"),
                "{text}"
            );
        } else {
            assert!(
                text.contains("Digital Signature") && !text.contains("Key Encipherment"),
                "{text}"
            );
        }
    }
    server.assert_no_secret_leaks();
}

#[test]
fn psk_add_json_gives_the_spawner_everything_it_needs() {
    let server = CaServer::start();
    let out = run_ok(server.cli().args([
        "psk",
        "add",
        "db1.example.internal",
        "--ttl",
        "10m",
        "--san",
        "db.example.internal",
        "--json",
        "--server-url",
        "https://ca.example.internal:8443",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["hostname"], "db1.example.internal");
    assert_eq!(v["psk"].as_str().unwrap().len(), 43);
    assert_eq!(v["fingerprint"], server.fingerprint.as_str());
    assert_eq!(v["server_url"], "https://ca.example.internal:8443");
    assert_eq!(v["allowed_sans"][0], "db.example.internal");
    // psk list never shows the secret.
    let list = run_ok(server.cli().args(["psk", "list", "--json"]));
    assert!(list.contains("db1.example.internal"));
    assert!(!list.contains(v["psk"].as_str().unwrap()));
    assert!(!list.contains("hash"));
}

#[test]
fn a_supplied_psk_must_carry_128_bits_and_not_be_a_repeat() {
    let server = CaServer::start();
    let mut weak = server.cli();
    weak.args(["psk", "add", "h.example.internal", "--psk-stdin"]);
    let out = pipe_stdin(&mut weak, "deadbeefdeadbeef");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 128"));
    // Long enough, but one repeated character: refused for its structure.
    let mut repeated = server.cli();
    repeated.args(["psk", "add", "h.example.internal", "--psk-stdin"]);
    let out = pipe_stdin(&mut repeated, &"a".repeat(64));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("low in entropy"), "{stderr}");
    assert!(
        !stderr.contains(&"a".repeat(16)),
        "the secret is echoed: {stderr}"
    );
    let mut strong = server.cli();
    strong.args(["psk", "add", "h.example.internal", "--psk-stdin"]);
    let secret = "3f9c1e07b2d84a6f5e0c9b1d7a2f4e83";
    let out = pipe_stdin(&mut strong, secret);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), secret);
}

fn pipe_stdin(cmd: &mut Command, input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
