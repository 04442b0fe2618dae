//! ACME (RFC 8555) with the one-time PSK as External Account Binding: real
//! certbot and lego get certificates that chain to the root, renew without a
//! new PSK and revoke into the CRL; a Rust client (ES256 via ring) sends
//! what stock clients never do, and every refusal is checked by its ACME
//! error type. No PSK appears in a log, audit row or answer.

use ca_tests::acme::{AccountKey, Client, eab, header, nonce_of, path_of, problem};
use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

const HOST: &str = "web1.example.internal";
const OTHER: &str = "web2.example.internal";

/// A server whose throttle never interferes (every client is 127.0.0.1 and
/// these tests fail authentications on purpose).
fn server() -> CaServer {
    CaServer::start_with(ServerOptions {
        args: vec!["--throttle-failures".into(), "1000000".into()],
        ..Default::default()
    })
}

fn openssl_verify(server: &CaServer, cert: &Path) {
    let out = run_ok(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(server.root_pem())
            .arg("-untrusted")
            .arg(server.intermediate_pem())
            .arg(cert),
    );
    assert!(out.trim().ends_with(": OK"), "{out}");
}

fn accounts(server: &CaServer, host: &str) -> Vec<Value> {
    run_ok(
        server
            .cli()
            .args(["acme", "accounts", "--json", "--host", host]),
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect()
}

fn certbot(server: &CaServer, dir: &Path) -> Command {
    let mut cmd = Command::new("certbot");
    cmd.env("REQUESTS_CA_BUNDLE", server.root_pem())
        .arg("--config-dir")
        .arg(dir.join("config"))
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--logs-dir")
        .arg(dir.join("logs"))
        .args(["--non-interactive"]);
    cmd
}

#[test]
fn certbot_gets_a_certificate_with_the_psk_and_renews_without_one() {
    if !require_tool("certbot") || !require_tool("openssl") {
        return;
    }
    let mut server = server();
    let added: Value =
        serde_json::from_str(&run_ok(server.cli().args(["psk", "add", HOST, "--json"]))).unwrap();
    let psk = added["psk"].as_str().unwrap().to_owned();
    server.remember_secret(&psk);
    assert_eq!(added["eab_kid"], HOST);
    assert_eq!(
        added["eab_hmac_key"],
        psk.as_str(),
        "the HMAC key is the PSK as printed"
    );

    let work = tempfile::tempdir().unwrap();
    // The authorizations are valid already: the manual hook (which would
    // fail) is never run, and no port needs to be reachable from the CA.
    let out = run_ok(
        certbot(&server, work.path())
            .args(["certonly", "--server"])
            .arg(format!("{}/acme/directory", server.url))
            // `=`: a base64url key may start with '-', which argparse would
            // take for an option.
            .args([
                "--eab-kid",
                HOST,
                &format!("--eab-hmac-key={psk}"),
                "-d",
                HOST,
            ])
            .args(["--agree-tos", "-m", "ops@example.internal"])
            .args(["--manual", "--manual-auth-hook", "/bin/false"]),
    );
    let live = work.path().join("config/live").join(HOST);
    openssl_verify(&server, &live.join("cert.pem"));
    let text = openssl_text(&live.join("cert.pem"));
    assert!(text.contains(&format!("Subject: CN = {HOST}")), "{text}");
    assert!(text.contains(&format!("DNS:{HOST}")), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "the host profile: {text}"
    );
    assert!(!out.contains(&psk));

    // The PSK is spent by the binding: none left, one account with its grant.
    let psks = run_ok(server.cli().args(["psk", "list"]));
    assert!(!psks.contains(HOST), "{psks}");
    let accts = accounts(&server, HOST);
    assert_eq!(accts.len(), 1, "{accts:?}");
    assert_eq!(accts[0]["status"], "valid");

    // Renewal: a new order by the same account, no PSK.
    run_ok(certbot(&server, work.path()).args([
        "renew",
        "--force-renewal",
        "--no-random-sleep-on-renew",
    ]));
    let archive = work.path().join("config/archive").join(HOST);
    assert!(archive.join("cert2.pem").exists(), "a second certificate");
    openssl_verify(&server, &archive.join("cert2.pem"));
    assert_eq!(server.certs_of(HOST).len(), 2);

    // Audited with host, account key and peer.
    let audit = run_ok(
        server
            .cli()
            .args(["audit", "--since", "1h", "--json", "--host", HOST]),
    );
    let rows: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let thumb = accts[0]["key_thumbprint"].as_str().unwrap();
    for event in ["acme_account", "acme_order", "issued"] {
        let row = rows
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} row: {audit}"));
        assert!(row["reason"].as_str().unwrap().contains(thumb), "{row}");
        assert!(
            row["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{row}"
        );
    }
    server.assert_no_secret_leaks();
}

#[test]
fn lego_gets_a_certificate_and_revokes_it_into_the_crl() {
    if !require_tool("lego") || !require_tool("openssl") {
        return;
    }
    let mut server = server();
    let psk = server.psk_add(HOST, &["--san", "alias.example.internal"]);
    let work = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lego = |verb: &str, hmac: &str, domains: &[&str]| {
        let mut cmd = Command::new("lego");
        cmd.env("LEGO_CA_CERTIFICATES", server.root_pem())
            .arg("--server")
            .arg(format!("{}/acme/directory", server.url))
            .args(["--accept-tos", "--email", "ops@example.internal", "--path"])
            .arg(work.path())
            .args(["--eab", "--kid", HOST, &format!("--hmac={hmac}")])
            .args(domains.iter().flat_map(|d| ["--domains", d]))
            // Never started: the authorizations are valid already.
            .args(["--http", "--http.port", &format!("127.0.0.1:{port}")])
            .arg(verb);
        cmd
    };
    run_ok(&mut lego("run", &psk, &[HOST, "alias.example.internal"]));
    let cert = work.path().join("certificates").join(format!("{HOST}.crt"));
    let text = openssl_text(&cert);
    assert!(text.contains("DNS:alias.example.internal"), "{text}");
    // lego's .crt is the chain; openssl verify reads the leaf.
    openssl_verify(&server, &cert);
    let serial = x509_parser::pem::parse_x509_pem(&read(&cert))
        .unwrap()
        .1
        .parse_x509()
        .unwrap()
        .raw_serial()
        .to_vec();
    let serial = hex::encode(serial);

    // lego insists on --eab for any command against a CA that requires it;
    // the account exists, so the HMAC given here is never used.
    // (`lego revoke` names the certificate by its first domain.)
    run_ok(&mut lego("revoke", "AAAA", &[HOST]));
    let crl = block_on(server.client().send(
        http::Method::GET,
        "/v1/crl",
        None,
        bytes::Bytes::new(),
    ))
    .unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&crl.body).unwrap();
    assert!(
        crl.iter_revoked_certificates()
            .any(|r| hex::encode(r.raw_serial()) == serial),
        "the revoked certificate is in the CRL"
    );
    let audit = run_ok(
        server
            .cli()
            .args(["audit", "--since", "1h", "--event", "acme_revoke"]),
    );
    assert!(audit.contains(&serial), "{audit}");
    server.assert_no_secret_leaks();
}

