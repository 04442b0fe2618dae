//! JWS (RFC 7515, flattened JSON serialization) as ACME uses it: the
//! protected header, account keys from JWKs (ES256, ES384, RS256 with 2048
//! to 8192-bit keys, EdDSA/Ed25519, all verified by ring), RFC 7638
//! thumbprints, and the HMAC of an External Account Binding.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;

/// Why a JWS was not accepted. Messages never carry key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("{0}")]
    Malformed(String),
    #[error("signature algorithm {0} is not supported (ES256, ES384, RS256, EdDSA)")]
    BadAlgorithm(String),
    #[error("the JWS signature does not verify")]
    BadSignature,
}

fn malformed(s: impl Into<String>) -> JwsError {
    JwsError::Malformed(s.into())
}

/// The flattened serialization, as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flattened {
    pub protected: String,
    pub payload: String,
    pub signature: String,
}

/// The protected header fields ACME uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Protected {
    pub alg: String,
    #[serde(default)]
    pub nonce: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub jwk: Option<Value>,
    #[serde(default)]
    pub kid: Option<String>,
}

/// A parsed JWS, signature not yet checked.
#[derive(Debug, Clone)]
pub struct Jws {
    pub header: Protected,
    /// The decoded payload (empty for POST-as-GET).
    pub payload: Vec<u8>,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

pub fn b64(s: &str, what: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed(format!("{what} is not base64url without padding")))
}

impl Jws {
    /// Parses the flattened JSON form (`body`) or a JSON value nested in a payload.
    pub fn parse(body: &[u8]) -> Result<Jws, JwsError> {
        let f: Flattened = serde_json::from_slice(body)
            .map_err(|e| malformed(format!("the body is not a flattened JWS: {e}")))?;
        Jws::from_flattened(&f)
    }

    pub fn from_flattened(f: &Flattened) -> Result<Jws, JwsError> {
        let header_json = b64(&f.protected, "the protected header")?;
        let header: Protected = serde_json::from_slice(&header_json)
            .map_err(|e| malformed(format!("the protected header: {e}")))?;
        let payload = b64(&f.payload, "the payload")?;
        let signature = b64(&f.signature, "the signature")?;
        let mut signing_input = f.protected.as_bytes().to_vec();
        signing_input.push(b'.');
        signing_input.extend_from_slice(f.payload.as_bytes());
        Ok(Jws {
            header,
            payload,
            signing_input,
            signature,
        })
    }

    /// Checks the signature with `key` (the header's `alg` must suit it).
    pub fn verify(&self, key: &AccountKey) -> Result<(), JwsError> {
        key.verify(&self.header.alg, &self.signing_input, &self.signature)
    }

    /// Checks an HMAC signature (EAB: HS256, HS384 or HS512) with `key`.
    pub fn verify_hmac(&self, key: &[u8]) -> Result<(), JwsError> {
        let alg = match self.header.alg.as_str() {
            "HS256" => ring::hmac::HMAC_SHA256,
            "HS384" => ring::hmac::HMAC_SHA384,
            "HS512" => ring::hmac::HMAC_SHA512,
            other => return Err(JwsError::BadAlgorithm(clip(other))),
        };
        ring::hmac::verify(
            &ring::hmac::Key::new(alg, key),
            &self.signing_input,
            &self.signature,
        )
        .map_err(|_| JwsError::BadSignature)
    }
}

/// Untrusted text in a message: short, printable.
pub fn clip(s: &str) -> String {
    policy::hostname::escape_for_display(&s.chars().take(32).collect::<String>())
}

/// An account public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountKey {
    /// P-256 or P-384: the uncompressed point `04 || x || y`.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
    /// Big-endian modulus and exponent, leading zeros stripped.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

fn field<'a>(jwk: &'a Value, name: &str) -> Result<&'a str, JwsError> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("the JWK has no {name}")))
}

