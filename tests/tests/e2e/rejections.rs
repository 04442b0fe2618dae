//! Every refusal answers with the contract's status and code, consumes
//! nothing, is audited with its precise reason, and leaves the server healthy.

use bytes::Bytes;
use ca_client::keys::{HostKey, KeyType};
use ca_tests::*;
use http::{Method, StatusCode};
use policy::Psk;

const HOST: &str = "web1.example.internal";

fn fixture(name: &str) -> Vec<u8> {
    read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../policy/tests/fixtures")
            .join(name),
    )
}

fn csr(cn: &str, sans: &[&str], psk: &str) -> Vec<u8> {
    let key = HostKey::generate(KeyType::P256).unwrap();
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    key.csr_pem(cn, &sans, Some(&Psk::new(psk.into()).unwrap()))
        .unwrap()
        .as_bytes()
        .to_vec()
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    status: StatusCode,
    code: &'static str,
}

#[test]
fn every_rejection_has_its_status_and_code_and_consumes_nothing() {
    let mut server = CaServer::start();
    let psk = server.psk_add(HOST, &["--san", "www.example.internal"]);
    let other_psk = server.psk_add("other.example.internal", &[]);
    let wrong = "W".repeat(43);
    server.remember_secret(&wrong);

    let mut tampered = fixture("p256.der");
    let pos = tampered.windows(4).position(|w| w == b"web1").unwrap();
    tampered[pos] = b'x';
    let good_der = fixture("p256.der");

    let cases = vec![
        Case {
            name: "wrong PSK",
            body: csr(HOST, &[], &wrong),
            content_type: None,
            status: StatusCode::FORBIDDEN,
            code: "psk_rejected",
        },
        Case {
            name: "unknown host",
            body: csr("nobody.example.internal", &[], &psk),
            content_type: None,
            status: StatusCode::FORBIDDEN,
            code: "psk_rejected",
        },
        Case {
            name: "CN of another host with this PSK",
            body: csr("other.example.internal", &[], &psk),
            content_type: None,
            status: StatusCode::FORBIDDEN,
            code: "psk_rejected",
        },
        Case {
            name: "no PSK at all",
            body: fixture("p256-no-psk.der"),
            content_type: Some("application/pkcs10"),
            status: StatusCode::FORBIDDEN,
            code: "psk_rejected",
        },
        Case {
            name: "SAN not allowed for the PSK",
            body: csr(HOST, &[HOST, "evil.example.internal"], &psk),
            content_type: None,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "name_not_allowed",
        },
        Case {
            name: "IP SAN not allowed",
            body: csr(HOST, &["10.9.9.9"], &psk),
            content_type: None,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "name_not_allowed",
        },
        Case {
            name: "wildcard CN",
            body: csr("*.example.internal", &[], &psk),
            content_type: None,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_hostname",
        },
        Case {
            name: "wildcard SAN",
            body: csr(HOST, &["*.example.internal"], &psk),
            content_type: None,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_hostname",
        },
        Case {
            name: "RSA-1024",
            body: fixture("rsa1024.der"),
            content_type: Some("application/pkcs10"),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "key_not_allowed",
        },
        Case {
            name: "unsupported curve secp256k1",
            body: fixture("secp256k1.der"),
            content_type: Some("application/pkcs10"),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "key_not_allowed",
        },
        Case {
            name: "unsupported curve P-521",
            body: fixture("p521.der"),
            content_type: Some("application/pkcs10"),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "key_not_allowed",
        },
        Case {
            name: "SHA-1 signature",
            body: fixture("rsa2048-sha1.der"),
            content_type: Some("application/pkcs10"),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "signature_algorithm_not_allowed",
        },
        Case {
            name: "bad self-signature",
            body: tampered,
            content_type: Some("application/pkcs10"),
            status: StatusCode::BAD_REQUEST,
            code: "bad_signature",
        },
        Case {
            name: "garbage",
            body: b"this is not a certificate request".to_vec(),
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "malformed_csr",
        },
        Case {
            name: "truncated DER",
            body: good_der[..good_der.len() - 20].to_vec(),
            content_type: Some("application/pkcs10"),
            status: StatusCode::BAD_REQUEST,
            code: "malformed_csr",
        },
        Case {
            name: "trailing bytes",
            body: [good_der.clone(), b"xx".to_vec()].concat(),
            content_type: Some("application/pkcs10"),
            status: StatusCode::BAD_REQUEST,
            code: "malformed_csr",
        },
        Case {
            name: "empty body",
            body: vec![],
            content_type: None,
            status: StatusCode::BAD_REQUEST,
            code: "empty_body",
        },
        Case {
            name: "body over 64 KiB",
            body: vec![b'A'; 64 * 1024 + 1],
            content_type: None,
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "body_too_large",
        },
        Case {
            name: "JSON content type",
            body: csr(HOST, &[], &psk),
            content_type: Some("application/json"),
            status: StatusCode::BAD_REQUEST,
            code: "unsupported_content_type",
        },
    ];

    let client = server.client();
    block_on(async {
        for case in &cases {
            let reply = client
                .send(
                    Method::POST,
                    "/v1/sign",
                    case.content_type,
                    Bytes::from(case.body.clone()),
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            assert_eq!(
                reply.status,
                case.status,
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(error_code(&reply), case.code, "{}", case.name);
            let health = client
                .send(Method::GET, "/healthz", None, Bytes::new())
                .await
                .unwrap();
            assert_eq!(
                health.status,
                StatusCode::OK,
                "unhealthy after {}",
                case.name
            );
        }
        // Nothing was consumed: both PSKs still work.
        let ok = client
            .send(
                Method::POST,
                "/v1/sign",
                None,
                Bytes::from(csr(HOST, &["www.example.internal"], &psk)),
            )
            .await
            .unwrap();
        assert_eq!(
            ok.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&ok.body)
        );
        let ok = client
            .send(
                Method::POST,
                "/v1/sign",
                None,
                Bytes::from(csr("other.example.internal", &[], &other_psk)),
            )
            .await
            .unwrap();
        assert_eq!(ok.status, StatusCode::CREATED);
        // Reuse after success, with a new key: 403 like any unknown PSK.
        let reused = client
            .send(
                Method::POST,
                "/v1/sign",
                None,
                Bytes::from(csr(HOST, &[], &psk)),
            )
            .await
            .unwrap();
        assert_eq!(reused.status, StatusCode::FORBIDDEN);
        assert_eq!(error_code(&reused), "psk_rejected");
    });
    assert_eq!(server.certs_of(HOST).len(), 1);

    // The audit log has the precise reasons the client never saw.
    let audit = run_ok(server.cli().args(["audit", "--since", "1h"]));
    for reason in [
        "psk_wrong",
        "psk_unknown_host",
        "psk_missing",
        "psk_used",
        "name_not_allowed",
        "invalid_hostname",
        "key_not_allowed",
        "bad_signature",
        "malformed_csr",
    ] {
        assert!(audit.contains(reason), "audit lacks {reason}:\n{audit}");
    }
    server.assert_no_secret_leaks();
}

#[test]
fn an_expired_psk_is_refused_and_burned() {
    let mut server = CaServer::start();
    let psk = server.psk_add("exp.example.internal", &["--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let client = server.client();
    block_on(async {
        let reply = client
            .send(
                Method::POST,
                "/v1/sign",
                None,
                Bytes::from(csr("exp.example.internal", &[], &psk)),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(error_code(&reply), "psk_rejected");
    });
    assert!(
        !run_ok(server.cli().args(["psk", "list"])).contains("exp.example.internal"),
        "burned"
    );
    assert!(run_ok(server.cli().args(["audit"])).contains("psk_expired"));
    assert!(server.certs_of("exp.example.internal").is_empty());
    server.assert_no_secret_leaks();
}

#[test]
fn unknown_paths_and_methods_get_json_errors() {
    let server = CaServer::start();
    let client = server.client();
    block_on(async {
        for (method, path, status, code) in [
            (
                Method::GET,
                "/v1/sign",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::PUT,
                "/v1/sign",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                Method::POST,
                "/v1/sign/",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                Method::POST,
                "//v1/sign",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (Method::GET, "/nope", StatusCode::NOT_FOUND, "not_found"),
        ] {
            let reply = client
                .send(method.clone(), path, None, Bytes::new())
                .await
                .unwrap();
            assert_eq!(reply.status, status, "{method} {path}");
            assert_eq!(error_code(&reply), code, "{method} {path}");
        }
        let ca = client
            .send(Method::GET, "/v1/ca", None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(ca.status, StatusCode::OK);
        assert_eq!(
            String::from_utf8_lossy(&ca.body)
                .matches("BEGIN CERTIFICATE")
                .count(),
            2
        );
    });
}
