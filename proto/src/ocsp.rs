//! OCSP (RFC 6960) wire format shared by the responder and `ca-client ocsp`:
//! a strict DER reader and writer, CertIDs, request encoding and decoding,
//! and response decoding and verification against the pinned CA.
//!
//! Only what this CA speaks: SHA-1 or SHA-256 CertIDs, ECDSA P-256/SHA-256
//! (or P-384/SHA-384) signatures, single-byte tags, definite lengths.

use anyhow::{Context, Result, anyhow, bail};

/// id-pkix-ocsp-basic.
pub const OID_OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
/// id-pkix-ocsp-nonce.
pub const OID_OCSP_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
/// id-pkix-ocsp-nocheck.
pub const OID_OCSP_NOCHECK: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x05];
/// id-sha1.
pub const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
/// id-sha256.
pub const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
/// ecdsa-with-SHA256.
pub const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// ecdsa-with-SHA384.
pub const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];

/// Strict DER: definite minimal lengths, low-number tags only.
pub mod der {
    use anyhow::{Result, bail};

    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const ENUMERATED: u8 = 0x0a;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;

    /// Context-specific constructed tag `[n]`.
    pub const fn ctx(n: u8) -> u8 {
        0xa0 | n
    }

    /// Reads TLVs from a slice.
    #[derive(Debug, Clone, Copy)]
    pub struct Reader<'a> {
        data: &'a [u8],
    }

    /// One element: its tag, its content and its whole encoding.
    #[derive(Debug, Clone, Copy)]
    pub struct Tlv<'a> {
        pub tag: u8,
        pub content: &'a [u8],
        pub raw: &'a [u8],
    }

    impl<'a> Reader<'a> {
        pub fn new(data: &'a [u8]) -> Reader<'a> {
            Reader { data }
        }

        pub fn is_empty(&self) -> bool {
            self.data.is_empty()
        }

        pub fn peek_tag(&self) -> Option<u8> {
            self.data.first().copied()
        }

        /// The next element, whatever its tag.
        pub fn any(&mut self) -> Result<Tlv<'a>> {
            let d = self.data;
            if d.len() < 2 {
                bail!("truncated DER");
            }
            let tag = d[0];
            if tag & 0x1f == 0x1f {
                bail!("multi-byte DER tags are not used here");
            }
            let (len, header): (usize, usize) = match d[1] {
                n if n < 0x80 => (n as usize, 2),
                0x81 => {
                    let n = *d.get(2).ok_or_else(|| anyhow::anyhow!("truncated DER"))? as usize;
                    if n < 0x80 {
                        bail!("non-minimal DER length");
                    }
                    (n, 3)
                }
                0x82 => {
                    if d.len() < 4 {
                        bail!("truncated DER");
                    }
                    let n = u16::from_be_bytes([d[2], d[3]]) as usize;
                    if n < 0x100 {
                        bail!("non-minimal DER length");
                    }
                    (n, 4)
                }
                0x83 => {
                    if d.len() < 5 {
                        bail!("truncated DER");
                    }
                    let n = u32::from_be_bytes([0, d[2], d[3], d[4]]) as usize;
                    if n < 0x1_0000 {
                        bail!("non-minimal DER length");
                    }
                    (n, 5)
                }
                0x80 => bail!("indefinite lengths are not DER"),
                _ => bail!("DER length too large"),
            };
            let end = header
                .checked_add(len)
                .filter(|e| *e <= d.len())
                .ok_or_else(|| anyhow::anyhow!("DER length runs past the data"))?;
            self.data = &d[end..];
            Ok(Tlv {
                tag,
                content: &d[header..end],
                raw: &d[..end],
            })
        }

        /// The next element, which must have `tag`.
        pub fn expect(&mut self, tag: u8) -> Result<Tlv<'a>> {
            let t = self.any()?;
            if t.tag != tag {
                bail!("expected DER tag {tag:#04x}, found {:#04x}", t.tag);
            }
            Ok(t)
        }

        /// The next element if it has `tag`.
        pub fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>> {
            if self.peek_tag() == Some(tag) {
                self.expect(tag).map(Some)
            } else {
                Ok(None)
            }
        }

        /// Fails unless everything was read.
        pub fn finish(&self) -> Result<()> {
            if !self.data.is_empty() {
                bail!("trailing data after DER element");
            }
            Ok(())
        }
    }

    /// Reads exactly one element with `tag` spanning all of `data`.
    pub fn single(data: &[u8], tag: u8) -> Result<Tlv<'_>> {
        let mut r = Reader::new(data);
        let t = r.expect(tag)?;
        r.finish()?;
        Ok(t)
    }

    /// Encodes one element.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(content.len() + 5);
        out.push(tag);
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else if n < 0x1_0000 {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        } else {
            out.extend([0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// A constructed element from already-encoded parts.
    pub fn cons(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        tlv(tag, &parts.concat())
    }

    /// A SEQUENCE from already-encoded parts.
    pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
        cons(SEQUENCE, parts)
    }

    /// A non-negative INTEGER from big-endian magnitude bytes.
    pub fn uint(magnitude: &[u8]) -> Vec<u8> {
        let first = magnitude
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(magnitude.len().saturating_sub(1));
        let m = &magnitude[first.min(magnitude.len())..];
        let mut content = Vec::with_capacity(m.len() + 1);
        if m.is_empty() || m[0] & 0x80 != 0 {
            content.push(0);
        }
        content.extend_from_slice(m);
        if content.len() > 1 && content[0] == 0 && content[1] & 0x80 == 0 {
            content.remove(0);
        }
        tlv(INTEGER, &content)
    }

    /// GeneralizedTime `YYYYMMDDHHMMSSZ` of Unix seconds.
    pub fn generalized_time(unix: i64) -> Vec<u8> {
        let t = time::OffsetDateTime::from_unix_timestamp(unix)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        tlv(GENERALIZED_TIME, s.as_bytes())
    }

    /// Reads a GeneralizedTime's content (`YYYYMMDDHHMMSSZ`, no fractions).
    pub fn parse_generalized_time(content: &[u8]) -> Result<i64> {
        if content.len() != 15
            || content[14] != b'Z'
            || !content[..14].iter().all(u8::is_ascii_digit)
        {
            bail!("GeneralizedTime is not YYYYMMDDHHMMSSZ");
        }
        let n = |a: usize, b: usize| -> u32 {
            content[a..b]
                .iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
        };
        let month = time::Month::try_from(n(4, 6) as u8)?;
        let date = time::Date::from_calendar_date(n(0, 4) as i32, month, n(6, 8) as u8)?;
        let tod = time::Time::from_hms(n(8, 10) as u8, n(10, 12) as u8, n(12, 14) as u8)?;
        Ok(time::PrimitiveDateTime::new(date, tod)
            .assume_utc()
            .unix_timestamp())
    }
}

/// The hash a CertID uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertIdHash {
    Sha1,
    Sha256,
}