fn strip(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

impl AccountKey {
    pub fn from_jwk(jwk: &Value) -> Result<AccountKey, JwsError> {
        match field(jwk, "kty")? {
            "EC" => {
                let (p384, len) = match field(jwk, "crv")? {
                    "P-256" => (false, 32),
                    "P-384" => (true, 48),
                    other => {
                        return Err(malformed(format!(
                            "EC curve {} is not supported (P-256, P-384)",
                            clip(other)
                        )));
                    }
                };
                let x = b64(field(jwk, "x")?, "the JWK's x")?;
                let y = b64(field(jwk, "y")?, "the JWK's y")?;
                if x.len() != len || y.len() != len {
                    return Err(malformed("the JWK's coordinates have the wrong length"));
                }
                let mut point = vec![4];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok(AccountKey::Ec { p384, point })
            }
            "RSA" => {
                let n = strip(b64(field(jwk, "n")?, "the JWK's n")?);
                let e = strip(b64(field(jwk, "e")?, "the JWK's e")?);
                if n.len() < 256 || n.len() > 1024 {
                    return Err(malformed("RSA account keys must have 2048 to 8192 bits"));
                }
                Ok(AccountKey::Rsa { n, e })
            }
            "OKP" => {
                if field(jwk, "crv")? != "Ed25519" {
                    return Err(malformed("OKP keys must be Ed25519"));
                }
                let x = b64(field(jwk, "x")?, "the JWK's x")?;
                if x.len() != 32 {
                    return Err(malformed("an Ed25519 key is 32 bytes"));
                }
                Ok(AccountKey::Ed25519(x))
            }
            other => Err(malformed(format!(
                "key type {} is not supported (EC, RSA, OKP)",
                clip(other)
            ))),
        }
    }

    /// The key as a JWK with its required members only, in RFC 7638 order
    /// (the thumbprint input and the stored form).
    pub fn canonical_jwk(&self) -> String {
        let e = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        match self {
            AccountKey::Ec { p384, point } => {
                let len = (point.len() - 1) / 2;
                format!(
                    r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                    if *p384 { "P-384" } else { "P-256" },
                    e(&point[1..1 + len]),
                    e(&point[1 + len..])
                )
            }
            AccountKey::Rsa { n, e: exp } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, e(exp), e(n))
            }
            AccountKey::Ed25519(x) => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, e(x)),
        }
    }

    /// RFC 7638 thumbprint: SHA-256 of the canonical JWK, base64url.
    pub fn thumbprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, self.canonical_jwk().as_bytes());
        URL_SAFE_NO_PAD.encode(d.as_ref())
    }

    /// The key in a certificate's SubjectPublicKeyInfo, if it is of a kind
    /// an account can hold (revokeCert signed with the certificate's key).
    pub fn from_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Option<AccountKey> {
        use x509_parser::public_key::PublicKey;
        match spki.parsed().ok()? {
            PublicKey::EC(point) => {
                let point = point.data().to_vec();
                match point.len() {
                    65 => Some(AccountKey::Ec { p384: false, point }),
                    97 => Some(AccountKey::Ec { p384: true, point }),
                    _ => None,
                }
            }
            PublicKey::RSA(rsa) => Some(AccountKey::Rsa {
                n: strip(rsa.modulus.to_vec()),
                e: strip(rsa.exponent.to_vec()),
            }),
            _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
                Some(AccountKey::Ed25519(spki.subject_public_key.data.to_vec()))
            }
            _ => None,
        }
    }

    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> Result<(), JwsError> {
        let ok = match (alg, self) {
            ("ES256", AccountKey::Ec { p384: false, point }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(msg, sig)
            }
            ("ES384", AccountKey::Ec { p384: true, point }) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point).verify(msg, sig)
            }
            ("RS256", AccountKey::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig),
            ("EdDSA", AccountKey::Ed25519(x)) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(msg, sig)
            }
            ("ES256" | "ES384" | "RS256" | "EdDSA", _) => {
                return Err(malformed(format!(
                    "alg {alg} does not match the account key's type"
                )));
            }
            (other, _) => return Err(JwsError::BadAlgorithm(clip(other))),
        };
        ok.map_err(|_| JwsError::BadSignature)
    }
}

