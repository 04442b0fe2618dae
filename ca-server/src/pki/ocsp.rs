//! The OCSP responder's DER (RFC 6960): decoding requests strictly,
//! encoding responses and signing them with the delegated responder key
//! (ECDSA P-256 / SHA-256, through ring), and wrapping that key for the store.
//!
//! Requests: exactly one CertID per request (more is `malformedRequest`;
//! docs/revocation.md), an optional nonce of 1 to 32 octets (RFC 8954),
//! anything else in the request (requestorName, a signature, per-request
//! extensions) is ignored, as RFC 6960 allows for an unsigned-request responder.

use anyhow::{Context, Result, anyhow, bail};
use proto::ocsp::der::{self, Reader};
use proto::ocsp::{CertId, CertStatus, OID_ECDSA_SHA256, OID_OCSP_BASIC, OID_OCSP_NONCE};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use zeroize::Zeroizing;

/// Largest request body the responder reads.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest nonce accepted (RFC 8954 section 2.1).
pub const MAX_NONCE: usize = 32;

/// One decoded request.
#[derive(Debug, Clone)]
pub struct OcspRequest {
    pub cert_id: CertId,
    /// The CertID exactly as sent: echoed in the response and the cache key.
    pub cert_id_der: Vec<u8>,
    /// The nonce extension's extnValue, echoed verbatim.
    pub nonce: Option<Vec<u8>>,
}

/// Why a request is `malformedRequest`.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("malformed OCSP request: {0}")]
    Malformed(String),
    #[error("OCSP request lists {0} certificates; this responder answers one per request")]
    TooMany(usize),
}

fn malformed(e: impl std::fmt::Display) -> RequestError {
    RequestError::Malformed(e.to_string())
}

/// Decodes an OCSPRequest.
pub fn decode_request(data: &[u8]) -> Result<OcspRequest, RequestError> {
    if data.len() > MAX_REQUEST {
        return Err(malformed("request larger than 64 KiB"));
    }
    let outer = der::single(data, der::SEQUENCE).map_err(malformed)?;
    let mut r = Reader::new(outer.content);
    let tbs = r.expect(der::SEQUENCE).map_err(malformed)?;
    r.optional(der::ctx(0)).map_err(malformed)?; // optionalSignature: not checked
    r.finish().map_err(malformed)?;

    let mut t = Reader::new(tbs.content);
    if let Some(v) = t.optional(der::ctx(0)).map_err(malformed)? {
        let v = der::single(v.content, der::INTEGER).map_err(malformed)?;
        if v.content != [0] {
            return Err(malformed("unsupported request version"));
        }
    }
    t.optional(der::ctx(1)).map_err(malformed)?; // requestorName
    let list = t.expect(der::SEQUENCE).map_err(malformed)?;
    let mut nonce = None;
    if let Some(exts) = t.optional(der::ctx(2)).map_err(malformed)? {
        for (oid, value) in proto::ocsp::extensions(exts.content).map_err(malformed)? {
            if oid == OID_OCSP_NONCE {
                if nonce.is_some() {
                    return Err(malformed("two nonce extensions"));
                }
                let n = der::single(value, der::OCTET_STRING).map_err(malformed)?;
                if n.content.is_empty() || n.content.len() > MAX_NONCE {
                    return Err(malformed("nonce must be 1 to 32 octets"));
                }
                nonce = Some(value.to_vec());
            }
        }
    }
    t.finish().map_err(malformed)?;

    let mut l = Reader::new(list.content);
    let mut requests = Vec::new();
    while !l.is_empty() {
        requests.push(l.expect(der::SEQUENCE).map_err(malformed)?);
        if requests.len() > 1 {
            // Count the rest for the message, without decoding them.
            let mut more = 2;
            while !l.is_empty() {
                l.any().map_err(malformed)?;
                more += 1;
            }
            return Err(RequestError::TooMany(more));
        }
    }
    let Some(one) = requests.first() else {
        return Err(malformed("empty request list"));
    };
    let mut q = Reader::new(one.content);
    let id = q.expect(der::SEQUENCE).map_err(malformed)?;
    q.optional(der::ctx(0)).map_err(malformed)?; // singleRequestExtensions
    q.finish().map_err(malformed)?;
    Ok(OcspRequest {
        cert_id: CertId::parse(id.content).map_err(malformed)?,
        cert_id_der: id.raw.to_vec(),
        nonce,
    })
}

/// The delegated responder: its key (ring) and certificate.
pub struct ResponderKey {
    key: EcdsaKeyPair,
    pub cert_der: Vec<u8>,
    /// The issuing intermediate, sent after the responder certificate so
    /// that relying parties can build its chain to the root.
    issuer_der: Vec<u8>,
    /// SHA-1 of the responder's public key: the ResponderID byKey.
    key_hash: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    rng: SystemRandom,
}

