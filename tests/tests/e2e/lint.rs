//! Certificate linting with pkilint (installed from PyPI by scripts/test.sh
//! into target/tools/pkilint): the root, the intermediate, the server's own
//! certificate and a leaf of every accepted key type have no finding at
//! WARNING or above under the RFC 5280 validators, nor does any link of the
//! chain, nor do the intermediate's CRL (with revoked entries) and the root's CRL. Lower findings and the CA/Browser Forum serverAuth profile (public
//! web rules a private CA breaks on purpose) go to target/tmp/pkilint-report.txt
//! for information; docs/security.md explains them.

use ca_tests::forge::{CsrSpec, forge};
use ca_tests::*;
use http::StatusCode;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pkilint tool: from scripts/test.sh's virtualenv if there, else PATH.
fn tool(name: &str) -> String {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/pkilint/bin");
    let path = venv.join(name);
    if path.exists() {
        path.display().to_string()
    } else {
        name.to_owned()
    }
}

/// Runs a pkilint tool; returns (exit status ok, output).
fn lint(name: &str, args: &[&str], files: &[&Path]) -> (bool, String) {
    // Python warnings (a dependency's deprecation notices on stderr) are not
    // findings: pkilint reports those on stdout.
    let out = run(Command::new(tool(name))
        .env("PYTHONWARNINGS", "ignore")
        .arg("lint")
        .args(args)
        .args(files));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn root_intermediate_and_leaves_of_every_key_type_lint_clean() {
    if !require_tool(&tool("lint_pkix_cert")) || !require_tool("openssl") {
        return;
    }
    // A public URL with a domain name: pkilint (like the `validators` library
    // it uses) refuses single-label hosts such as `localhost` in URIs.
    let mut server = CaServer::start_with(ServerOptions {
        args: ["--public-url", "https://ca.example.internal:8443"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let client = server.client();
    let mut certs: Vec<(String, PathBuf)> = vec![
        ("root".into(), server.root_pem()),
        ("intermediate".into(), server.intermediate_pem()),
    ];

    // The server's own TLS certificate is linted for information only: the
    // harness names it `localhost`, a single-label name that pkilint flags
    // (RFC 1034 allows it; its "preferred name syntax" check does not).
    let server_cert = run_ok(server.cli().args(["cert", "show", "localhost", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&server_cert).unwrap();
    let server_pem = write_file(work.path(), "server.pem", v["pem"].as_str().unwrap());

    // A leaf for every accepted key type.
    let mut csrs: Vec<(&str, Vec<u8>)> = Vec::new();
    for (name, alg) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        let host = format!("{name}.example.internal");
        let psk = server.psk_add(&host, &[]);
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        csrs.push((name, forge(&key, &CsrSpec::host(&host, &psk))));
    }
    for bits in ["2048", "4096"] {
        let name: &'static str = if bits == "2048" { "rsa2048" } else { "rsa4096" };
        let host = format!("{name}.example.internal");
        let psk = server.psk_add(&host, &["--san", &format!("www.{host}")]);
        let key = openssl_key(work.path(), &format!("{name}.key"), &format!("rsa:{bits}")).unwrap();
        let pem = openssl_csr(&key, &host, Some(&psk), &[]).unwrap();
        csrs.push((name, pem));
    }
    block_on(async {
        for (name, body) in csrs {
            let reply = sign_csr(&client, body).await.unwrap();
            assert_eq!(reply.status, StatusCode::CREATED, "{name}");
            let leaf = pem::parse_many(&reply.body).unwrap().remove(0);
            let path = write_file(work.path(), &format!("{name}.pem"), pem::encode(&leaf));
            certs.push((format!("leaf {name}"), path));
        }
    });

    let mut report = String::new();
    let mut failures = Vec::new();
    for (name, path) in &certs {
        let (ok, findings) = lint("lint_pkix_cert", &["-s", "WARNING"], &[path]);
        if !ok || !findings.trim().is_empty() {
            failures.push(format!("{name}: {findings}"));
        }
        let (_, info) = lint("lint_pkix_cert", &["-s", "INFO"], &[path]);
        let (_, cabf) = lint(
            "lint_cabf_serverauth_cert",
            &["-d", "-s", "WARNING", "--document-format", "PEM"],
            &[path],
        );
        report.push_str(&format!(
            "== {name}\nlint_pkix_cert -s INFO:\n{info}\nlint_cabf_serverauth_cert -s WARNING (information only):\n{cabf}\n"
        ));
    }
    // Each link of the chain: root -> intermediate -> every leaf.
    let (root, intermediate) = (&certs[0].1, &certs[1].1);
    let mut links = vec![("root -> intermediate".to_string(), root, intermediate)];
    for (name, path) in &certs[2..] {
        links.push((format!("intermediate -> {name}"), intermediate, path));
    }
    for (name, issuer, subject) in links {
        let (ok, findings) = lint(
            "lint_pkix_signer_signee_cert_chain",
            &["-s", "WARNING"],
            &[issuer, subject],
        );
        if !ok || !findings.trim().is_empty() {
            failures.push(format!("{name}: {findings}"));
        }
    }
    // The CRLs: the intermediate's as /v1/crl serves it, with entries (two
    // leaves revoked, with and without a reason code), and the root's CRL
    // for the intermediate (/v1/crl/root, also root.crl in the data dir).
    for (leaf, reason) in [
        ("leaf p256", "keyCompromise"),
        ("leaf rsa2048", "unspecified"),
    ] {
        let path = &certs.iter().find(|(n, _)| n == leaf).unwrap().1;
        let serial = run_ok(
            Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(path),
        );
        let serial = serial.trim().trim_start_matches("serial=");
        run_ok(server.cli().args(["revoke", serial, "--reason", reason]));
    }
    let fetch = |path: &'static str| {
        block_on(client.send(http::Method::GET, path, None, bytes::Bytes::new())).unwrap()
    };
    let crl = wait_for(
        std::time::Duration::from_secs(30),
        "/v1/crl to list both revocations",
        || {
            let crl = fetch("/v1/crl?format=pem");
            let der = pem::parse(&crl.body).ok()?.into_contents();
            let (_, parsed) = x509_parser::parse_x509_crl(&der).ok()?;
            (parsed.iter_revoked_certificates().count() == 2).then_some(crl.clone())
        },
    );
    let crl_path = write_file(work.path(), "intermediate.crl", &crl.body);
    let root_crl = fetch("/v1/crl/root?format=pem");
    assert_eq!(root_crl.status, StatusCode::OK);
    let root_crl_path = write_file(work.path(), "root.crl", &root_crl.body);
    for (name, path) in [
        ("intermediate CRL with revoked entries", crl_path),
        ("root CRL", root_crl_path),
    ] {
        let (ok, findings) = lint(
            "lint_crl",
            &["-t", "CRL", "-p", "PKIX", "-s", "WARNING"],
            &[&path],
        );
        if !ok || !findings.trim().is_empty() {
            failures.push(format!("{name}: {findings}"));
        }
        let (_, info) = lint(
            "lint_crl",
            &["-t", "CRL", "-p", "PKIX", "-s", "INFO"],
            &[&path],
        );
        report.push_str(&format!("== {name}\nlint_crl -s INFO:\n{info}\n"));
    }
    let (_, info) = lint("lint_pkix_cert", &["-s", "INFO"], &[&server_pem]);
    report.push_str(&format!(
        "== server certificate (information only)\nlint_pkix_cert -s INFO:\n{info}\n"
    ));
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pkilint-report.txt");
    std::fs::write(&path, &report).unwrap();
    assert!(
        failures.is_empty(),
        "pkilint findings at WARNING or above:\n{}",
        failures.join("\n")
    );
    server.assert_no_secret_leaks();
}

/// With the plain-HTTP listener: the leaf (http CDP and AIA), the delegated
/// OCSP responder certificate, OCSP responses (good, revoked with a reason,
/// unknown) and an intermediate made by `init --http-public-url` (root CRL
/// distribution point) have no pkilint finding at WARNING or above.
#[test]
fn plain_http_leaf_ocsp_responder_and_responses_lint_clean() {
    use ca_client::ocsp::{CertId, CertIdHash, IssuerKeys, encode_request};
    if !require_tool(&tool("lint_pkix_cert")) || !require_tool(&tool("lint_ocsp_response")) {
        return;
    }
    let port = ca_tests::services::free_port();
    let mut server = CaServer::start_with(ServerOptions {
        args: vec![
            "--public-url".into(),
            "https://ca.example.internal:8443".into(),
            "--http-listen".into(),
            format!("127.0.0.1:{port}"),
            "--http-public-url".into(),
            format!("http://ca.example.internal:{port}"),
        ],
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let client = server.client();
    let mut leaves = Vec::new();
    for name in ["good", "revoked"] {
        let host = format!("{name}.example.internal");
        let psk = server.psk_add(&host, &[]);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let reply = block_on(sign_csr(&client, forge(&key, &CsrSpec::host(&host, &psk)))).unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        leaves.push(
            pem::parse_many(&reply.body)
                .unwrap()
                .remove(0)
                .into_contents(),
        );
    }
    let int = pem::parse(read(&server.intermediate_pem()))
        .unwrap()
        .into_contents();
    let issuer = IssuerKeys::from_cert(&int).unwrap();
    let serial_of = |der: &[u8]| ca_client::ocsp::cert_serial(der).unwrap();
    let revoked_serial = hex::encode(serial_of(&leaves[1]));
    run_ok(
        server
            .cli()
            .args(["revoke", &revoked_serial, "--reason", "keyCompromise"]),
    );
    let ask = |serial: &[u8]| {
        let req = encode_request(&CertId::new(CertIdHash::Sha1, &issuer, serial), None);
        let (status, _, body) = crate::ocsp::http(
            port,
            "POST",
            "/ocsp",
            &[("Content-Type", "application/ocsp-request")],
            &req,
        );
        assert_eq!(status, 200);
        body
    };
    let good = ask(&serial_of(&leaves[0]));
    let revoked = wait_for(
        std::time::Duration::from_secs(30),
        "OCSP to say revoked",
        || {
            let body = ask(&serial_of(&leaves[1]));
            let (_, basic) = ca_client::ocsp::decode_response(&body).ok()?;
            matches!(
                basic?.responses.first()?.status,
                ca_client::ocsp::CertStatus::Revoked { .. }
            )
            .then_some(body)
        },
    );
    let unknown = ask(&[0x40; 16]);
    let (_, basic) = ca_client::ocsp::decode_response(&good).unwrap();
    let responder_cert = basic.unwrap().certs.remove(0);

    // An intermediate made with the plain-HTTP URL known at init.
    let data = work.path().join("data");
    run_ok(
        Command::new(bin("ca-server"))
            .arg("--data-dir")
            .arg(&data)
            .args([
                "init",
                "--http-public-url",
                "http://ca.example.internal:8080",
            ]),
    );

    let pem_file = |name: &str, der: &[u8]| {
        write_file(
            work.path(),
            name,
            pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())),
        )
    };
    let leaf = pem_file("leaf.pem", &leaves[0]);
    let responder = pem_file("responder.pem", &responder_cert);
    let int_path = server.intermediate_pem();
    let mut failures = Vec::new();
    let mut check = |name: &str, tool_name: &str, args: &[&str], files: &[&Path]| {
        let (ok, findings) = lint(tool_name, args, files);
        if !ok || !findings.trim().is_empty() {
            failures.push(format!("{name}: {findings}"));
        }
    };
    check(
        "leaf with http CDP and AIA",
        "lint_pkix_cert",
        &["-s", "WARNING"],
        &[&leaf],
    );
    check(
        "OCSP responder certificate",
        "lint_pkix_cert",
        &["-s", "WARNING"],
        &[&responder],
    );
    check(
        "intermediate with the root CRL distribution point",
        "lint_pkix_cert",
        &["-s", "WARNING"],
        &[&data.join("intermediate.crt")],
    );
    check(
        "intermediate -> leaf",
        "lint_pkix_signer_signee_cert_chain",
        &["-s", "WARNING"],
        &[&int_path, &leaf],
    );
    check(
        "intermediate -> OCSP responder",
        "lint_pkix_signer_signee_cert_chain",
        &["-s", "WARNING"],
        &[&int_path, &responder],
    );
    for (name, der) in [
        ("good", &good),
        ("revoked", &revoked),
        ("unknown", &unknown),
    ] {
        let path = write_file(work.path(), &format!("{name}.ocsp"), der);
        check(
            &format!("OCSP response ({name})"),
            "lint_ocsp_response",
            &["-s", "WARNING", "--document-format", "DER"],
            &[&path],
        );
    }
    assert!(
        failures.is_empty(),
        "pkilint findings at WARNING or above:\n{}",
        failures.join("\n")
    );
}
