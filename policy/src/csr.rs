//! Parse an untrusted CSR (PEM or DER), verify its self-signature, and read
//! the facts the decision needs: subject CNs, requested names, key type and
//! size, and the PSK.
//!
//! Keys and signature algorithms are allow-listed here rather than trusted to
//! x509-parser, which would accept SHA-1 and 1024-bit RSA. Every requested
//! extension other than subjectAltName and `pp_preshared_key` is only noted:
//! the certificate is built by the server, never from what the CSR asks for.

use crate::error::{Malformed, Rejection};
use crate::psk::{self, Psk};
use ring::signature;
use std::collections::HashSet;
use std::net::IpAddr;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_HASH_SHA256,
    OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::RsaSsaPssParams;
use x509_parser::x509::{AlgorithmIdentifier, SubjectPublicKeyInfo};
use zeroize::Zeroizing;

/// More requested extensions than any honest client sends.
pub const MAX_EXTENSIONS: usize = 64;

/// An allowed subject key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
    Rsa { bits: u32 },
}

impl KeyKind {
    /// RSA keys get keyEncipherment in addition to digitalSignature.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyKind::Rsa { .. })
    }
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
            KeyKind::Rsa { bits } => write!(f, "RSA {bits}"),
        }
    }
}

/// An allowed CSR signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureKind {
    EcdsaSha256,
    EcdsaSha384,
    Ed25519,
    RsaPkcs1Sha256,
    RsaPkcs1Sha384,
    RsaPkcs1Sha512,
    RsaPssSha256,
    RsaPssSha384,
    RsaPssSha512,
}

/// A name the CSR asks for in its subjectAltName.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestedName {
    Dns(String),
    Ip(IpAddr),
    Email(String),
    Uri(String),
    /// otherName, directoryName, registeredID, ...: named by kind only.
    Other(&'static str),
}

impl std::fmt::Display for RequestedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestedName::Dns(n) => write!(f, "DNS:{n}"),
            RequestedName::Ip(ip) => write!(f, "IP:{ip}"),
            RequestedName::Email(e) => write!(f, "email:{e}"),
            RequestedName::Uri(u) => write!(f, "URI:{u}"),
            RequestedName::Other(kind) => write!(f, "{kind}"),
        }
    }
}

/// The verified facts of a CSR. Only produced by [`parse`], after the
/// self-signature verified with an allowed key and algorithm.
#[derive(Debug, Clone)]
pub struct Csr {
    /// Every commonName in the subject, in order (the decision wants exactly one).
    pub common_names: Vec<String>,
    /// Names from the requested subjectAltName extension.
    pub requested_names: Vec<RequestedName>,
    pub key: KeyKind,
    pub signature: SignatureKind,
    /// The SubjectPublicKeyInfo, DER: the only thing the certificate takes from the CSR.
    pub spki_der: Vec<u8>,
    /// The PSK from `pp_preshared_key` or challengePassword.
    pub psk: Option<Psk>,
    /// OIDs of requested extensions that are ignored (never copied).
    pub ignored_extensions: Vec<String>,
}

impl Csr {
    /// SHA-256 over the SubjectPublicKeyInfo DER: identifies the key for the
    /// idempotent retry and for "same key" checks.
    pub fn public_key_sha256(&self) -> [u8; 32] {
        spki_sha256(&self.spki_der)
    }
}

