//! A small ACME client for the tests (RFC 8555 with an ES256 account key,
//! signed with ring): enough protocol to create accounts with an External
//! Account Binding, order, finalize and download, and to send the malformed
//! and hostile requests the refusal tests need.

use crate::CaServer;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use ca_client::https::{HttpsClient, Reply};
use http::Method;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

pub const JOSE: &str = "application/jose+json";

/// An ES256 account key.
#[derive(Debug)]
pub struct AccountKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl AccountKey {
    pub fn generate() -> AccountKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        AccountKey { pair, rng }
    }

    /// A P-256 key from its PKCS#8 (a certificate's key, for revokeCert).
    pub fn from_pkcs8(der: &[u8]) -> AccountKey {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng).unwrap();
        AccountKey { pair, rng }
    }

    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "crv": "P-256",
            "kty": "EC",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A flattened JWS of `payload` (`None`: POST-as-GET) under `header`.
    pub fn sign(&self, header: &Value, payload: Option<&[u8]>) -> Value {
        let protected = URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = payload
            .map(|p| URL_SAFE_NO_PAD.encode(p))
            .unwrap_or_default();
        let sig = self
            .pair
            .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
            .unwrap();
        json!({
            "protected": protected,
            "payload": payload,
            "signature": URL_SAFE_NO_PAD.encode(sig.as_ref()),
        })
    }
}

/// The EAB of `key` for `kid` with the HMAC key `hmac_key_b64` (base64url,
/// as clients take `--eab-hmac-key`), for the newAccount `url`.
pub fn eab(key: &AccountKey, kid: &str, hmac_key_b64: &str, url: &str) -> Value {
    let protected =
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": kid, "url": url}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(key.jwk().to_string());
    let raw = URL_SAFE_NO_PAD.decode(hmac_key_b64).unwrap();
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw),
        format!("{protected}.{payload}").as_bytes(),
    );
    json!({"protected": protected, "payload": payload, "signature": URL_SAFE_NO_PAD.encode(tag.as_ref())})
}

/// A client of one server, with one account key.
#[derive(Debug)]
pub struct Client {
    pub http: HttpsClient,
    pub dir: Value,
    pub key: AccountKey,
    /// The account URL once created.
    pub kid: Option<String>,
    nonce: Option<String>,
}

/// The path of an absolute URL.
pub fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("https://").expect("an https URL");
    rest[rest.find('/').unwrap()..].to_owned()
}

impl Client {
    pub async fn new(server: &CaServer) -> Client {
        let http = server.client();
        let reply = http
            .send(Method::GET, "/acme/directory", None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        Client {
            http,
            dir: serde_json::from_slice(&reply.body).unwrap(),
            key: AccountKey::generate(),
            kid: None,
            nonce: None,
        }
    }

    pub fn url(&self, name: &str) -> String {
        self.dir[name].as_str().unwrap().to_owned()
    }

    pub async fn fresh_nonce(&mut self) -> String {
        if let Some(n) = self.nonce.take() {
            return n;
        }
        let reply = self
            .http
            .send(
                Method::HEAD,
                &path_of(&self.url("newNonce")),
                None,
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
        nonce_of(&reply).expect("newNonce gives a Replay-Nonce")
    }

    /// The protected header for `url`: `kid` once there is an account.
    pub async fn header(&mut self, url: &str) -> Value {
        let nonce = self.fresh_nonce().await;
        match &self.kid {
            Some(kid) => json!({"alg": "ES256", "kid": kid, "nonce": nonce, "url": url}),
            None => json!({"alg": "ES256", "jwk": self.key.jwk(), "nonce": nonce, "url": url}),
        }
    }

    /// Sends a raw body to `url`; keeps the answer's nonce.
    pub async fn post_raw(&mut self, url: &str, body: Vec<u8>) -> Reply {
        let reply = self
            .http
            .send(Method::POST, &path_of(url), Some(JOSE), Bytes::from(body))
            .await
            .unwrap();
        self.nonce = nonce_of(&reply);
        reply
    }

    /// A signed POST of `payload` (`None`: POST-as-GET).
    pub async fn post(&mut self, url: &str, payload: Option<&Value>) -> Reply {
        let header = self.header(url).await;
        let bytes = payload.map(|p| p.to_string().into_bytes());
        let jws = self.key.sign(&header, bytes.as_deref());
        self.post_raw(url, jws.to_string().into_bytes()).await
    }

    /// newAccount with the EAB of `host` and `hmac_key`; records the account URL on success.
    pub async fn new_account(&mut self, host: &str, hmac_key: &str) -> Reply {
        let url = self.url("newAccount");
        let binding = eab(&self.key, host, hmac_key, &url);
        let reply = self
            .post(
                &url,
                Some(&json!({"termsOfServiceAgreed": true, "externalAccountBinding": binding})),
            )
            .await;
        if reply.status == 201 || reply.status == 200 {
            self.kid = Some(header(&reply, "location").unwrap());
        }
        reply
    }

    pub async fn new_order(&mut self, names: &[&str]) -> Reply {
        let ids: Vec<Value> = names
            .iter()
            .map(|n| {
                let kind = if n.parse::<std::net::IpAddr>().is_ok() {
                    "ip"
                } else {
                    "dns"
                };
                json!({"type": kind, "value": n})
            })
            .collect();
        let url = self.url("newOrder");
        self.post(&url, Some(&json!({"identifiers": ids}))).await
    }

    /// Orders `names`, finalizes with a fresh P-256 CSR for them, downloads
    /// the chain: (the key, the chain PEM).
    pub async fn issue(&mut self, names: &[&str]) -> (ca_client::keys::HostKey, String) {
        let reply = self.new_order(names).await;
        assert_eq!(
            reply.status,
            201,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let order: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(order["status"], "ready");
        for authz in order["authorizations"].as_array().unwrap() {
            let r = self.post(authz.as_str().unwrap(), None).await;
            let a: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(a["status"], "valid", "authorizations are pre-validated");
        }
        let key = ca_client::keys::HostKey::generate(ca_client::keys::KeyType::P256).unwrap();
        let extra: Vec<String> = names[1..].iter().map(|s| s.to_string()).collect();
        let csr = key.csr_pem(names[0], &extra, None).unwrap();
        let der = pem::parse(csr.as_bytes()).unwrap().into_contents();
        let finalize = order["finalize"].as_str().unwrap().to_owned();
        let reply = self
            .post(
                &finalize,
                Some(&json!({"csr": URL_SAFE_NO_PAD.encode(der)})),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let order: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(order["status"], "valid");
        let cert = order["certificate"].as_str().unwrap().to_owned();
        let reply = self.post(&cert, None).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            header(&reply, "content-type").unwrap(),
            "application/pem-certificate-chain"
        );
        (key, String::from_utf8(reply.body.to_vec()).unwrap())
    }
}

pub fn header(reply: &Reply, name: &str) -> Option<String> {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub fn nonce_of(reply: &Reply) -> Option<String> {
    header(reply, "replay-nonce")
}

/// The ACME error type of a problem document (without the URN prefix),
/// after checking it is one.
pub fn problem(reply: &Reply) -> String {
    assert_eq!(
        header(reply, "content-type").as_deref(),
        Some("application/problem+json"),
        "status {}: {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["status"], reply.status.as_u16());
    v["type"]
        .as_str()
        .unwrap()
        .strip_prefix("urn:ietf:params:acme:error:")
        .unwrap()
        .to_owned()
}