/// The refusals, each with its ACME error type, through the Rust client.
#[test]
fn refusals_carry_their_acme_error_types() {
    let mut server = server();
    let psk = server.psk_add(HOST, &[]);
    let other_psk = server.psk_add(OTHER, &[]);
    block_on(async {
        let mut c = Client::new(&server).await;
        assert_eq!(c.dir["meta"]["externalAccountRequired"], true);

        // Without EAB.
        let url = c.url("newAccount");
        let r = c
            .post(&url, Some(&json!({"termsOfServiceAgreed": true})))
            .await;
        assert_eq!(problem(&r), "externalAccountRequired");
        assert!(nonce_of(&r).is_some(), "problems carry a nonce too");
        assert!(header(&r, "link").unwrap().contains("rel=\"index\""));

        // An HMAC key that is not the PSK.
        let wrong = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE";
        server.remember_secret(wrong);
        let r = c.new_account(HOST, wrong).await;
        assert_eq!(problem(&r), "unauthorized");
        assert_eq!(r.status, 403);
        // Host B's PSK under host A's kid: the same.
        let r = c.new_account(HOST, &other_psk).await;
        assert_eq!(problem(&r), "unauthorized");
        // The EAB bound to another key than the account's.
        let stranger = AccountKey::generate();
        let binding = eab(&stranger, HOST, &psk, &url);
        let r = c
            .post(&url, Some(&json!({"externalAccountBinding": binding})))
            .await;
        assert_eq!(problem(&r), "malformed");

        // onlyReturnExisting for a key with no account.
        let r = c
            .post(&url, Some(&json!({"onlyReturnExisting": true})))
            .await;
        assert_eq!(problem(&r), "accountDoesNotExist");

        // The real one: 201, then the same key again: 200, same account.
        let r = c.new_account(HOST, &psk).await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        let kid = c.kid.take().unwrap();
        let again = c
            .post(&url, Some(&json!({"onlyReturnExisting": true})))
            .await;
        c.kid = Some(kid.clone());
        assert_eq!(again.status, 200, "{:?}", again.body);
        assert_eq!(header(&again, "location").as_deref(), Some(kid.as_str()));

        // A spent PSK: another key, the same PSK.
        let mut d = Client::new(&server).await;
        let r = d.new_account(HOST, &psk).await;
        assert_eq!(problem(&r), "unauthorized");

        // Host A's account ordering host B, a wildcard, an IP not granted.
        for names in [&[OTHER][..], &["*.example.internal"], &[HOST, "10.0.0.1"]] {
            let r = c.new_order(names).await;
            assert_eq!(problem(&r), "rejectedIdentifier", "{names:?}");
        }

        // A CSR that names more than the order: badCSR, the order stays ready.
        let r = c.new_order(&[HOST]).await;
        assert_eq!(r.status, 201);
        assert!(header(&r, "location").is_some());
        let order: Value = serde_json::from_slice(&r.body).unwrap();
        let key = ca_client::keys::HostKey::generate(ca_client::keys::KeyType::P256).unwrap();
        let csr = key.csr_pem(HOST, &[OTHER.to_owned()], None).unwrap();
        let der = pem::parse(csr.as_bytes()).unwrap().into_contents();
        let fin = order["finalize"].as_str().unwrap().to_owned();
        let r = c.post(&fin, Some(&json!({"csr": b64(&der)}))).await;
        assert_eq!(problem(&r), "badCSR");
        let order_url = header(&r, "location").unwrap_or_else(|| fin.replace("/finalize", ""));
        let r = c.post(&order_url, None).await;
        let still: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            still["status"], "ready",
            "a refused CSR leaves the order ready"
        );

        // A bad signature: one bit of a valid JWS flipped.
        let new_order = c.url("newOrder");
        let hdr = c.header(&new_order).await;
        let mut jws = c.key.sign(&hdr, Some(br#"{"identifiers":[]}"#));
        let mut sig = jws["signature"].as_str().unwrap().to_owned().into_bytes();
        sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
        jws["signature"] = json!(String::from_utf8(sig).unwrap());
        let r = c.post_raw(&new_order, jws.to_string().into_bytes()).await;
        assert_eq!(problem(&r), "malformed");
        assert!(String::from_utf8_lossy(&r.body).contains("signature"));

        // A wrong url: signed for newOrder, sent to the account URL.
        let hdr = c.header(&new_order).await;
        let jws = c.key.sign(&hdr, None);
        let r = c.post_raw(&kid, jws.to_string().into_bytes()).await;
        assert_eq!(problem(&r), "unauthorized");

        // A stale nonce: one already used.
        let nonce = c.header(&kid).await["nonce"].as_str().unwrap().to_owned();
        let hdr = json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": kid});
        let first = c
            .post_raw(&kid, c.key.sign(&hdr, None).to_string().into_bytes())
            .await;
        assert_eq!(first.status, 200);
        let r = c
            .post_raw(&kid, c.key.sign(&hdr, None).to_string().into_bytes())
            .await;
        assert_eq!(problem(&r), "badNonce");
        assert!(
            nonce_of(&r).is_some(),
            "badNonce carries the nonce to retry with"
        );
        // A made-up one.
        let hdr = json!({"alg": "ES256", "kid": kid, "nonce": "bm90LWEtbm9uY2U", "url": kid});
        let r = c
            .post_raw(&kid, c.key.sign(&hdr, None).to_string().into_bytes())
            .await;
        assert_eq!(problem(&r), "badNonce");

        // An unsupported alg (HS256 with the account's kid, and none).
        for alg in ["HS256", "none"] {
            let mut hdr = c.header(&kid).await;
            hdr["alg"] = json!(alg);
            let r = c
                .post_raw(&kid, c.key.sign(&hdr, None).to_string().into_bytes())
                .await;
            assert_eq!(problem(&r), "badSignatureAlgorithm", "{alg}");
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(
                body["algorithms"],
                json!(["ES256", "ES384", "RS256", "EdDSA"])
            );
        }

        // A 64 KiB JWS.
        let hdr = c.header(&new_order).await;
        let big = json!({"identifiers": [{"type": "dns", "value": "x".repeat(64 * 1024)}]});
        let jws = c.key.sign(&hdr, Some(big.to_string().as_bytes()));
        let r = c.post_raw(&new_order, jws.to_string().into_bytes()).await;
        assert_eq!(r.status, 413);
        assert_eq!(problem(&r), "malformed");

        // Not application/jose+json.
        let r = c
            .http
            .send(
                http::Method::POST,
                &path_of(&new_order),
                Some("application/json"),
                bytes::Bytes::from_static(b"{}"),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 415);
        assert_eq!(problem(&r), "malformed");

        // And the account still works after all that.
        let (_, chain) = c.issue(&[HOST]).await;
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    });
    // The refusals are audited.
    let audit = run_ok(
        server
            .cli()
            .args(["audit", "--since", "1h", "--event", "acme"]),
    );
    assert!(audit.contains("psk_wrong"), "{audit}");
    assert!(audit.contains("psk_used"), "{audit}");
    assert!(audit.contains("bad JWS signature"), "{audit}");
    assert!(audit.contains("not within this account's grant"), "{audit}");
    // Metrics by endpoint and outcome.
    let metrics = block_on(server.client().send(
        http::Method::GET,
        "/metrics",
        None,
        bytes::Bytes::new(),
    ))
    .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();
    for series in [
        r#"ca_acme_requests_total{route="/acme/new-account",outcome="unauthorized"} 3"#,
        r#"ca_acme_requests_total{route="/acme/new-account",outcome="created"} 1"#,
        r#"ca_acme_requests_total{route="/acme/new-order",outcome="rejectedIdentifier"} 3"#,
        r#"ca_acme_requests_total{route="/acme/acct/{id}",outcome="badNonce"} 2"#,
        r#"ca_certificates_issued_total{route="/acme/order/{id}/finalize"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }
    server.assert_no_secret_leaks();
}

/// Failed bindings count against the address like PSK failures on
/// /v1/sign: past the limit, 429 `rateLimited` with Retry-After, before
/// the body is looked at, even with the right PSK.
#[test]
fn failed_bindings_are_throttled() {
    let mut server = CaServer::start_with(ServerOptions {
        args: vec!["--throttle-failures".into(), "3".into()],
        ..Default::default()
    });
    let psk = server.psk_add(HOST, &[]);
    let wrong = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI";
    server.remember_secret(wrong);
    block_on(async {
        let mut c = Client::new(&server).await;
        for _ in 0..3 {
            assert_eq!(problem(&c.new_account(HOST, wrong).await), "unauthorized");
        }
        let r = c.new_account(HOST, &psk).await;
        assert_eq!(problem(&r), "rateLimited");
        assert_eq!(r.status, 429);
        assert!(header(&r, "retry-after").unwrap().parse::<u64>().unwrap() > 0);
    });
    // The PSK was not touched.
    assert!(run_ok(server.cli().args(["psk", "list"])).contains(HOST));
    server.assert_no_secret_leaks();
}

/// Other refusals count too, a quarter each as on /v1/sign: with
/// `--throttle-failures 1`, four malformed requests block the address (the
/// right PSK then gets 429 and stays unspent).
#[test]
fn malformed_requests_are_throttled_like_on_v1_sign() {
    let mut server = CaServer::start_with(ServerOptions {
        args: vec!["--throttle-failures".into(), "1".into()],
        ..Default::default()
    });
    let psk = server.psk_add(HOST, &[]);
    block_on(async {
        let mut c = Client::new(&server).await;
        let url = c.url("newAccount");
        for _ in 0..4 {
            let r = c.post_raw(&url, b"{not a JWS".to_vec()).await;
            assert_eq!(problem(&r), "malformed", "{r:?}");
        }
        let r = c.new_account(HOST, &psk).await;
        assert_eq!(problem(&r), "rateLimited", "{r:?}");
        assert_eq!(r.status, 429);
    });
    // The PSK was not touched.
    assert!(run_ok(server.cli().args(["psk", "list"])).contains(HOST));
    server.assert_no_secret_leaks();
}

#[test]
fn twenty_parallel_redemptions_of_one_psk_make_one_account() {
    let mut server = server();
    let psk = server.psk_add(HOST, &[]);
    let server = std::sync::Arc::new(server);
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let (server, psk) = (server.clone(), psk.clone());
            std::thread::spawn(move || {
                block_on(async {
                    let mut c = Client::new(&server).await;
                    // Every client takes its nonce first, then all go at once.
                    let r = c.new_account(HOST, &psk).await;
                    if r.status == 201 {
                        let (_, chain) = c.issue(&[HOST]).await;
                        Some(chain)
                    } else {
                        assert_eq!(problem(&r), "unauthorized");
                        None
                    }
                })
            })
        })
        .collect();
    let won: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(won.len(), 1, "exactly one redemption wins");
    assert_eq!(accounts(&server, HOST).len(), 1);
    assert_eq!(server.certs_of(HOST).len(), 1);
    server.assert_no_secret_leaks();
}