/// SHA-256 over SubjectPublicKeyInfo DER bytes.
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parses and verifies a CSR given as PEM (one `CERTIFICATE REQUEST` block) or DER.
pub fn parse(input: &[u8]) -> Result<Csr, Rejection> {
    let trimmed = trim_ascii(input);
    if trimmed.is_empty() {
        return Err(Malformed::Empty.into());
    }
    if trimmed.starts_with(b"-----BEGIN")
        || (trimmed[0] != 0x30 && contains(trimmed, b"-----BEGIN"))
    {
        let der = decode_pem(trimmed)?;
        parse_der(&der)
    } else {
        parse_der(input)
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The DER of the one CSR block. Every decoded buffer is wiped when dropped:
/// a CSR carries the PSK.
fn decode_pem(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rejection> {
    let blocks = pem::parse_many(text).map_err(|e| Malformed::Pem(e.to_string()))?;
    let mut blocks: Vec<(String, Zeroizing<Vec<u8>>)> = blocks
        .into_iter()
        .map(|b| (b.tag().to_owned(), Zeroizing::new(b.into_contents())))
        .collect();
    match blocks.len() {
        0 => Err(Malformed::Pem("no PEM block found".into()).into()),
        1 => {
            let (tag, contents) = blocks.pop().expect("one block");
            match tag.as_str() {
                "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" if contents.is_empty() => {
                    Err(Malformed::Pem("empty PEM block".into()).into())
                }
                "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(contents),
                other => Err(Malformed::PemLabel(other.chars().take(64).collect()).into()),
            }
        }
        n => Err(Malformed::PemBlockCount(n).into()),
    }
}

/// Parses and verifies a DER CSR.
pub fn parse_der(der: &[u8]) -> Result<Csr, Rejection> {
    if der.is_empty() {
        return Err(Malformed::Empty.into());
    }
    crate::der::check(der).map_err(|e| match e {
        crate::der::DerError::Trailing(n) => Malformed::TrailingData(n),
        other => Malformed::Der(other.to_string()),
    })?;
    // `parsed` is `der`, or a copy with a Puppet-style challengePassword relabelled.
    let relabelled;
    let (parsed, (rest, req)) = match X509CertificationRequest::from_der(der) {
        Ok(ok) => (der, ok),
        Err(e) => {
            let refused = || Malformed::Der(describe_der_error(&e));
            relabelled = relabel_printable_challenge_password(der).ok_or_else(refused)?;
            let ok = X509CertificationRequest::from_der(&relabelled).map_err(|_| refused())?;
            (relabelled.as_slice(), ok)
        }
    };
    if !rest.is_empty() {
        return Err(Malformed::TrailingData(rest.len()).into());
    }
    let info = &req.certification_request_info;
    if info.version.0 != 0 {
        return Err(Malformed::Version.into());
    }

    // Key and algorithm first: both must be allowed before the signature means anything.
    let key = classify_key(&info.subject_pki)?;
    let signature = classify_signature(&req.signature_algorithm, key)?;
    // The signature is checked over the bytes as received (`info.raw` lies in
    // `parsed`, at the same offsets as in `der`).
    let start = info.raw.as_ptr() as usize - parsed.as_ptr() as usize;
    verify(
        signature,
        &info.subject_pki.subject_public_key.data,
        &der[start..start + info.raw.len()],
        &req.signature_value.data,
    )?;

    let mut common_names = Vec::new();
    for attr in info.subject.iter_common_name() {
        let cn = attr
            .as_str()
            .map_err(|_| Malformed::Der("subject commonName is not a string".into()))?;
        common_names.push(cn.to_owned());
    }

    let mut requested_names = Vec::new();
    let mut ignored_extensions = Vec::new();
    let mut ext_psk: Option<Psk> = None;
    let mut challenge_psk: Option<Psk> = None;
    let mut seen_attrs = HashSet::new();
    let mut seen_exts = HashSet::new();

    for attr in info.attributes() {
        let attr_oid = attr.oid.to_id_string();
        if !seen_attrs.insert(attr_oid.clone()) {
            return Err(Malformed::DuplicateAttribute(attr_oid).into());
        }
        match attr.parsed_attribute() {
            ParsedCriAttribute::ChallengePassword(pw) => {
                challenge_psk = Some(Psk::new(pw.0.clone()).map_err(|_| Malformed::PskEncoding)?);
            }
            ParsedCriAttribute::ExtensionRequest(req) => {
                if req.extensions.len() > MAX_EXTENSIONS {
                    return Err(Malformed::TooManyExtensions(MAX_EXTENSIONS).into());
                }
                for ext in &req.extensions {
                    let oid = ext.oid.to_id_string();
                    if !seen_exts.insert(oid.clone()) {
                        return Err(Malformed::DuplicateExtension(oid).into());
                    }
                    if oid == psk::PSK_OID_STR {
                        ext_psk = Some(
                            psk::decode_extension_value(ext.value).ok_or(Malformed::PskEncoding)?,
                        );
                    } else if ext.oid == OID_X509_EXT_SUBJECT_ALT_NAME {
                        match ext.parsed_extension() {
                            ParsedExtension::SubjectAlternativeName(san) => {
                                for gn in &san.general_names {
                                    requested_names.push(requested_name(gn)?);
                                }
                            }
                            _ => {
                                return Err(Malformed::Extension("subjectAltName".into()).into());
                            }
                        }
                    } else {
                        ignored_extensions.push(oid);
                    }
                }
            }
            _ => {}
        }
    }

    let psk = match (ext_psk, challenge_psk) {
        (Some(a), Some(b)) if a != b => return Err(Malformed::ConflictingPsk.into()),
        (Some(a), _) => Some(a),
        (None, b) => b,
    };

    Ok(Csr {
        common_names,
        requested_names,
        key,
        signature,
        spki_der: info.subject_pki.raw.to_vec(),
        psk,
        ignored_extensions,
    })
}

/// DER of the challengePassword attribute type (1.2.840.113549.1.9.7).
const CHALLENGE_PASSWORD_OID_DER: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x07,
];

/// Ruby's OpenSSL, and so every Puppet agent's `custom_attributes`, writes
/// challengePassword as a PrintableString without checking its alphabet: a
/// base64url PSK with `_` is then not a valid PrintableString and x509-parser
/// refuses the whole CSR. Returns a copy with that string's tag changed to
/// UTF8String (same length, same offsets), or `None` if there is none.
fn relabel_printable_challenge_password(der: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let at = der
        .windows(CHALLENGE_PASSWORD_OID_DER.len())
        .position(|w| w == CHALLENGE_PASSWORD_OID_DER)?;
    // OID, then `SET { PrintableString }`, both with short-form lengths (a
    // PSK is at most 512 bytes, so the SET may use one long-form length byte).
    let set = at + CHALLENGE_PASSWORD_OID_DER.len();
    let value = match (der.get(set)?, der.get(set + 1)?) {
        (0x31, len) if *len < 0x80 => set + 2,
        (0x31, 0x81) => set + 3,
        (0x31, 0x82) => set + 4,
        _ => return None,
    };
    const PRINTABLE_STRING: u8 = 0x13;
    const UTF8_STRING: u8 = 0x0c;
    if *der.get(value)? != PRINTABLE_STRING {
        return None;
    }
    let mut copy = Zeroizing::new(der.to_vec());
    copy[value] = UTF8_STRING;
    Some(copy)
}

fn describe_der_error(e: &x509_parser::nom::Err<x509_parser::error::X509Error>) -> String {
    match e {
        x509_parser::nom::Err::Incomplete(_) => "truncated".into(),
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e.to_string(),
    }
}

fn requested_name(gn: &GeneralName<'_>) -> Result<RequestedName, Rejection> {
    Ok(match gn {
        GeneralName::DNSName(n) => RequestedName::Dns((*n).to_owned()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => RequestedName::Ip(IpAddr::from(<[u8; 4]>::try_from(*b).expect("len 4"))),
            16 => RequestedName::Ip(IpAddr::from(<[u8; 16]>::try_from(*b).expect("len 16"))),
            _ => {
                return Err(Malformed::Extension("subjectAltName IP address length".into()).into());
            }
        },
        GeneralName::RFC822Name(e) => RequestedName::Email((*e).to_owned()),
        GeneralName::URI(u) => RequestedName::Uri((*u).to_owned()),
        GeneralName::OtherName(..) => RequestedName::Other("otherName"),
        GeneralName::DirectoryName(_) => RequestedName::Other("directoryName"),
        GeneralName::X400Address(_) => RequestedName::Other("x400Address"),
        GeneralName::EDIPartyName(_) => RequestedName::Other("ediPartyName"),
        GeneralName::RegisteredID(_) => RequestedName::Other("registeredID"),
        GeneralName::Invalid(..) => {
            return Err(Malformed::Extension("subjectAltName entry".into()).into());
        }
    })
}

/// Well-known OIDs named in refusals so the operator sees "DSA", not digits.
fn key_algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.10040.4.1" => "DSA".into(),
        "1.2.840.113549.1.1.10" => "RSA-PSS key".into(),
        "1.3.101.110" => "X25519".into(),
        "1.3.101.111" => "X448".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.2.840.10046.2.1" => "DH".into(),
        other => format!("key algorithm {other}"),
    }
}

