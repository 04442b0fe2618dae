//! A CSR forge for hostile tests: builds PKCS#10 requests field by field in
//! DER, so tests can send what no well-behaved library would produce
//! (duplicate extensions, two PSKs, PSKs of the wrong ASN.1 type, names with
//! NUL bytes, requested CA extensions, foreign signatures) and still sign
//! them correctly with a real key.

use rcgen::{KeyPair, PublicKeyData, SigningKey};

/// DER tag bytes used below.
pub mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const UTF8: u8 = 0x0c;
    pub const PRINTABLE: u8 = 0x13;
    pub const IA5: u8 = 0x16;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
}

/// A DER TLV with a minimal length.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

pub fn seq(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(tag::SEQUENCE, &items.concat())
}

pub fn set(items: &[Vec<u8>]) -> Vec<u8> {
    tlv(tag::SET, &items.concat())
}

/// An OBJECT IDENTIFIER from its dotted form.
pub fn oid(dotted: &str) -> Vec<u8> {
    let arcs: Vec<u128> = dotted.split('.').map(|a| a.parse().unwrap()).collect();
    let mut body = base128(arcs[0] * 40 + arcs[1]);
    for arc in &arcs[2..] {
        body.extend(base128(*arc));
    }
    tlv(tag::OID, &body)
}

fn base128(mut v: u128) -> Vec<u8> {
    let mut out = vec![(v & 0x7f) as u8];
    v >>= 7;
    while v > 0 {
        out.push(0x80 | (v & 0x7f) as u8);
        v >>= 7;
    }
    out.reverse();
    out
}

/// A requested extension.
#[derive(Debug, Clone)]
pub struct Ext {
    pub oid: Vec<u8>,
    pub critical: bool,
    /// The extnValue contents (DER of the extension's own structure).
    pub value: Vec<u8>,
}

impl Ext {
    pub fn new(dotted: &str, value: Vec<u8>) -> Ext {
        Ext {
            oid: oid(dotted),
            critical: false,
            value,
        }
    }

    pub fn critical(mut self) -> Ext {
        self.critical = true;
        self
    }

    fn der(&self) -> Vec<u8> {
        let mut items = vec![self.oid.clone()];
        if self.critical {
            items.push(vec![tag::BOOLEAN, 1, 0xff]);
        }
        items.push(tlv(tag::OCTET_STRING, &self.value));
        seq(&items)
    }
}

/// `pp_preshared_key` carrying `psk` as a UTF8String.
pub fn psk_ext(psk: &str) -> Ext {
    Ext::new(policy::psk::PSK_OID_STR, tlv(tag::UTF8, psk.as_bytes()))
}

/// A GeneralName for subjectAltName.
#[derive(Debug, Clone)]
pub enum Gn {
    Dns(Vec<u8>),
    Ip(Vec<u8>),
    Email(String),
    Uri(String),
    /// otherName with a UTF8String value.
    Other(String, String),
}

/// subjectAltName with `names`.
pub fn san_ext(names: &[Gn]) -> Ext {
    let items: Vec<Vec<u8>> = names
        .iter()
        .map(|n| match n {
            Gn::Email(e) => tlv(0x81, e.as_bytes()),
            Gn::Dns(d) => tlv(0x82, d),
            Gn::Uri(u) => tlv(0x86, u.as_bytes()),
            Gn::Ip(ip) => tlv(0x87, ip),
            Gn::Other(type_oid, value) => tlv(
                0xa0,
                &[oid(type_oid), tlv(0xa0, &tlv(tag::UTF8, value.as_bytes()))].concat(),
            ),
        })
        .collect();
    Ext::new("2.5.29.17", seq(&items))
}

/// DNS names for [`san_ext`].
pub fn dns(names: &[&str]) -> Vec<Gn> {
    names
        .iter()
        .map(|n| Gn::Dns(n.as_bytes().to_vec()))
        .collect()
}

/// One subject attribute.
#[derive(Debug, Clone)]
pub struct Rdn {
    pub oid: &'static str,
    pub tag: u8,
    pub value: Vec<u8>,
}

/// CN as a UTF8String.
pub fn cn(name: &str) -> Rdn {
    cn_bytes(name.as_bytes())
}

/// CN with raw bytes (NUL, invalid UTF-8, ...).
pub fn cn_bytes(name: &[u8]) -> Rdn {
    Rdn {
        oid: "2.5.4.3",
        tag: tag::UTF8,
        value: name.to_vec(),
    }
}