/// Whether `alg` is an account-key algorithm this server verifies.
pub fn supported_alg(alg: &str) -> bool {
    matches!(alg, "ES256" | "ES384" | "RS256" | "EdDSA")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn es256_jws(header: &Value, payload: &[u8]) -> (Vec<u8>, AccountKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key = AccountKey::Ec {
            p384: false,
            point: kp.public_key().as_ref().to_vec(),
        };
        let p = URL_SAFE_NO_PAD.encode(header.to_string());
        let pl = URL_SAFE_NO_PAD.encode(payload);
        let sig = kp.sign(&rng, format!("{p}.{pl}").as_bytes()).unwrap();
        let body = serde_json::json!({
            "protected": p, "payload": pl, "signature": URL_SAFE_NO_PAD.encode(sig.as_ref())
        });
        (body.to_string().into_bytes(), key)
    }

    #[test]
    fn es256_verifies_and_a_flipped_bit_or_another_alg_does_not() {
        let (body, key) = es256_jws(
            &serde_json::json!({"alg": "ES256", "nonce": "n", "url": "u"}),
            b"{}",
        );
        let jws = Jws::parse(&body).unwrap();
        jws.verify(&key).unwrap();
        let parsed =
            AccountKey::from_jwk(&serde_json::from_str(&key.canonical_jwk()).unwrap()).unwrap();
        assert_eq!(parsed, key);
        let mut bad = jws.clone();
        bad.signature[3] ^= 1;
        assert_eq!(bad.verify(&key), Err(JwsError::BadSignature));
        let mut none = jws.clone();
        none.header.alg = "none".into();
        assert!(matches!(none.verify(&key), Err(JwsError::BadAlgorithm(_))));
        let mut hs = jws;
        hs.header.alg = "RS256".into();
        assert!(matches!(hs.verify(&key), Err(JwsError::Malformed(_))));
    }

    #[test]
    fn es384_and_eddsa_keys_verify_through_their_jwks() {
        use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, Ed25519KeyPair};
        let rng = SystemRandom::new();
        let msg = b"protected.payload";
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = kp.public_key().as_ref();
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-384",
            "x": URL_SAFE_NO_PAD.encode(&point[1..49]), "y": URL_SAFE_NO_PAD.encode(&point[49..])});
        let key = AccountKey::from_jwk(&jwk).unwrap();
        let sig = kp.sign(&rng, msg).unwrap();
        key.verify("ES384", msg, sig.as_ref()).unwrap();
        assert!(key.verify("ES256", msg, sig.as_ref()).is_err());

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref())});
        let key = AccountKey::from_jwk(&jwk).unwrap();
        key.verify("EdDSA", msg, kp.sign(msg).as_ref()).unwrap();
        assert_eq!(
            key.verify("EdDSA", b"other", kp.sign(msg).as_ref()),
            Err(JwsError::BadSignature)
        );
        // RSA under 2048 bits is refused at the JWK already.
        let small = serde_json::json!({"kty": "RSA", "e": "AQAB", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128])});
        assert!(matches!(
            AccountKey::from_jwk(&small),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn thumbprint_matches_rfc_7638_example() {
        // RFC 7638 §3.1.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let key = AccountKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            key.thumbprint(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn eab_hmac_verifies_only_with_its_key() {
        let key = b"0123456789abcdef0123456789abcdef";
        let p = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"h","url":"u"}"#);
        let pl = URL_SAFE_NO_PAD.encode("{}");
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            format!("{p}.{pl}").as_bytes(),
        );
        let body = serde_json::json!({"protected": p, "payload": pl, "signature": URL_SAFE_NO_PAD.encode(tag.as_ref())});
        let jws = Jws::parse(body.to_string().as_bytes()).unwrap();
        jws.verify_hmac(key).unwrap();
        assert_eq!(jws.verify_hmac(b"another key"), Err(JwsError::BadSignature));
    }
}