fn curve_name(oid: &str) -> String {
    match oid {
        "1.3.132.0.35" => "P-521".into(),
        "1.3.132.0.10" => "secp256k1".into(),
        "1.2.840.10045.3.1.1" => "P-192".into(),
        "1.3.132.0.33" => "P-224".into(),
        other => format!("curve {other}"),
    }
}

fn classify_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<KeyKind, Rejection> {
    let alg = &spki.algorithm.algorithm;
    let key = &spki.subject_public_key.data;
    if spki.subject_public_key.unused_bits != 0 {
        return Err(Malformed::PublicKey("bit string has unused bits".into()).into());
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let params = spki
            .algorithm
            .parameters
            .as_ref()
            .ok_or_else(|| Malformed::PublicKey("EC key without curve".into()))?;
        let curve = params.as_oid().map_err(|_| {
            Rejection::KeyNotAllowed("explicit EC curve parameters (use a named curve)".into())
        })?;
        let (kind, len) = if curve == OID_EC_P256 {
            (KeyKind::EcdsaP256, 65)
        } else if curve == OID_NIST_EC_P384 {
            (KeyKind::EcdsaP384, 97)
        } else {
            return Err(Rejection::KeyNotAllowed(curve_name(&curve.to_id_string())));
        };
        return match key.first() {
            Some(0x04) if key.len() == len => Ok(kind),
            Some(0x02 | 0x03) => Err(Rejection::KeyNotAllowed(
                "compressed EC point (use the uncompressed form)".into(),
            )),
            _ => Err(Malformed::PublicKey("EC point has the wrong length or form".into()).into()),
        };
    }
    if *alg == OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() {
            return Err(Malformed::PublicKey("Ed25519 key with parameters".into()).into());
        }
        if key.len() != 32 {
            return Err(Malformed::PublicKey("Ed25519 key is not 32 bytes".into()).into());
        }
        return Ok(KeyKind::Ed25519);
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        // RFC 3279 2.3.1: the parameters MUST be NULL. The signer (ring via
        // rcgen) cannot take anything else, so a key that passed here would
        // fail at signing as a 503 that invites retries.
        let null_params = spki.algorithm.parameters.as_ref().is_some_and(|p| {
            p.tag() == x509_parser::der_parser::asn1_rs::Tag::Null && p.data.is_empty()
        });
        if !null_params {
            return Err(Rejection::KeyNotAllowed(
                "RSA key whose algorithm parameters are not NULL (RFC 3279)".into(),
            ));
        }
        let parsed = spki
            .parsed()
            .map_err(|_| Malformed::PublicKey("RSA key does not parse".into()))?;
        let x509_parser::public_key::PublicKey::RSA(rsa) = parsed else {
            return Err(Malformed::PublicKey("RSA key does not parse".into()).into());
        };
        let modulus = strip_leading_zeros(rsa.modulus);
        let bits = match modulus.first() {
            Some(&b) => (modulus.len() as u32 - 1) * 8 + (8 - b.leading_zeros()),
            None => 0,
        };
        if !(2048..=8192).contains(&bits) {
            return Err(Rejection::KeyNotAllowed(format!("RSA {bits} bits")));
        }
        if bits % 8 != 0 {
            return Err(Rejection::KeyNotAllowed(format!(
                "RSA {bits} bits (not a multiple of 8)"
            )));
        }
        if strip_leading_zeros(rsa.exponent) != [0x01, 0x00, 0x01] {
            return Err(Rejection::KeyNotAllowed(
                "RSA exponent other than 65537".into(),
            ));
        }
        return Ok(KeyKind::Rsa { bits });
    }
    Err(Rejection::KeyNotAllowed(key_algorithm_name(
        &alg.to_id_string(),
    )))
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn signature_algorithm_name(oid: &str) -> String {
    match oid {
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption".into(),
        "1.2.840.113549.1.1.2" => "md2WithRSAEncryption".into(),
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => "sha1WithRSAEncryption".into(),
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1".into(),
        "1.2.840.10045.4.3.1" => "ecdsa-with-SHA224".into(),
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512".into(),
        "1.2.840.113549.1.1.14" => "sha224WithRSAEncryption".into(),
        "1.2.840.10040.4.3" => "dsa-with-SHA1".into(),
        "2.16.840.1.101.3.4.3.2" => "dsa-with-SHA256".into(),
        other => other.to_owned(),
    }
}