impl CertIdHash {
    fn oid(self) -> &'static [u8] {
        match self {
            CertIdHash::Sha1 => OID_SHA1,
            CertIdHash::Sha256 => OID_SHA256,
        }
    }

    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let alg = match self {
            CertIdHash::Sha1 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            CertIdHash::Sha256 => &ring::digest::SHA256,
        };
        ring::digest::digest(alg, data).as_ref().to_vec()
    }

    fn len(self) -> usize {
        match self {
            CertIdHash::Sha1 => 20,
            CertIdHash::Sha256 => 32,
        }
    }
}

/// A CertID: which issuer (by hashes of its name and key) and which serial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertId {
    pub hash: CertIdHash,
    pub issuer_name_hash: Vec<u8>,
    pub issuer_key_hash: Vec<u8>,
    /// The serial's INTEGER content bytes as sent.
    pub serial: Vec<u8>,
}

/// The two things an issuer's CertID hashes are computed from.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    /// The issuer's subject Name, DER.
    pub name_der: Vec<u8>,
    /// The issuer's subjectPublicKey BIT STRING value (without the unused-bits byte).
    pub public_key: Vec<u8>,
}

impl IssuerKeys {
    /// From a CA certificate (DER).
    pub fn from_cert(der: &[u8]) -> Result<IssuerKeys> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow!("parsing the issuer certificate: {e}"))?;
        Ok(IssuerKeys {
            name_der: cert.subject().as_raw().to_vec(),
            public_key: cert.public_key().subject_public_key.data.to_vec(),
        })
    }

    /// Whether `id` names this issuer.
    pub fn matches(&self, id: &CertId) -> bool {
        id.issuer_name_hash == id.hash.digest(&self.name_der)
            && id.issuer_key_hash == id.hash.digest(&self.public_key)
    }
}