#[test]
fn key_rollover_deactivation_and_revoke_host() {
    let mut server = server();
    let psk = server.psk_add(HOST, &[]);
    block_on(async {
        let mut c = Client::new(&server).await;
        assert_eq!(c.new_account(HOST, &psk).await.status, 201);
        let kid = c.kid.clone().unwrap();

        // keyChange: the inner JWS signed by the new key, naming the old one.
        let new_key = AccountKey::generate();
        let url = c.url("keyChange");
        let inner = new_key.sign(
            &json!({"alg": "ES256", "jwk": new_key.jwk(), "url": url}),
            Some(
                json!({"account": kid, "oldKey": c.key.jwk()})
                    .to_string()
                    .as_bytes(),
            ),
        );
        let r = c.post(&url, Some(&inner)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // The old key is no longer the account's.
        let r = c.post(&kid, None).await;
        assert_eq!(
            problem(&r),
            "malformed",
            "the old key's signature does not verify"
        );
        let old = std::mem::replace(&mut c.key, new_key);
        let (_, chain) = c.issue(&[HOST]).await;
        assert!(chain.contains("BEGIN CERTIFICATE"));
        // The old key makes no new account either: the PSK is spent.
        let mut d = Client::new(&server).await;
        d.key = old;
        assert_eq!(problem(&d.new_account(HOST, &psk).await), "unauthorized");

        // revokeCert signed with the certificate's own key (no account);
        // a stranger's key is refused, and the account then finds it revoked.
        let (leaf_key, chain) = c.issue(&[HOST]).await;
        let leaf = pem::parse(chain.as_bytes()).unwrap().into_contents();
        let revoke = c.url("revokeCert");
        let mut stranger = Client::new(&server).await;
        let r = stranger
            .post(&revoke, Some(&json!({"certificate": b64(&leaf)})))
            .await;
        assert_eq!(problem(&r), "unauthorized");
        let mut by_key = Client::new(&server).await;
        by_key.key = AccountKey::from_pkcs8(&leaf_key.pkcs8_der());
        let r = by_key
            .post(
                &revoke,
                Some(&json!({"certificate": b64(&leaf), "reason": 4})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = c
            .post(&revoke, Some(&json!({"certificate": b64(&leaf)})))
            .await;
        assert_eq!(problem(&r), "alreadyRevoked");
    });

    // `acme deactivate` ends the account; the next request is refused.
    let id = accounts(&server, HOST)[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_ok(server.cli().args(["acme", "deactivate", &id, "--json"]));
    assert!(out.contains("\"deactivated\""), "{out}");
    let again = run(server.cli().args(["acme", "deactivate", &id]));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already deactivated"));
    assert_eq!(accounts(&server, HOST)[0]["status"], "deactivated");

    // revoke --host deactivates every account of the host.
    let psk2 = server.psk_add(HOST, &[]);
    block_on(async {
        let mut c = Client::new(&server).await;
        assert_eq!(c.new_account(HOST, &psk2).await.status, 201);
        c.issue(&[HOST]).await;
        let kid = c.kid.clone().unwrap();
        let out = run_ok(server.cli().args(["revoke", "--host", HOST]));
        let id = kid.rsplit('/').next().unwrap();
        assert!(
            out.contains(&format!("deactivated ACME account {id}")),
            "{out}"
        );
        let r = c.post(&kid, None).await;
        assert_eq!(problem(&r), "unauthorized");
        assert!(String::from_utf8_lossy(&r.body).contains("deactivated"));
        let r = c.new_order(&[HOST]).await;
        assert_eq!(problem(&r), "unauthorized");
    });
    assert!(
        accounts(&server, HOST)
            .iter()
            .all(|a| a["status"] == "deactivated")
    );
    server.assert_no_secret_leaks();
}

#[test]
fn an_account_created_through_one_replica_orders_through_the_other() {
    if !require_postgres() {
        return;
    }
    let pg = PgCluster::start();
    let mut opts = pg.server_options("ca");
    opts.args
        .extend(["--throttle-failures".into(), "1000000".into()]);
    let mut servers = CaServer::start_replicas(opts, 2);
    let psk = servers[0].psk_add(HOST, &[]);
    block_on(async {
        let mut a = Client::new(&servers[0]).await;
        assert_eq!(a.new_account(HOST, &psk).await.status, 201);
        // The same key through replica B: the account is found by its key
        // and orders there, with B's nonces.
        let mut b = Client::new(&servers[1]).await;
        b.key = std::mem::replace(&mut a.key, AccountKey::generate());
        b.kid = a.kid.clone();
        let (_, chain) = b.issue(&[HOST]).await;
        assert!(chain.contains("BEGIN CERTIFICATE"));
        // A nonce from A is good once, on B too; then stale on both.
        let nonce = a.fresh_nonce().await;
        let kid = b.kid.clone().unwrap();
        let b_acct = format!(
            "{}{}",
            b.url("newAccount").replace("/acme/new-account", ""),
            path_of(&kid)
        );
        let hdr = json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": b_acct});
        let r = b
            .post_raw(&b_acct, b.key.sign(&hdr, None).to_string().into_bytes())
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let r = b
            .post_raw(&b_acct, b.key.sign(&hdr, None).to_string().into_bytes())
            .await;
        assert_eq!(problem(&r), "badNonce");
    });
    assert_eq!(servers[1].certs_of(HOST).len(), 1);
    for s in &mut servers {
        s.remember_secret(&psk);
        s.assert_no_secret_leaks();
    }
    let replica = servers.pop().unwrap();
    drop(replica);
    drop(servers);
    drop(pg);
}

/// The sealed PSKs are only as good as the key they are sealed under: a
/// server or CLI with another `psk-seal.key` than the store's is refused
/// (server) or seals nothing and says so (CLI), never silently diverges.
#[test]
fn a_data_dir_with_another_seal_key_is_refused() {
    let mut server = server();
    let key = server.data_dir.join("psk-seal.key");
    let original = read(&key);
    assert_eq!(original.len(), 32);
    let with_key = run_ok(server.cli().args(["psk", "add", HOST, "--json"]));
    let added: Value = serde_json::from_str(&with_key).unwrap();
    server.remember_secret(added["psk"].as_str().unwrap());
    assert_eq!(added["eab_kid"], HOST);

    server.stop();
    std::fs::write(&key, [7u8; 32]).unwrap();
    // (Under `timeout`: a server that wrongly started would otherwise hang the test.)
    let out = run(Command::new("timeout")
        .arg("30")
        .arg(bin("ca-server"))
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--hostname",
            "localhost",
        ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not the PSK seal key this store's PSKs are sealed with"),
        "{err}"
    );

    let out = run(server.cli().args(["psk", "add", OTHER, "--json"]));
    assert!(out.status.success());
    let added: Value = serde_json::from_slice(&out.stdout).unwrap();
    server.remember_secret(added["psk"].as_str().unwrap());
    assert!(added.get("eab_kid").is_none(), "not sealed: {added}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("will not work for ACME"));

    std::fs::write(&key, &original).unwrap();
    server.restart();
    // That unsealed PSK (like one added before ACME existed) cannot bind an
    // ACME account, and stays unspent for /v1/sign.
    let other_psk = added["psk"].as_str().unwrap().to_owned();
    block_on(async {
        let mut c = Client::new(&server).await;
        assert_eq!(
            problem(&c.new_account(OTHER, &other_psk).await),
            "unauthorized"
        );
    });
    let audit = run_ok(
        server
            .cli()
            .args(["audit", "--since", "1h", "--event", "acme"]),
    );
    assert!(audit.contains("psk_not_sealed"), "{audit}");
    let work = tempfile::tempdir().unwrap();
    let psk_file = write_file(work.path(), "psk", &other_psk);
    run_ok(&mut server.bootstrap_cmd(OTHER, &psk_file, &work.path().join("tls")));
    server.assert_no_secret_leaks();
}

/// An expired PSK binds no account (and is burned).
#[test]
fn an_expired_psk_binds_no_account() {
    let mut server = server();
    let psk = server.psk_add(HOST, &["--ttl", "1s"]);
    // Past the PSK's lifetime (whole seconds: it ends at added + 1).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    block_on(async {
        let mut c = Client::new(&server).await;
        assert_eq!(problem(&c.new_account(HOST, &psk).await), "unauthorized");
    });
    let audit = run_ok(
        server
            .cli()
            .args(["audit", "--since", "1h", "--event", "acme"]),
    );
    assert!(audit.contains("psk_expired"), "{audit}");
    assert!(
        !run_ok(server.cli().args(["psk", "list"])).contains(HOST),
        "burned"
    );
    assert!(accounts(&server, HOST).is_empty());
    server.assert_no_secret_leaks();
}

/// `acme accounts` and `acme deactivate` through the admin API print what
/// the local verbs print, and the remote deactivation is audited with the
/// admin as actor.
#[test]
fn acme_verbs_run_remotely_through_the_admin_api() {
    let mut server = server();
    let psk = server.psk_add(HOST, &[]);
    block_on(async {
        let mut c = Client::new(&server).await;
        assert_eq!(c.new_account(HOST, &psk).await.status, 201);
    });
    let work = tempfile::tempdir().unwrap();
    let admin = work.path().join("admin");
    run_ok(
        server
            .cli()
            .args(["admin-cert", "issue", "spawner", "--out"])
            .arg(&admin),
    );
    let remote = |args: &[&str]| {
        let mut cmd = Command::new(bin("ca-server"));
        cmd.arg("--data-dir")
            .arg(work.path().join("no-data-dir"))
            .args(args)
            .args(["--server", &server.url, "--admin-cert"])
            .arg(&admin);
        cmd
    };
    let local = run_ok(server.cli().args(["acme", "accounts", "--json"]));
    assert_eq!(run_ok(&mut remote(&["acme", "accounts", "--json"])), local);
    assert_eq!(
        run_ok(&mut remote(&["acme", "accounts", "--host", HOST])),
        run_ok(server.cli().args(["acme", "accounts", "--host", HOST]))
    );
    let id = accounts(&server, HOST)[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = run_ok(&mut remote(&["acme", "deactivate", &id]));
    assert!(out.contains("deactivated"), "{out}");
    let missing = run(&mut remote(&["acme", "deactivate", "no-such-account"]));
    assert_eq!(missing.status.code(), Some(3), "not found");
    assert_eq!(accounts(&server, HOST)[0]["status"], "deactivated");
    let audit = run_ok(
        server
            .cli()
            .args(["audit", "--since", "1h", "--event", "acme_account"]),
    );
    assert!(audit.contains("admin:CN=spawner"), "{audit}");
    server.assert_no_secret_leaks();
}

/// `psk batch` PSKs are sealed too: each binds an ACME account.
#[test]
fn psk_batch_psks_bind_acme_accounts() {
    use std::io::Write;
    use std::process::Stdio;
    let mut server = server();
    let mut child = server
        .cli()
        .args(["psk", "batch", "--ttl", "1h"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{HOST}\n{OTHER}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<(String, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (h, p) = l.split_once('\t').unwrap();
            (h.to_owned(), p.to_owned())
        })
        .collect();
    assert_eq!(lines.len(), 2);
    for (_, psk) in &lines {
        server.remember_secret(psk);
    }
    block_on(async {
        for (host, psk) in &lines {
            let mut c = Client::new(&server).await;
            let r = c.new_account(host, psk).await;
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
            c.issue(&[host]).await;
        }
    });
    server.assert_no_secret_leaks();
}