fn classify_signature(
    alg: &AlgorithmIdentifier<'_>,
    key: KeyKind,
) -> Result<SignatureKind, Rejection> {
    let oid = &alg.algorithm;
    let kind = if *oid == OID_SIG_ECDSA_WITH_SHA256 {
        SignatureKind::EcdsaSha256
    } else if *oid == OID_SIG_ECDSA_WITH_SHA384 {
        SignatureKind::EcdsaSha384
    } else if *oid == OID_SIG_ED25519 {
        SignatureKind::Ed25519
    } else if *oid == OID_PKCS1_SHA256WITHRSA {
        SignatureKind::RsaPkcs1Sha256
    } else if *oid == OID_PKCS1_SHA384WITHRSA {
        SignatureKind::RsaPkcs1Sha384
    } else if *oid == OID_PKCS1_SHA512WITHRSA {
        SignatureKind::RsaPkcs1Sha512
    } else if *oid == OID_PKCS1_RSASSAPSS {
        let params = alg.parameters.as_ref().ok_or_else(|| {
            Rejection::SignatureAlgorithmNotAllowed("RSASSA-PSS without parameters".into())
        })?;
        let params = RsaSsaPssParams::try_from(params).map_err(|_| {
            Rejection::SignatureAlgorithmNotAllowed("RSASSA-PSS parameters do not parse".into())
        })?;
        let hash = params.hash_algorithm_oid();
        let (kind, salt) = if *hash == OID_NIST_HASH_SHA256 {
            (SignatureKind::RsaPssSha256, 32)
        } else if *hash == OID_NIST_HASH_SHA384 {
            (SignatureKind::RsaPssSha384, 48)
        } else if *hash == OID_NIST_HASH_SHA512 {
            (SignatureKind::RsaPssSha512, 64)
        } else {
            return Err(Rejection::SignatureAlgorithmNotAllowed(format!(
                "RSASSA-PSS with hash {}",
                signature_algorithm_name(&hash.to_id_string())
            )));
        };
        // ring verifies PSS with the salt as long as the hash and MGF1 over the same hash.
        let mgf_ok = params
            .mask_gen_algorithm()
            .map(|m| m.hash == *hash)
            .unwrap_or(false);
        if !mgf_ok || params.salt_length() != salt {
            return Err(Rejection::SignatureAlgorithmNotAllowed(
                "RSASSA-PSS parameters other than MGF1 over the same hash and salt = hash length"
                    .into(),
            ));
        }
        kind
    } else {
        return Err(Rejection::SignatureAlgorithmNotAllowed(
            signature_algorithm_name(&oid.to_id_string()),
        ));
    };

    let matches = match kind {
        SignatureKind::EcdsaSha256 | SignatureKind::EcdsaSha384 => {
            matches!(key, KeyKind::EcdsaP256 | KeyKind::EcdsaP384)
        }
        SignatureKind::Ed25519 => key == KeyKind::Ed25519,
        _ => key.is_rsa(),
    };
    if !matches {
        return Err(Rejection::SignatureAlgorithmNotAllowed(format!(
            "{kind:?} signature with an {key} key"
        )));
    }
    Ok(kind)
}