impl CertId {
    /// The CertID of `serial` (INTEGER content bytes) under `issuer`.
    pub fn new(hash: CertIdHash, issuer: &IssuerKeys, serial: &[u8]) -> CertId {
        CertId {
            hash,
            issuer_name_hash: hash.digest(&issuer.name_der),
            issuer_key_hash: hash.digest(&issuer.public_key),
            serial: serial.to_vec(),
        }
    }

    pub fn to_der(&self) -> Vec<u8> {
        use der::*;
        seq(&[
            &seq(&[&tlv(OID, self.hash.oid()), &tlv(NULL, &[])]),
            &tlv(OCTET_STRING, &self.issuer_name_hash),
            &tlv(OCTET_STRING, &self.issuer_key_hash),
            &tlv(INTEGER, &self.serial),
        ])
    }

    /// Reads a CertID's SEQUENCE content.
    pub fn parse(content: &[u8]) -> Result<CertId> {
        use der::*;
        let mut r = Reader::new(content);
        let alg = r.expect(SEQUENCE)?;
        let mut a = Reader::new(alg.content);
        let oid = a.expect(OID)?.content;
        a.optional(NULL)?;
        a.finish()?;
        let hash = if oid == OID_SHA1 {
            CertIdHash::Sha1
        } else if oid == OID_SHA256 {
            CertIdHash::Sha256
        } else {
            bail!("unsupported CertID hash algorithm");
        };
        let name = r.expect(OCTET_STRING)?.content.to_vec();
        let key = r.expect(OCTET_STRING)?.content.to_vec();
        let serial = r.expect(INTEGER)?.content.to_vec();
        r.finish()?;
        if name.len() != hash.len() || key.len() != hash.len() {
            bail!("CertID hash lengths do not match the algorithm");
        }
        if serial.is_empty() || serial.len() > 21 {
            bail!("CertID serial number has a bad length");
        }
        Ok(CertId {
            hash,
            issuer_name_hash: name,
            issuer_key_hash: key,
            serial,
        })
    }

    /// The serial as this CA stores it (lowercase hex of the magnitude, no
    /// sign byte), or `None` for a negative or zero serial.
    pub fn serial_hex(&self) -> Option<String> {
        if self.serial[0] & 0x80 != 0 {
            return None;
        }
        let m = match self.serial.iter().position(|b| *b != 0) {
            Some(i) => &self.serial[i..],
            None => return None,
        };
        Some(hex::encode(m))
    }
}

/// Encodes an OCSPRequest for one CertID, with a nonce when given.
pub fn encode_request(id: &CertId, nonce: Option<&[u8]>) -> Vec<u8> {
    use der::*;
    let request = seq(&[&id.to_der()]);
    let list = seq(&[&request]);
    let tbs = match nonce {
        Some(n) => {
            let ext = seq(&[
                &tlv(OID, OID_OCSP_NONCE),
                &tlv(OCTET_STRING, &tlv(OCTET_STRING, n)),
            ]);
            seq(&[&list, &cons(ctx(2), &[&seq(&[&ext])])])
        }
        None => seq(&[&list]),
    };
    seq(&[&tbs])
}

/// OCSPResponseStatus values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseStatus {
    Successful = 0,
    MalformedRequest = 1,
    InternalError = 2,
    TryLater = 3,
    SigRequired = 5,
    Unauthorized = 6,
}

impl ResponseStatus {
    pub fn name(self) -> &'static str {
        match self {
            ResponseStatus::Successful => "successful",
            ResponseStatus::MalformedRequest => "malformedRequest",
            ResponseStatus::InternalError => "internalError",
            ResponseStatus::TryLater => "tryLater",
            ResponseStatus::SigRequired => "sigRequired",
            ResponseStatus::Unauthorized => "unauthorized",
        }
    }

    fn from_code(c: u8) -> Result<ResponseStatus> {
        Ok(match c {
            0 => ResponseStatus::Successful,
            1 => ResponseStatus::MalformedRequest,
            2 => ResponseStatus::InternalError,
            3 => ResponseStatus::TryLater,
            5 => ResponseStatus::SigRequired,
            6 => ResponseStatus::Unauthorized,
            _ => bail!("unknown OCSP response status {c}"),
        })
    }

    /// An unsuccessful OCSPResponse (no responseBytes).
    pub fn error_response(self) -> Vec<u8> {
        der::seq(&[&der::tlv(der::ENUMERATED, &[self as u8])])
    }
}

