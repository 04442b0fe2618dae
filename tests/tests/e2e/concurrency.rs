//! One PSK, many simultaneous redemptions: exactly one certificate.

use bytes::Bytes;
use ca_client::keys::{HostKey, KeyType};
use ca_tests::*;
use http::{Method, StatusCode};
use policy::Psk;

const HOST: &str = "race.example.internal";

fn csr(psk: &str) -> Bytes {
    let key = HostKey::generate(KeyType::P256).unwrap();
    Bytes::from(
        key.csr_pem(HOST, &[], Some(&Psk::new(psk.into()).unwrap()))
            .unwrap()
            .as_bytes()
            .to_vec(),
    )
}

#[test]
fn fifty_concurrent_requests_with_one_psk_yield_exactly_one_certificate() {
    // 49 losers are 49 PSK failures from 127.0.0.1: with the default throttle
    // (10 per window) later ones would be refused with 429 before reaching the
    // race. Raise the limit so that all 50 race for the PSK (throttling has
    // its own tests in hostile.rs).
    let mut server = CaServer::start_with(ServerOptions {
        args: vec!["--throttle-failures".into(), "100".into()],
        ..Default::default()
    });
    let psk = server.psk_add(HOST, &[]);
    let client = server.client();
    // 50 different keys: one wins, 49 are told the PSK is spent.
    let bodies: Vec<Bytes> = (0..50).map(|_| csr(&psk)).collect();
    let statuses = block_on(async {
        let tasks: Vec<_> = bodies
            .into_iter()
            .map(|body| {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .send(Method::POST, "/v1/sign", None, body)
                        .await
                        .unwrap()
                        .status
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::FORBIDDEN)
            .count(),
        49,
        "{statuses:?}"
    );
    assert_eq!(server.certs_of(HOST).len(), 1);
    server.assert_no_secret_leaks();
}

#[test]
fn fifty_concurrent_retries_of_one_csr_all_get_the_same_certificate() {
    let mut server = CaServer::start();
    let psk = server.psk_add(HOST, &[]);
    let client = server.client();
    let body = csr(&psk);
    let replies = block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (client, body) = (client.clone(), body.clone());
                tokio::spawn(async move {
                    client
                        .send(Method::POST, "/v1/sign", None, body)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let replayed = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!((created, replayed), (1, 49));
    let serials: std::collections::HashSet<_> = replies
        .iter()
        .map(|r| {
            r.headers["x-certificate-serial"]
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(serials.len(), 1, "every answer carries the one certificate");
    assert_eq!(server.certs_of(HOST).len(), 1);
}
