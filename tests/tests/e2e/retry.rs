//! A client whose response is lost recovers its certificate by retrying with
//! the same key; a different key with the spent PSK is refused.

use ca_tests::*;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const HOST: &str = "lost.example.internal";

#[test]
fn a_lost_response_is_recovered_by_the_idempotent_retry() {
    if !require_tool("openssl") {
        return;
    }
    let mut server = CaServer::start();
    let psk = server.psk_add(HOST, &[]);
    let work = tempfile::tempdir().unwrap();
    let key = openssl_key(work.path(), "key.pem", "ec:P-256").unwrap();
    let csr = openssl_csr(&key, HOST, Some(&psk), &[]).unwrap();

    // Send the request over raw TLS; once the server has committed, hang up
    // without reading the answer: the response is lost.
    let root = pem::parse(read(&server.root_pem()))
        .unwrap()
        .into_contents();
    let config = Arc::new(ca_client::trust::pinned_client_config(&root, None).unwrap());
    let port = server.port;
    let server_ref = &server;
    let recorded = block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let mut req = Vec::new();
        write!(
            req,
            "POST /v1/sign HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/pkcs10\r\nContent-Length: {}\r\n\r\n",
            csr.len()
        )
        .unwrap();
        req.extend_from_slice(&csr);
        tls.write_all(&req).await.unwrap();
        tls.flush().await.unwrap();
        let recorded = wait_for(
            Duration::from_secs(10),
            "the certificate to be recorded",
            || server_ref.certs_of(HOST).into_iter().next(),
        );
        drop(tls);
        recorded
    });
    let serial = recorded["serial"].as_str().unwrap().to_owned();

    // The host retries with the same key: it gets the recorded certificate.
    server.assert_retry_recovers(HOST, &psk, &key, &serial);
    assert_eq!(server.certs_of(HOST).len(), 1);

    // Another key with the spent PSK: refused (exit code 4), nothing issued.
    let psk_file = write_file(work.path(), "psk2", &psk);
    let out = run(&mut server.bootstrap_cmd(HOST, &psk_file, &work.path().join("other")));
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(server.certs_of(HOST).len(), 1);
    server.assert_no_secret_leaks();
}

#[test]
fn an_interrupted_bootstrap_resumes_with_its_pending_key() {
    // The first attempt dies after saving its key but before any answer (the
    // server is stopped); a second run later reuses that key and succeeds.
    let mut server = CaServer::start();
    let psk = server.psk_add(HOST, &[]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("tls");
    server.stop();
    let psk_file = write_file(work.path(), "psk", &psk);
    let out = run(server
        .bootstrap_cmd(HOST, &psk_file, &dir)
        .args(["--retry-for", "1s"]));
    assert_eq!(out.status.code(), Some(5));
    let pending = read(&dir.join("pending-key.pem"));
    assert!(psk_file.exists());

    server.restart();
    run_ok(&mut server.bootstrap_cmd(HOST, &psk_file, &dir));
    assert_eq!(
        read(&dir.join("key.pem")),
        pending,
        "the pending key became key.pem"
    );
    assert!(!dir.join("pending-key.pem").exists());
    server.assert_no_secret_leaks();
}