impl std::fmt::Debug for ResponderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponderKey")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl ResponderKey {
    /// From the key's PKCS#8 and the certificate, which must carry that key,
    /// and the intermediate that issued it.
    pub fn new(pkcs8: &[u8], cert_der: Vec<u8>, issuer_der: Vec<u8>) -> Result<ResponderKey> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
            .map_err(|_| anyhow!("the OCSP responder key is not a P-256 PKCS#8 key"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| anyhow!("parsing the OCSP responder certificate: {e}"))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key().as_ref() {
            bail!("the OCSP responder key does not belong to its certificate");
        }
        let v = cert.validity();
        let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
        drop(cert);
        Ok(ResponderKey {
            key_hash: ring::digest::digest(
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                key.public_key().as_ref(),
            )
            .as_ref()
            .to_vec(),
            key,
            cert_der,
            issuer_der,
            not_before,
            not_after,
            rng,
        })
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        Ok(self
            .key
            .sign(&self.rng, msg)
            .map_err(|_| anyhow!("signing the OCSP response failed"))?
            .as_ref()
            .to_vec())
    }
}

/// What one response says.
#[derive(Debug, Clone)]
pub struct ResponseFields<'a> {
    pub cert_id_der: &'a [u8],
    pub status: &'a CertStatus,
    pub produced_at: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub nonce: Option<&'a [u8]>,
}

/// A successful, signed OCSPResponse.
pub fn encode_response(key: &ResponderKey, f: &ResponseFields<'_>) -> Result<Vec<u8>> {
    use der::*;
    let status = match f.status {
        CertStatus::Good => vec![0x80, 0x00],
        CertStatus::Unknown => vec![0x82, 0x00],
        CertStatus::Revoked { at, reason } => {
            let mut info = generalized_time(*at);
            if let Some(r) = reason {
                info.extend(cons(ctx(0), &[&tlv(ENUMERATED, &[*r])]));
            }
            tlv(0xa1, &info)
        }
    };
    let single = seq(&[
        f.cert_id_der,
        &status,
        &generalized_time(f.this_update),
        &cons(ctx(0), &[&generalized_time(f.next_update)]),
    ]);
    let responder_id = cons(ctx(2), &[&tlv(OCTET_STRING, &key.key_hash)]);
    let mut tbs_parts: Vec<Vec<u8>> = vec![
        responder_id,
        generalized_time(f.produced_at),
        seq(&[&single]),
    ];
    if let Some(n) = f.nonce {
        let ext = seq(&[&tlv(OID, OID_OCSP_NONCE), &tlv(OCTET_STRING, n)]);
        tbs_parts.push(cons(ctx(1), &[&seq(&[&ext])]));
    }
    let tbs = tlv(SEQUENCE, &tbs_parts.concat());
    let sig = key.sign(&tbs)?;
    let mut bits = vec![0u8];
    bits.extend_from_slice(&sig);
    let basic = seq(&[
        &tbs,
        &seq(&[&tlv(OID, OID_ECDSA_SHA256)]),
        &tlv(BIT_STRING, &bits),
        &cons(ctx(0), &[&seq(&[&key.cert_der, &key.issuer_der])]),
    ]);
    Ok(seq(&[
        &tlv(ENUMERATED, &[0]),
        &cons(
            ctx(0),
            &[&seq(&[
                &tlv(OID, OID_OCSP_BASIC),
                &tlv(OCTET_STRING, &basic),
            ])],
        ),
    ]))
}

/// The CRLReason code of a stored reason name (none for `unspecified`).
pub fn reason_code(name: Option<&str>) -> Option<u8> {
    name.and_then(crate::pki::crl::parse_reason)
        .map(|r| r as u8)
}

/// The key that wraps the responder key in the store: HKDF-SHA256 over the
/// intermediate's private key, so a copy of the store alone opens nothing.
#[derive(Clone)]
pub struct WrapKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for WrapKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapKey(..)")
    }
}

const WRAP_SALT: &[u8] = b"ca-server ocsp responder key wrap v1";

