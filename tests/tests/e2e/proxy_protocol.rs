//! `serve --proxy-protocol-from`: behind a load balancer, the PROXY header
//! names the client, so the per-address throttle and the audit log see the
//! real host, not the balancer; nobody else can claim an address.

use ca_client::keys::{HostKey, KeyType};
use ca_tests::raw::{Seen, read_outcome, sign_request, tcp_from, tls_config};
use ca_tests::*;
use std::net::SocketAddrV4;
use tokio::io::AsyncWriteExt;

const HOST: &str = "proxied.example.internal";

/// A PROXY protocol v2 header for a TCP4 connection from `src`.
fn v2_header(src: SocketAddrV4) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0x00, 12]);
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&8443u16.to_be_bytes());
    h
}

/// Sends `request` from the loopback address `from`, after `header` if any.
async fn send(server: &CaServer, from: &str, header: Option<Vec<u8>>, request: &[u8]) -> Seen {
    let mut tcp = tcp_from(server, from).await;
    if let Some(h) = header {
        tcp.write_all(&h).await.unwrap();
    }
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(tls_config(server, &[b"http/1.1"]))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
    else {
        return Seen::Closed;
    };
    if tls.write_all(request).await.is_err() {
        return Seen::Closed;
    }
    read_outcome(&mut tls).await
}

#[test]
fn a_trusted_proxy_names_the_client_for_the_throttle_and_the_audit_log() {
    let mut server = CaServer::start_with(ServerOptions {
        args: [
            "--proxy-protocol-from",
            "127.0.0.1",
            "--throttle-failures",
            "3",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    });
    let psk = server.psk_add(HOST, &[]);
    let wrong = "w".repeat(43);
    server.remember_secret(&wrong);
    let key = HostKey::generate(KeyType::P256).unwrap();
    let bad = sign_request(
        key.csr_pem(HOST, &[], Some(&policy::Psk::new(wrong).unwrap()))
            .unwrap()
            .as_bytes(),
        &[],
    );
    let good = sign_request(
        key.csr_pem(HOST, &[], Some(&policy::Psk::new(psk).unwrap()))
            .unwrap()
            .as_bytes(),
        &[],
    );
    let client = |last: u8, port: u16| {
        Some(v2_header(SocketAddrV4::new(
            [10, 20, 30, last].into(),
            port,
        )))
    };
    let rejected = Seen::Http(403, Some("psk_rejected".into()));
    block_on(async {
        // Three failures through the proxy for host 10.20.30.40 ...
        for port in 0..3 {
            assert_eq!(
                send(&server, "127.0.0.1", client(40, 5000 + port), &bad).await,
                rejected
            );
        }
        // ... throttle 10.20.30.40 only, not the proxy's other clients.
        assert_eq!(
            send(&server, "127.0.0.1", client(40, 5003), &good).await,
            Seen::Http(429, Some("too_many_failures".into()))
        );
        assert_eq!(
            send(&server, "127.0.0.1", client(41, 6000), &bad).await,
            rejected
        );
        // A client that is not a configured proxy cannot claim an address:
        // its header is not TLS, so the handshake fails.
        assert_eq!(
            send(&server, "127.0.0.2", client(99, 1), &good).await,
            Seen::Closed
        );
        // The proxy must send a header; plain TLS from it is refused.
        assert_eq!(send(&server, "127.0.0.1", None, &good).await, Seen::Closed);
        // Another proxied host redeems the PSK normally.
        assert!(matches!(
            send(&server, "127.0.0.1", client(42, 7000), &good).await,
            Seen::Http(201, _)
        ));
    });
    let audit = run_ok(server.cli().args(["audit", "--since", "1h", "--json"]));
    let peers: Vec<String> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "sign" || v["event"] == "issued")
        .map(|v| v["peer"].as_str().unwrap_or("").to_owned())
        .collect();
    for expected in ["10.20.30.40", "10.20.30.41", "10.20.30.42"] {
        assert!(
            peers.iter().any(|p| p.starts_with(expected)),
            "{expected} not in {peers:?}"
        );
    }
    assert!(
        !peers.iter().any(|p| p.starts_with("127.0.0.1")),
        "{peers:?}"
    );
    server.assert_no_secret_leaks();
}