/// A certificate's status in a SingleResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    Good,
    /// Revocation time and CRLReason code, if given.
    Revoked {
        at: i64,
        reason: Option<u8>,
    },
    Unknown,
}

/// One SingleResponse.
#[derive(Debug, Clone)]
pub struct SingleResponse {
    pub cert_id: CertId,
    pub status: CertStatus,
    pub this_update: i64,
    pub next_update: Option<i64>,
}

/// A decoded successful response (BasicOCSPResponse).
#[derive(Debug, Clone)]
pub struct BasicResponse {
    pub tbs: Vec<u8>,
    pub produced_at: i64,
    pub responses: Vec<SingleResponse>,
    /// The nonce extension's value (the inner OCTET STRING's content).
    pub nonce: Option<Vec<u8>>,
    pub signature_alg: Vec<u8>,
    pub signature: Vec<u8>,
    pub certs: Vec<Vec<u8>>,
}

/// Decodes an OCSPResponse: the status, and the basic response when successful.
pub fn decode_response(data: &[u8]) -> Result<(ResponseStatus, Option<BasicResponse>)> {
    use der::*;
    let outer = single(data, SEQUENCE)?;
    let mut r = Reader::new(outer.content);
    let status = r.expect(ENUMERATED)?.content;
    if status.len() != 1 {
        bail!("bad OCSP response status");
    }
    let status = ResponseStatus::from_code(status[0])?;
    let Some(bytes) = r.optional(ctx(0))? else {
        r.finish()?;
        return Ok((status, None));
    };
    r.finish()?;
    if status != ResponseStatus::Successful {
        bail!("an unsuccessful OCSP response carries a body");
    }
    let rb = single(bytes.content, SEQUENCE)?;
    let mut rb = Reader::new(rb.content);
    if rb.expect(OID)?.content != OID_OCSP_BASIC {
        bail!("not a basic OCSP response");
    }
    let basic = rb.expect(OCTET_STRING)?.content;
    rb.finish()?;
    Ok((status, Some(decode_basic(basic)?)))
}

fn decode_basic(data: &[u8]) -> Result<BasicResponse> {
    use der::*;
    let outer = single(data, SEQUENCE)?;
    let mut r = Reader::new(outer.content);
    let tbs = r.expect(SEQUENCE)?;
    let alg = r.expect(SEQUENCE)?;
    let sig = r.expect(BIT_STRING)?.content;
    let mut certs = Vec::new();
    if let Some(c) = r.optional(ctx(0))? {
        let list = single(c.content, SEQUENCE)?;
        let mut l = Reader::new(list.content);
        while !l.is_empty() {
            certs.push(l.expect(SEQUENCE)?.raw.to_vec());
        }
    }
    r.finish()?;
    let mut a = Reader::new(alg.content);
    let signature_alg = a.expect(OID)?.content.to_vec();
    a.finish()?;
    if sig.first() != Some(&0) {
        bail!("signature BIT STRING has unused bits");
    }

    let mut t = Reader::new(tbs.content);
    if let Some(v) = t.optional(ctx(0))?
        && single(v.content, INTEGER)?.content != [0]
    {
        bail!("unsupported ResponseData version");
    }
    match t.peek_tag() {
        Some(0xa1) | Some(0xa2) => {
            t.any()?;
        }
        _ => bail!("bad responderID"),
    }
    let produced_at = parse_generalized_time(t.expect(GENERALIZED_TIME)?.content)?;
    let list = t.expect(SEQUENCE)?;
    let mut responses = Vec::new();
    let mut l = Reader::new(list.content);
    while !l.is_empty() {
        responses.push(decode_single(l.expect(SEQUENCE)?.content)?);
    }
    let mut nonce = None;
    if let Some(exts) = t.optional(ctx(1))? {
        for ext in extensions(exts.content)? {
            if ext.0 == OID_OCSP_NONCE {
                nonce = Some(single(ext.1, OCTET_STRING)?.content.to_vec());
            }
        }
    }
    t.finish()?;
    Ok(BasicResponse {
        tbs: tbs.raw.to_vec(),
        produced_at,
        responses,
        nonce,
        signature_alg,
        signature: sig[1..].to_vec(),
        certs,
    })
}