/// What to put in a forged CSR.
#[derive(Debug, Clone, Default)]
pub struct CsrSpec {
    pub subject: Vec<Rdn>,
    /// Extensions in one extensionRequest attribute (none if empty and
    /// `no_extension_request`).
    pub extensions: Vec<Ext>,
    /// Further attributes, DER-encoded `Attribute`s (e.g. a second extensionRequest).
    pub extra_attributes: Vec<Vec<u8>>,
    /// CertificationRequestInfo version (0 = v1, the only valid one).
    pub version: u8,
    /// Replace the signature AlgorithmIdentifier (DER) with this.
    pub signature_algorithm: Option<Vec<u8>>,
    /// Use this SubjectPublicKeyInfo instead of the signing key's.
    pub spki: Option<Vec<u8>>,
}

impl CsrSpec {
    /// CN=`host` with the PSK extension.
    pub fn host(host: &str, psk: &str) -> CsrSpec {
        CsrSpec {
            subject: vec![cn(host)],
            extensions: vec![psk_ext(psk)],
            ..Default::default()
        }
    }

    pub fn ext(mut self, e: Ext) -> CsrSpec {
        self.extensions.push(e);
        self
    }
}

/// An extensionRequest attribute holding `exts`.
pub fn extension_request(exts: &[Ext]) -> Vec<u8> {
    let list: Vec<Vec<u8>> = exts.iter().map(Ext::der).collect();
    seq(&[oid("1.2.840.113549.1.9.14"), set(&[seq(&list)])])
}

/// A challengePassword attribute.
pub fn challenge_password(pw: &str) -> Vec<u8> {
    seq(&[
        oid("1.2.840.113549.1.9.7"),
        set(&[tlv(tag::UTF8, pw.as_bytes())]),
    ])
}

/// The AlgorithmIdentifier of a key's signature algorithm (ECDSA and Ed25519 keys).
pub fn signature_algorithm_of(key: &KeyPair) -> Vec<u8> {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        seq(&[oid("1.2.840.10045.4.3.2")])
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        seq(&[oid("1.2.840.10045.4.3.3")])
    } else if alg == &rcgen::PKCS_ED25519 {
        seq(&[oid("1.3.101.112")])
    } else {
        panic!("forge signs with ECDSA or Ed25519 keys")
    }
}

/// The CertificationRequestInfo of `spec` for `key`.
pub fn request_info(key: &KeyPair, spec: &CsrSpec) -> Vec<u8> {
    let subject: Vec<Vec<u8>> = spec
        .subject
        .iter()
        .map(|r| set(&[seq(&[oid(r.oid), tlv(r.tag, &r.value)])]))
        .collect();
    let mut attrs = Vec::new();
    if !spec.extensions.is_empty() {
        attrs.push(extension_request(&spec.extensions));
    }
    attrs.extend(spec.extra_attributes.iter().cloned());
    let spki = spec
        .spki
        .clone()
        .unwrap_or_else(|| key.subject_public_key_info());
    seq(&[
        tlv(tag::INTEGER, &[spec.version]),
        seq(&subject),
        spki,
        tlv(0xa0, &attrs.concat()),
    ])
}

/// A DER CSR for `spec`, self-signed with `key`.
pub fn forge(key: &KeyPair, spec: &CsrSpec) -> Vec<u8> {
    let info = request_info(key, spec);
    let sig = key.sign(&info).expect("signing");
    assemble(key, spec, info, &sig)
}

/// The CSR from its parts, with `sig` as the signature value.
pub fn assemble(key: &KeyPair, spec: &CsrSpec, info: Vec<u8>, sig: &[u8]) -> Vec<u8> {
    let alg = spec
        .signature_algorithm
        .clone()
        .unwrap_or_else(|| signature_algorithm_of(key));
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig);
    seq(&[info, alg, tlv(tag::BIT_STRING, &bits)])
}

/// A fresh P-256 key.
pub fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

/// PEM text of a DER CSR.
pub fn pem(der: &[u8]) -> Vec<u8> {
    ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der.to_vec())).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_forged_csr_parses_and_verifies() {
        let key = p256();
        let der = forge(&key, &CsrSpec::host("web1.example.internal", "p-s-k"));
        let csr = policy::csr::parse(&der).unwrap();
        assert_eq!(csr.common_names, ["web1.example.internal"]);
        assert_eq!(csr.psk.unwrap().expose(), "p-s-k");
        assert_eq!(
            oid("1.3.6.1.4.1.34380.1.1.4")[2..],
            [0x2b, 6, 1, 4, 1, 0x82, 0x8c, 0x4c, 1, 1, 4]
        );
    }
}