impl WrapKey {
    /// Derived from the intermediate key's PKCS#8 bytes.
    pub fn derive(intermediate_pkcs8: &[u8]) -> WrapKey {
        struct Len32;
        impl ring::hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk =
            ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, WRAP_SALT).extract(intermediate_pkcs8);
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"ocsp-responder-key"], Len32)
            .and_then(|okm| okm.fill(&mut out[..]))
            .expect("HKDF output of 32 bytes");
        WrapKey(out)
    }

    fn aead(&self) -> ring::aead::LessSafeKey {
        ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &self.0[..])
                .expect("AES-256 key of 32 bytes"),
        )
    }

    /// nonce || AES-256-GCM(key), bound to the responder certificate.
    pub fn wrap(&self, pkcs8: &[u8], cert_der: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; 12];
        ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut nonce)
            .map_err(|_| anyhow!("CSPRNG failure"))?;
        let mut buf = pkcs8.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(cert_der),
                &mut buf,
            )
            .map_err(|_| anyhow!("wrapping the OCSP responder key failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(out)
    }

    /// The PKCS#8 key, if `wrapped` was made by this key for `cert_der`.
    pub fn unwrap(&self, wrapped: &[u8], cert_der: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if wrapped.len() < 12 + 16 {
            bail!("wrapped OCSP responder key too short");
        }
        let nonce: [u8; 12] = wrapped[..12].try_into().expect("12 bytes");
        let mut buf = Zeroizing::new(wrapped[12..].to_vec());
        let len = self
            .aead()
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(cert_der),
                &mut buf,
            )
            .map_err(|_| {
                anyhow!("the stored OCSP responder key does not open with this intermediate's key")
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Generates a responder key: PKCS#8 bytes and the SPKI DER.
pub fn generate_key() -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow!("generating the OCSP responder key failed"))?;
    let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
        .map_err(|_| anyhow!("reading the new OCSP responder key failed"))?;
    // SubjectPublicKeyInfo for id-ecPublicKey / prime256v1.
    let spki = der::seq(&[
        &der::seq(&[
            &der::tlv(der::OID, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
            &der::tlv(der::OID, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
        ]),
        &der::tlv(
            der::BIT_STRING,
            &[&[0u8][..], kp.public_key().as_ref()].concat(),
        ),
    ]);
    Ok((pkcs8, spki))
}

/// Decodes a base64 OCSP GET path segment (RFC 6960 A.1: URL-encoded
/// standard base64; some clients send it unencoded or URL-safe).
pub fn decode_get_path(segment: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let decoded = percent_decode(segment).context("bad percent-encoding")?;
    let text = decoded.trim();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| anyhow!("the request in the path is not base64"))
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1..i + 3).context("truncated %-escape")?;
            let h = std::str::from_utf8(h)?;
            out.push(u8::from_str_radix(h, 16)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ocsp::{CertIdHash, IssuerKeys, encode_request};

    fn issuer() -> IssuerKeys {
        IssuerKeys {
            name_der: vec![0x30, 0x00],
            public_key: vec![4; 65],
        }
    }

    #[test]
    fn a_request_decodes_with_its_nonce() {
        let id = CertId::new(CertIdHash::Sha1, &issuer(), &[0x41, 2, 3]);
        let req = decode_request(&encode_request(&id, Some(&[7; 16]))).unwrap();
        assert_eq!(req.cert_id, id);
        assert_eq!(req.cert_id_der, id.to_der());
        assert_eq!(req.nonce.unwrap(), der::tlv(der::OCTET_STRING, &[7; 16]));
    }

    #[test]
    fn hostile_requests_are_malformed() {
        assert!(decode_request(b"garbage").is_err());
        assert!(decode_request(&[]).is_err());
        let id = CertId::new(CertIdHash::Sha1, &issuer(), &[1]);
        let one = der::seq(&[&id.to_der()]);
        let many: Vec<&[u8]> = std::iter::repeat_n(one.as_slice(), 100).collect();
        let req = der::seq(&[&der::seq(&[&der::seq(&many)])]);
        assert!(matches!(
            decode_request(&req),
            Err(RequestError::TooMany(100))
        ));
        let empty = der::seq(&[&der::seq(&[&der::seq(&[])])]);
        assert!(decode_request(&empty).is_err());
        let long_nonce = encode_request(&id, Some(&[1; 33]));
        assert!(decode_request(&long_nonce).is_err());
        let mut trailing = encode_request(&id, None);
        trailing.push(0);
        assert!(decode_request(&trailing).is_err());
    }

    #[test]
    fn wrapped_keys_open_only_with_the_same_intermediate_and_certificate() {
        let w = WrapKey::derive(b"intermediate pkcs8");
        let other = WrapKey::derive(b"another intermediate");
        let wrapped = w.wrap(b"secret key", b"cert").unwrap();
        assert_eq!(&w.unwrap(&wrapped, b"cert").unwrap()[..], b"secret key");
        assert!(other.unwrap(&wrapped, b"cert").is_err());
        assert!(w.unwrap(&wrapped, b"other cert").is_err());
    }

    #[test]
    fn get_paths_decode_url_encoded_base64() {
        assert_eq!(decode_get_path("MAM%3D").unwrap(), vec![0x30, 0x03]);
        assert_eq!(decode_get_path("MAM=").unwrap(), vec![0x30, 0x03]);
        assert!(decode_get_path("!!!").is_err());
        assert!(decode_get_path("%zz").is_err());
    }
}