/// (OID, extnValue content) of each extension in an `[n] EXPLICIT Extensions`.
pub fn extensions(explicit_content: &[u8]) -> Result<Vec<(&[u8], &[u8])>> {
    use der::*;
    let list = single(explicit_content, SEQUENCE)?;
    let mut r = Reader::new(list.content);
    let mut out = Vec::new();
    while !r.is_empty() {
        let ext = r.expect(SEQUENCE)?;
        let mut e = Reader::new(ext.content);
        let oid = e.expect(OID)?.content;
        e.optional(BOOLEAN)?;
        let value = e.expect(OCTET_STRING)?.content;
        e.finish()?;
        out.push((oid, value));
    }
    Ok(out)
}

fn decode_single(content: &[u8]) -> Result<SingleResponse> {
    use der::*;
    let mut r = Reader::new(content);
    let cert_id = CertId::parse(r.expect(SEQUENCE)?.content)?;
    let st = r.any()?;
    let status = match st.tag {
        0x80 if st.content.is_empty() => CertStatus::Good,
        0x82 if st.content.is_empty() => CertStatus::Unknown,
        0xa1 => {
            let mut ri = Reader::new(st.content);
            let at = parse_generalized_time(ri.expect(GENERALIZED_TIME)?.content)?;
            let reason = match ri.optional(ctx(0))? {
                Some(x) => {
                    let e = single(x.content, ENUMERATED)?.content;
                    if e.len() != 1 {
                        bail!("bad revocation reason");
                    }
                    Some(e[0])
                }
                None => None,
            };
            ri.finish()?;
            CertStatus::Revoked { at, reason }
        }
        _ => bail!("bad certStatus"),
    };
    let this_update = parse_generalized_time(r.expect(GENERALIZED_TIME)?.content)?;
    let next_update = r
        .optional(ctx(0))?
        .map(|x| parse_generalized_time(single(x.content, GENERALIZED_TIME)?.content))
        .transpose()?;
    r.optional(ctx(1))?;
    r.finish()?;
    Ok(SingleResponse {
        cert_id,
        status,
        this_update,
        next_update,
    })
}

/// Verifies an ECDSA signature by the key in `spki_der`'s certificate.
pub fn verify_ecdsa(public_key: &[u8], alg_oid: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    let alg: &dyn ring::signature::VerificationAlgorithm = if alg_oid == OID_ECDSA_SHA256 {
        &ring::signature::ECDSA_P256_SHA256_ASN1
    } else if alg_oid == OID_ECDSA_SHA384 {
        &ring::signature::ECDSA_P384_SHA384_ASN1
    } else {
        bail!("unsupported OCSP signature algorithm");
    };
    ring::signature::UnparsedPublicKey::new(alg, public_key)
        .verify(msg, sig)
        .map_err(|_| anyhow!("the OCSP response signature does not verify"))
}

/// What a verified response says about one certificate.
#[derive(Debug, Clone)]
pub struct Verified {
    pub single: SingleResponse,
    pub produced_at: i64,
    /// Who signed: "delegated responder <subject>" or "the issuer".
    pub signer: String,
}

/// Verifies a successful response for `id` issued by `issuer_der`: signed
/// by the issuer or by a delegated responder certificate it issued (EKU
/// OCSPSigning, valid at `now`); the CertID matches; thisUpdate is not in
/// the future (beyond `skew`) and nextUpdate, present, not past.
pub fn verify_response(
    data: &[u8],
    id: &CertId,
    issuer_der: &[u8],
    now: i64,
    skew: i64,
) -> Result<Verified> {
    let (status, basic) = decode_response(data).context("decoding the OCSP response")?;
    let basic = match (status, basic) {
        (ResponseStatus::Successful, Some(b)) => b,
        (s, _) => bail!("the OCSP responder answered {}", s.name()),
    };
    let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der)
        .map_err(|e| anyhow!("parsing the issuer: {e}"))?;
    let issuer_key = issuer.public_key().subject_public_key.data.to_vec();
    let signer = if verify_ecdsa(
        &issuer_key,
        &basic.signature_alg,
        &basic.tbs,
        &basic.signature,
    )
    .is_ok()
    {
        "the issuer".to_owned()
    } else {
        let mut found = None;
        for c in &basic.certs {
            let (_, cert) = x509_parser::parse_x509_certificate(c)
                .map_err(|e| anyhow!("parsing a responder certificate: {e}"))?;
            if cert.issuer() != issuer.subject()
                || cert.verify_signature(Some(issuer.public_key())).is_err()
            {
                continue;
            }
            let ocsp_signing = cert
                .extended_key_usage()
                .ok()
                .flatten()
                .is_some_and(|e| e.value.ocsp_signing);
            if !ocsp_signing {
                bail!("the responder certificate lacks the OCSPSigning extended key usage");
            }
            let v = cert.validity();
            if now < v.not_before.timestamp() - skew || now > v.not_after.timestamp() + skew {
                bail!("the responder certificate is not valid now");
            }
            verify_ecdsa(
                &cert.public_key().subject_public_key.data,
                &basic.signature_alg,
                &basic.tbs,
                &basic.signature,
            )?;
            found = Some(format!("delegated responder {}", cert.subject()));
            break;
        }
        found.context(
            "the OCSP response is signed neither by the issuer nor by a responder it certified",
        )?
    };
    let single = basic
        .responses
        .iter()
        .find(|s| s.cert_id.serial == id.serial && issuer_matches(&s.cert_id, id))
        .cloned()
        .context("the OCSP response does not cover this certificate")?;
    if single.this_update > now + skew {
        bail!("the OCSP response's thisUpdate is in the future");
    }
    match single.next_update {
        Some(n) if n < now - skew => bail!("the OCSP response has expired (nextUpdate passed)"),
        Some(n) if n < single.this_update => {
            bail!("the OCSP response's nextUpdate precedes thisUpdate")
        }
        _ => {}
    }
    Ok(Verified {
        single,
        produced_at: basic.produced_at,
        signer,
    })
}