fn verify(
    kind: SignatureKind,
    key_bytes: &[u8],
    message: &[u8],
    sig: &[u8],
) -> Result<(), Rejection> {
    let alg: &dyn signature::VerificationAlgorithm = match kind {
        // With an ECDSA signature the curve comes from the key; classify_key allowed only two.
        SignatureKind::EcdsaSha256 if key_bytes.len() == 65 => &signature::ECDSA_P256_SHA256_ASN1,
        SignatureKind::EcdsaSha256 => &signature::ECDSA_P384_SHA256_ASN1,
        SignatureKind::EcdsaSha384 if key_bytes.len() == 65 => &signature::ECDSA_P256_SHA384_ASN1,
        SignatureKind::EcdsaSha384 => &signature::ECDSA_P384_SHA384_ASN1,
        SignatureKind::Ed25519 => &signature::ED25519,
        SignatureKind::RsaPkcs1Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        SignatureKind::RsaPkcs1Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        SignatureKind::RsaPkcs1Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        SignatureKind::RsaPssSha256 => &signature::RSA_PSS_2048_8192_SHA256,
        SignatureKind::RsaPssSha384 => &signature::RSA_PSS_2048_8192_SHA384,
        SignatureKind::RsaPssSha512 => &signature::RSA_PSS_2048_8192_SHA512,
    };
    signature::UnparsedPublicKey::new(alg, key_bytes)
        .verify(message, sig)
        .map_err(|_| Rejection::BadSignature)
}