fn issuer_matches(a: &CertId, b: &CertId) -> bool {
    a.hash == b.hash
        && a.issuer_name_hash == b.issuer_name_hash
        && a.issuer_key_hash == b.issuer_key_hash
}

/// The OCSP responder URL in a certificate's authorityInfoAccess, if any.
pub fn ocsp_url(cert_der: &[u8]) -> Result<Option<String>> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| anyhow!("parsing the certificate: {e}"))?;
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for d in &aia.accessdescs {
                if d.access_method.to_id_string() == "1.3.6.1.5.5.7.48.1"
                    && let GeneralName::URI(u) = &d.access_location
                {
                    return Ok(Some((*u).to_owned()));
                }
            }
        }
    }
    Ok(None)
}

/// The serial of a certificate, as INTEGER content bytes.
pub fn cert_serial(cert_der: &[u8]) -> Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| anyhow!("parsing the certificate: {e}"))?;
    Ok(cert.raw_serial().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_strict() {
        assert!(
            der::Reader::new(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0])
                .any()
                .is_err()
        );
        assert!(der::Reader::new(&[0x30, 0x80, 0, 0]).any().is_err());
        assert!(der::Reader::new(&[0x30, 0x05, 0]).any().is_err());
        let long = der::tlv(0x04, &[7u8; 300]);
        let t = der::single(&long, 0x04).unwrap();
        assert_eq!(t.content.len(), 300);
    }

    #[test]
    fn generalized_time_round_trips() {
        let t = 1_800_000_123;
        let enc = der::generalized_time(t);
        let back =
            der::parse_generalized_time(der::single(&enc, der::GENERALIZED_TIME).unwrap().content)
                .unwrap();
        assert_eq!(back, t);
        assert!(der::parse_generalized_time(b"20261301000000Z").is_err());
    }

    #[test]
    fn integers_are_minimal() {
        assert_eq!(der::uint(&[0x00, 0x00, 0x05]), vec![0x02, 0x01, 0x05]);
        assert_eq!(der::uint(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der::uint(&[0x00]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn a_request_round_trips_through_the_cert_id_parser() {
        let issuer = IssuerKeys {
            name_der: vec![0x30, 0x00],
            public_key: vec![4; 65],
        };
        let id = CertId::new(CertIdHash::Sha256, &issuer, &[0x40, 1, 2]);
        assert!(issuer.matches(&id));
        let req = encode_request(&id, Some(&[9; 16]));
        let outer = der::single(&req, der::SEQUENCE).unwrap();
        let tbs = der::single(outer.content, der::SEQUENCE).unwrap();
        let mut r = der::Reader::new(tbs.content);
        let list = r.expect(der::SEQUENCE).unwrap();
        let one = der::single(list.content, der::SEQUENCE).unwrap();
        let cid = der::single(one.content, der::SEQUENCE).unwrap();
        assert_eq!(CertId::parse(cid.content).unwrap(), id);
        assert_eq!(id.serial_hex().unwrap(), "400102");
    }
}
