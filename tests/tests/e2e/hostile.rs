//! The hostile-input suite: one server, a table of hostile requests (bodies,
//! names, keys, extensions, PSK states, HTTP/1.1 and HTTP/2 framing, slow and
//! idle clients), and for each case the exact outcome (status and error code,
//! or the server closing the connection), a healthy server afterwards, and
//! exactly the effects it may have: no PSK consumed and no certificate
//! recorded unless the case expects one, and each refusal counted once in the
//! audit log under its precise reason. A certificate that is issued is
//! checked against the profile: nothing the CSR asked for is honoured.
//!
//! The summary (cases, outcomes) goes to `target/tmp/hostile-summary.txt`;
//! scripts/test.sh prints it at the end of the suite.

use bytes::Bytes;
use ca_tests::forge::{self, CsrSpec, Ext, Gn, cn, cn_bytes, dns, psk_ext, san_ext, seq, tag, tlv};
use ca_tests::raw::{self, Seen};
use ca_tests::*;
use http::Method;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// The PSK the openssl-made fixtures carry (policy/tests/fixtures/regen.sh).
const FIXTURE_PSK: &str = "fixture-psk-0123456789abcdefghijklmnop";
const FIXTURE_HOST: &str = "web1.example.internal";
/// Connection limit of the suite's server (the over-limit case opens more).
const MAX_CONNECTIONS: usize = 64;

fn fixture(name: &str) -> Vec<u8> {
    read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../policy/tests/fixtures")
            .join(name),
    )
}

/// What a case must see.
#[derive(Debug, Clone)]
enum Expect {
    /// This status and JSON error code (`""` for a success without one).
    Http(u16, &'static str),
    /// A status hyper answers itself at the protocol level (no JSON body).
    Protocol(u16),
    /// The server closes the connection without answering.
    Closed,
    /// Exactly this (HTTP/2 stream resets and GOAWAYs).
    Seen(Seen),
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Http(s, "") => write!(f, "{s}"),
            Expect::Http(s, c) => write!(f, "{s} {c}"),
            Expect::Protocol(s) => write!(f, "{s} (protocol)"),
            Expect::Closed => f.write_str("closed by server"),
            Expect::Seen(seen) => write!(f, "{seen}"),
        }
    }
}

/// What a case may change in the store.
#[derive(Debug, Clone)]
enum Effect {
    /// Nothing: every PSK still live, no new certificate.
    Nothing,
    /// The PSK of this host spent and exactly one certificate for it, which
    /// carries the server's profile only.
    Issued(&'static str),
    /// The recorded certificate handed out again: nothing changes.
    Replayed,
    /// The PSK of this host burned (expired), no certificate.
    Burned(&'static str),
}

/// How a case talks to the server.
enum Action {
    /// `POST /v1/sign` over HTTP/1.1 with a well-formed request.
    Sign(Vec<u8>, Option<&'static str>),
    /// Any method and path over HTTP/1.1.
    Request(Method, &'static str, Vec<u8>),
    /// These bytes, as they are, on a fresh TLS connection.
    Raw(Vec<u8>),
    /// An HTTP/2 request.
    H2(&'static str, &'static str, Option<&'static str>, Vec<u8>),
    /// Something that needs its own choreography.
    Special(Special),
}

#[derive(Debug, Clone, Copy)]
enum Special {
    EndlessChunked,
    Smuggle,
    SlowHeaders,
    SlowBody,
    SlowTlsHandshake,
    SilentTcp,
    IdleTls,
    IdleKeepAlive,
    PlaintextHttp,
    ManyIdle,
    OverConnectionLimit,
    H2Idle,
    H2SlowBody,
    H2RapidReset,
    H2ContentLengthMismatch,
    WaitForExpiry,
}

struct Case {
    group: &'static str,
    name: String,
    action: Action,
    expect: Expect,
    effect: Effect,
    /// Precise audit reason (prefix) of a refusal the authority makes.
    audit: Option<&'static str>,
}

fn case(group: &'static str, name: &str, action: Action, expect: Expect) -> Case {
    let audit = match &expect {
        Expect::Http(_, code) => audit_reason_of(code),
        _ => None,
    };
    Case {
        group,
        name: name.to_owned(),
        action,
        expect,
        effect: Effect::Nothing,
        audit,
    }
}

/// Refusals made by the authority are audited under their code (PSK
/// failures under a precise reason the case names itself).
fn audit_reason_of(code: &str) -> Option<&'static str> {
    [
        "empty_body",
        "malformed_csr",
        "duplicate_extension",
        "bad_signature",
        "key_not_allowed",
        "signature_algorithm_not_allowed",
        "invalid_hostname",
        "name_not_allowed",
    ]
    .into_iter()
    .find(|c| *c == code)
}

impl Case {
    fn effect(mut self, effect: Effect) -> Case {
        self.effect = effect;
        self
    }

    fn audit(mut self, reason: &'static str) -> Case {
        self.audit = Some(reason);
        self
    }
}

/// The hosts the suite registers PSKs for, beyond the fixture host.
const HOSTS: &[&str] = &[
    "names.example.internal",
    "other.example.internal",
    "ca-true.example.internal",
    "key-usage.example.internal",
    "name-constraints.example.internal",
    "validity.example.internal",
    "eku.example.internal",
    "urls.example.internal",
    "subject.example.internal",
    "critical.example.internal",
    "reuse.example.internal",
    "h2.example.internal",
    "huge-oid.example.internal",
];
const EXPIRING: &str = "expired.example.internal";

struct Suite {
    server: CaServer,
    psks: BTreeMap<&'static str, String>,
    expiring_since: Instant,
    bodies: Vec<Bytes>,
}

fn sign(body: Vec<u8>) -> Action {
    Action::Sign(body, Some("application/pkcs10"))
}

fn p256_csr(spec: &CsrSpec) -> Vec<u8> {
    forge::forge(&forge::p256(), spec)
}

impl Suite {
    fn psk(&self, host: &str) -> String {
        self.psks[host].clone()
    }

    /// CN=`host` with its own PSK and `exts`, signed by a fresh P-256 key.
    fn csr(&self, host: &str, exts: Vec<Ext>) -> Vec<u8> {
        let mut spec = CsrSpec::host(host, &self.psk(host));
        spec.extensions.extend(exts);
        p256_csr(&spec)
    }

    /// A CSR with `subject` and the PSK of names.example.internal.
    fn named(&self, subject: Vec<forge::Rdn>, exts: Vec<Ext>) -> Vec<u8> {
        let mut spec = CsrSpec {
            subject,
            extensions: vec![psk_ext(&self.psk("names.example.internal"))],
            ..Default::default()
        };
        spec.extensions.extend(exts);
        p256_csr(&spec)
    }

    fn cases(&self) -> Vec<Case> {
        let mut v = Vec::new();
        // PSK states first: the expiring PSK must not be swept before its case.
        self.psk_states(&mut v);
        self.malformed(&mut v);
        self.signatures_and_keys(&mut v);
        self.names(&mut v);
        self.extensions(&mut v);
        self.not_honoured(&mut v);
        self.http(&mut v);
        self.slow_and_idle(&mut v);
        self.http2(&mut v);
        v
    }

    fn malformed(&self, v: &mut Vec<Case>) {
        let good = fixture("p256.der");
        let pem_text = String::from_utf8(fixture("p256.pem")).unwrap();
        let m = |v: &mut Vec<Case>, name: &str, body: Vec<u8>| {
            v.push(case(
                "malformed",
                name,
                sign(body),
                Expect::Http(400, "malformed_csr"),
            ));
        };
        m(
            v,
            "garbage text",
            b"this is not a certificate request".to_vec(),
        );
        m(v, "garbage DER-looking bytes", {
            let mut b = vec![0x30, 0x82, 0x01, 0x00];
            b.extend((0..256u32).map(|i| (i * 7919 % 251) as u8));
            b
        });
        m(v, "truncated DER", good[..good.len() - 20].to_vec());
        m(
            v,
            "trailing bytes after the DER",
            [good.clone(), b"xx".to_vec()].concat(),
        );
        m(
            v,
            "two CSRs in one PEM body",
            format!("{pem_text}{pem_text}").into_bytes(),
        );
        m(
            v,
            "PEM with the wrong label",
            pem_text
                .replace("CERTIFICATE REQUEST", "CERTIFICATE")
                .into_bytes(),
        );
        m(v, "PEM with a base64 error", {
            let mut lines: Vec<String> = pem_text.lines().map(str::to_owned).collect();
            lines[2].replace_range(5..7, "!*");
            lines.join("\n").into_bytes()
        });
        m(v, "PEM without its END line", {
            let cut = pem_text.find("-----END").unwrap();
            pem_text.as_bytes()[..cut].to_vec()
        });
        m(
            v,
            "empty PEM block",
            b"-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n".to_vec(),
        );
        m(
            v,
            "huge length field",
            vec![0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x30, 0x00],
        );
        m(v, "indefinite length", {
            let (_, content) = split_outer(&good);
            [vec![0x30, 0x80], content.to_vec(), vec![0, 0]].concat()
        });
        m(v, "non-minimal length", {
            let (_, content) = split_outer(&good);
            let n = content.len();
            [
                vec![0x30, 0x84, 0, 0, (n >> 8) as u8, n as u8],
                content.to_vec(),
            ]
            .concat()
        });
        m(v, "deeply nested ASN.1", {
            let mut inner = Vec::new();
            for _ in 0..5000 {
                inner = tlv(tag::SEQUENCE, &inner);
            }
            inner
        });
        m(v, "a certificate instead of a CSR", {
            pem::parse(read(&self.server.root_pem()))
                .unwrap()
                .into_contents()
        });
        m(
            v,
            "thousands of extensions",
            self.csr(
                "names.example.internal",
                (0..2000)
                    .map(|i| Ext::new(&format!("1.3.6.1.4.1.99999.{i}"), vec![5, 0]))
                    .collect(),
            ),
        );
        m(v, "version 2 request", {
            let mut spec = CsrSpec::host(
                "names.example.internal",
                &self.psk("names.example.internal"),
            );
            spec.version = 1;
            p256_csr(&spec)
        });
        m(
            v,
            "commonName that is not UTF-8",
            self.named(vec![cn_bytes(&[0xff, 0xfe, 0x41])], vec![]),
        );
        v.push(case(
            "malformed",
            "empty body",
            Action::Sign(vec![], None),
            Expect::Http(400, "empty_body"),
        ));
        v.push(case(
            "malformed",
            "whitespace-only body",
            Action::Sign(b" \r\n\t \n".to_vec(), None),
            Expect::Http(400, "empty_body"),
        ));
        // A huge OID arc in an otherwise ignored extension: refused, not parsed at length.
        let mut huge_oid = Ext::new("1.2.3", vec![5, 0]);
        huge_oid.oid = tlv(tag::OID, &[&[0x2a][..], &[0xff; 200], &[0x01]].concat());
        m(
            v,
            "huge OID arc",
            self.csr("huge-oid.example.internal", vec![huge_oid]),
        );
    }

    fn signatures_and_keys(&self, v: &mut Vec<Case>) {
        let host = "names.example.internal";
        let spec = CsrSpec::host(host, &self.psk(host));
        let key = forge::p256();
        let tampered = {
            let info = forge::request_info(&key, &spec);
            let mut sig = rcgen::SigningKey::sign(&key, &info).unwrap();
            let last = sig.len() - 3;
            sig[last] ^= 0x01;
            forge::assemble(&key, &spec, info, &sig)
        };
        v.push(case(
            "signature",
            "bad self-signature",
            sign(tampered),
            Expect::Http(400, "bad_signature"),
        ));
        let other = forge::p256();
        let mut foreign = spec.clone();
        foreign.spki = Some(rcgen::PublicKeyData::subject_public_key_info(&other));
        v.push(case(
            "signature",
            "signed by a key other than the CSR's",
            sign(p256_csr(&foreign)),
            Expect::Http(400, "bad_signature"),
        ));
        let mut claims_rsa = spec.clone();
        claims_rsa.signature_algorithm =
            Some(seq(&[forge::oid("1.2.840.113549.1.1.11"), vec![5, 0]]));
        v.push(case(
            "signature",
            "RSA algorithm claimed for an EC key",
            sign(p256_csr(&claims_rsa)),
            Expect::Http(422, "signature_algorithm_not_allowed"),
        ));
        let mut sha512 = spec.clone();
        sha512.signature_algorithm = Some(seq(&[forge::oid("1.2.840.10045.4.3.4")]));
        v.push(case(
            "signature",
            "ECDSA with SHA-512",
            sign(p256_csr(&sha512)),
            Expect::Http(422, "signature_algorithm_not_allowed"),
        ));
        for (name, file) in [
            ("SHA-1 RSA signature", "rsa2048-sha1.der"),
            ("MD5 RSA signature", "rsa2048-md5.der"),
            ("SHA-1 ECDSA signature", "p256-ecdsa-sha1.der"),
        ] {
            v.push(case(
                "signature",
                name,
                sign(fixture(file)),
                Expect::Http(422, "signature_algorithm_not_allowed"),
            ));
        }
        for (name, file) in [
            ("DSA key", "dsa.der"),
            ("RSA 1024", "rsa1024.der"),
            ("RSA 2050 (not a multiple of 8)", "rsa2050.der"),
            ("RSA exponent 3", "rsa-e3.der"),
            (
                "RSA key without NULL parameters",
                "rsa2048-no-null-params.der",
            ),
            ("P-521", "p521.der"),
            ("secp256k1", "secp256k1.der"),
            ("explicit curve parameters", "explicit-curve.der"),
            ("compressed EC point", "compressed-point.der"),
        ] {
            v.push(case(
                "key",
                name,
                sign(fixture(file)),
                Expect::Http(422, "key_not_allowed"),
            ));
        }
        // The CA's own intermediate key, with a valid PSK.
        let int_key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(self.server.data_dir.join("intermediate.key")).unwrap(),
        )
        .unwrap();
        v.push(case(
            "key",
            "the CA's own public key",
            sign(forge::forge(&int_key, &spec)),
            Expect::Http(422, "key_not_allowed"),
        ));
    }

    fn names(&self, v: &mut Vec<Case>) {
        let inv = |v: &mut Vec<Case>, name: &str, body: Vec<u8>| {
            v.push(case(
                "names",
                name,
                sign(body),
                Expect::Http(422, "invalid_hostname"),
            ));
        };
        let cn_case = |v: &mut Vec<Case>, name: &str, cn_text: &str| {
            inv(v, name, self.named(vec![cn(cn_text)], vec![]));
        };
        cn_case(v, "uppercase CN", "Names.example.internal");
        cn_case(v, "trailing dot", "names.example.internal.");
        cn_case(v, "empty label", "names..example.internal");
        cn_case(v, "leading hyphen", "-names.example.internal");
        cn_case(v, "path traversal ..", "../../etc/passwd");
        cn_case(v, "slash", "names.example.internal/x");
        cn_case(v, "percent-encoded dots", "%2e%2e.example.internal");
        cn_case(v, "shell substitution", "$(reboot).example.internal");
        cn_case(v, "space", "names example.internal");
        cn_case(v, "terminal escape", "\u{1b}[31mnames.example.internal");
        cn_case(v, "bidi override", "names\u{202e}.example.internal");
        cn_case(v, "IDN in U-label form", "bücher.example.internal");
        cn_case(v, "IP address as CN", "10.0.0.1");
        cn_case(v, "wildcard CN", "*.example.internal");
        cn_case(
            v,
            "label over 63 characters",
            &format!("{}.example.internal", "a".repeat(64)),
        );
        cn_case(
            v,
            "name over 253 characters",
            &vec!["abcdefghi"; 26].join("."),
        );
        inv(
            v,
            "NUL in CN",
            self.named(
                vec![cn_bytes(b"names.example.internal\0.evil.example")],
                vec![],
            ),
        );
        inv(v, "no CN at all", {
            let o = forge::Rdn {
                oid: "2.5.4.10",
                tag: tag::UTF8,
                value: b"Example".to_vec(),
            };
            self.named(vec![o], vec![])
        });
        let host = "names.example.internal";
        let san = |names: Vec<Gn>| self.named(vec![cn(host)], vec![san_ext(&names)]);
        inv(v, "wildcard SAN", san(dns(&[host, "*.example.internal"])));
        inv(
            v,
            "NUL in a DNS SAN",
            san(vec![Gn::Dns(
                b"names.example.internal\0.evil.example".to_vec(),
            )]),
        );
        let refused = |v: &mut Vec<Case>, name: &str, body: Vec<u8>| {
            v.push(case(
                "names",
                name,
                sign(body),
                Expect::Http(422, "name_not_allowed"),
            ));
        };
        refused(
            v,
            "IP SAN not allowed for the PSK",
            san(vec![Gn::Ip(vec![10, 9, 9, 9])]),
        );
        refused(
            v,
            "e-mail SAN",
            san(vec![Gn::Email("root@example.internal".into())]),
        );
        refused(
            v,
            "URI SAN",
            san(vec![Gn::Uri("https://evil.example/".into())]),
        );
        refused(
            v,
            "otherName SAN",
            san(vec![Gn::Other(
                "1.3.6.1.4.1.311.20.2.3".into(),
                "admin@example".into(),
            )]),
        );
        refused(
            v,
            "a SAN for another host",
            san(dns(&[host, "evil.example.internal"])),
        );
        refused(
            v,
            "two CNs",
            self.named(vec![cn(host), cn("other.example.internal")], vec![]),
        );
        v.push(
            case(
                "names",
                "CN of another host with this PSK",
                sign(self.named(vec![cn("other.example.internal")], vec![])),
                Expect::Http(403, "psk_rejected"),
            )
            .audit("psk_wrong"),
        );
    }

    fn extensions(&self, v: &mut Vec<Case>) {
        let host = "names.example.internal";
        let psk = self.psk(host);
        v.push(case(
            "extensions",
            "duplicated subjectAltName",
            sign(self.csr(host, vec![san_ext(&dns(&[host])), san_ext(&dns(&[host]))])),
            Expect::Http(400, "duplicate_extension"),
        ));
        v.push(case(
            "extensions",
            "two PSK extensions",
            sign(self.csr(host, vec![psk_ext(&psk)])),
            Expect::Http(400, "duplicate_extension"),
        ));
        let mal = |v: &mut Vec<Case>, name: &str, spec: CsrSpec| {
            v.push(case(
                "extensions",
                name,
                sign(p256_csr(&spec)),
                Expect::Http(400, "malformed_csr"),
            ));
        };
        let with_psk_value = |value: Vec<u8>| CsrSpec {
            subject: vec![cn(host)],
            extensions: vec![Ext::new(policy::psk::PSK_OID_STR, value)],
            ..Default::default()
        };
        mal(
            v,
            "PSK as an OCTET STRING",
            with_psk_value(tlv(tag::OCTET_STRING, psk.as_bytes())),
        );
        mal(
            v,
            "PSK as a PrintableString",
            with_psk_value(tlv(tag::PRINTABLE, psk.as_bytes())),
        );
        mal(
            v,
            "PSK UTF8String with trailing bytes",
            with_psk_value([tlv(tag::UTF8, psk.as_bytes()), vec![0, 0]].concat()),
        );
        mal(
            v,
            "PSK of 600 characters",
            with_psk_value(tlv(tag::UTF8, "x".repeat(600).as_bytes())),
        );
        mal(
            v,
            "PSK with a control character",
            with_psk_value(tlv(tag::UTF8, b"abc\x07def")),
        );
        let mut conflicting = CsrSpec::host(host, &psk);
        conflicting.extra_attributes = vec![forge::challenge_password("another-secret-value")];
        self.remember("another-secret-value");
        mal(v, "PSK and challengePassword that differ", conflicting);
        let mut twice = CsrSpec::host(host, &psk);
        twice.extra_attributes = vec![forge::extension_request(&[san_ext(&dns(&[host]))])];
        mal(v, "two extensionRequest attributes", twice);
    }

    /// Requests the certificate must not honour: issued, with the server's profile only.
    fn not_honoured(&self, v: &mut Vec<Case>) {
        let issued = |v: &mut Vec<Case>, name: &str, host: &'static str, body: Vec<u8>| {
            v.push(
                case("not honoured", name, sign(body), Expect::Http(201, ""))
                    .effect(Effect::Issued(host)),
            );
        };
        let bc = Ext::new(
            "2.5.29.19",
            seq(&[vec![1, 1, 0xff], tlv(tag::INTEGER, &[5])]),
        )
        .critical();
        issued(
            v,
            "CA:TRUE with pathLen",
            "ca-true.example.internal",
            self.csr("ca-true.example.internal", vec![bc]),
        );
        let ku = Ext::new("2.5.29.15", tlv(tag::BIT_STRING, &[0x01, 0x86])).critical();
        issued(
            v,
            "keyCertSign and cRLSign",
            "key-usage.example.internal",
            self.csr("key-usage.example.internal", vec![ku]),
        );
        let nc = Ext::new(
            "2.5.29.30",
            seq(&[tlv(0xa0, &seq(&[tlv(0x82, b"example.internal")]))]),
        )
        .critical();
        issued(
            v,
            "name constraints",
            "name-constraints.example.internal",
            self.csr("name-constraints.example.internal", vec![nc]),
        );
        let host = "validity.example.internal";
        let mut long = CsrSpec::host(host, &self.psk(host));
        long.extensions.push(Ext::new(
            "2.5.29.16",
            seq(&[tlv(0x80, b"20200101000000Z"), tlv(0x81, b"21250101000000Z")]),
        ));
        // Microsoft's ValidityPeriod request attribute: 100 years.
        let bmp = |s: &str| {
            tlv(
                0x1e,
                &s.encode_utf16()
                    .flat_map(u16::to_be_bytes)
                    .collect::<Vec<_>>(),
            )
        };
        long.extra_attributes = vec![seq(&[
            forge::oid("1.3.6.1.4.1.311.13.2.1"),
            forge::set(&[
                seq(&[bmp("ValidityPeriod"), bmp("Years")]),
                seq(&[bmp("ValidityPeriodUnits"), bmp("100")]),
            ]),
        ])];
        issued(v, "100-year validity", host, p256_csr(&long));
        let eku = Ext::new(
            "2.5.29.37",
            seq(&[forge::oid("2.5.29.37.0"), forge::oid("1.3.6.1.5.5.7.3.3")]),
        );
        issued(
            v,
            "anyExtendedKeyUsage and codeSigning",
            "eku.example.internal",
            self.csr("eku.example.internal", vec![eku]),
        );
        let uri = |u: &str| tlv(0x86, u.as_bytes());
        let aia = Ext::new(
            "1.3.6.1.5.5.7.1.1",
            seq(&[seq(&[
                forge::oid("1.3.6.1.5.5.7.48.2"),
                uri("http://evil.example/ca.crt"),
            ])]),
        );
        let cdp = Ext::new(
            "2.5.29.31",
            seq(&[seq(&[tlv(
                0xa0,
                &tlv(0xa0, &uri("http://evil.example/crl")),
            )])]),
        );
        issued(
            v,
            "foreign AIA and CRL URLs",
            "urls.example.internal",
            self.csr("urls.example.internal", vec![aia, cdp]),
        );
        let host = "subject.example.internal";
        let rdn = |oid: &'static str, tag: u8, value: &str| forge::Rdn {
            oid,
            tag,
            value: value.as_bytes().to_vec(),
        };
        let mut subject = CsrSpec::host(host, &self.psk(host));
        subject.subject = vec![
            rdn("2.5.4.10", tag::UTF8, "Evil Corp"),
            cn(host),
            rdn("2.5.4.11", tag::UTF8, "ops"),
            rdn("1.2.840.113549.1.9.1", tag::IA5, "root@evil.example"),
        ];
        issued(v, "extra subject attributes", host, p256_csr(&subject));
        let crit = Ext::new("1.3.6.1.4.1.99999.1", tlv(tag::OCTET_STRING, b"x")).critical();
        issued(
            v,
            "unknown critical extension",
            "critical.example.internal",
            self.csr("critical.example.internal", vec![crit]),
        );
    }

    fn psk_states(&self, v: &mut Vec<Case>) {
        let host = "names.example.internal";
        let wrong = "W".repeat(43);
        self.remember(&wrong);
        let psk_case = |v: &mut Vec<Case>, name: &str, body: Vec<u8>, reason: &'static str| {
            v.push(case("psk", name, sign(body), Expect::Http(403, "psk_rejected")).audit(reason));
        };
        psk_case(
            v,
            "wrong PSK",
            p256_csr(&CsrSpec::host(host, &wrong)),
            "psk_wrong",
        );
        psk_case(
            v,
            "unknown host",
            p256_csr(&CsrSpec::host("nobody.example.internal", &wrong)),
            "psk_unknown_host",
        );
        psk_case(
            v,
            "no PSK",
            p256_csr(&CsrSpec {
                subject: vec![cn(host)],
                ..Default::default()
            }),
            "psk_missing",
        );
        psk_case(
            v,
            "PSK of another host",
            p256_csr(&CsrSpec::host(host, &self.psk("other.example.internal"))),
            "psk_wrong",
        );
        let reuse = "reuse.example.internal";
        let first = self.csr(reuse, vec![]);
        v.push(
            case(
                "psk",
                "first use",
                sign(first.clone()),
                Expect::Http(201, ""),
            )
            .effect(Effect::Issued(reuse)),
        );
        psk_case(
            v,
            "reuse with another key",
            self.csr(reuse, vec![]),
            "psk_used",
        );
        v.push(
            case(
                "psk",
                "idempotent retry with the same key",
                sign(first),
                Expect::Http(200, ""),
            )
            .effect(Effect::Replayed),
        );
        v.push(
            case(
                "psk",
                "expired PSK",
                Action::Special(Special::WaitForExpiry),
                Expect::Http(403, "psk_rejected"),
            )
            .effect(Effect::Burned(EXPIRING))
            .audit("psk_expired"),
        );
    }

    fn http(&self, v: &mut Vec<Case>) {
        let body = self.csr("names.example.internal", vec![]);
        v.push(case(
            "http",
            "body over 64 KiB",
            Action::Sign(vec![b'A'; 64 * 1024 + 1], None),
            Expect::Http(413, "body_too_large"),
        ));
        v.push(case(
            "http",
            "Content-Length of 10 GB",
            Action::Raw(raw::sign_head(&[
                "Content-Length: 10000000000",
                "Connection: close",
            ])),
            Expect::Http(413, "body_too_large"),
        ));
        v.push(case(
            "http",
            "Expect: 100-continue with an oversize length",
            Action::Raw(raw::sign_head(&[
                "Content-Length: 70000",
                "Expect: 100-continue",
                "Connection: close",
            ])),
            Expect::Http(413, "body_too_large"),
        ));
        v.push(case(
            "http",
            "endless chunked body",
            Action::Special(Special::EndlessChunked),
            Expect::Http(413, "body_too_large"),
        ));
        for (name, ct) in [
            ("JSON content type", "application/json"),
            (
                "form content type (curl's default)",
                "application/x-www-form-urlencoded",
            ),
            ("multipart content type", "multipart/form-data; boundary=x"),
            ("HTML content type", "text/html"),
        ] {
            v.push(case(
                "http",
                name,
                Action::Sign(body.clone(), Some(ct)),
                Expect::Http(400, "unsupported_content_type"),
            ));
        }
        let len = body.len().to_string();
        let with_body = |headers: &[&str]| [raw::sign_head(headers), body.clone()].concat();
        // Request smuggling: hyper frames by Transfer-Encoding (RFC 9112 6.3),
        // answers once and closes, so the request hidden behind is never read.
        v.push(
            case(
                "http",
                "Content-Length and Transfer-Encoding (smuggling)",
                Action::Special(Special::Smuggle),
                Expect::Http(403, "psk_rejected"),
            )
            .audit("psk_wrong"),
        );
        v.push(case(
            "http",
            "two different Content-Lengths",
            Action::Raw(with_body(&[
                &format!("Content-Length: {len}"),
                "Content-Length: 5",
                "Connection: close",
            ])),
            Expect::Protocol(400),
        ));
        v.push(case(
            "http",
            "invalid Content-Length",
            Action::Raw(with_body(&["Content-Length: 12abc", "Connection: close"])),
            Expect::Protocol(400),
        ));
        v.push(case(
            "http",
            "header over 64 KiB",
            Action::Raw(raw::sign_head(&[&format!("X-Big: {}", "a".repeat(70_000))])),
            Expect::Protocol(431),
        ));
        let many: Vec<String> = (0..200).map(|i| format!("X-H{i}: v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        v.push(case(
            "http",
            "200 headers",
            Action::Raw(raw::sign_head(&many)),
            Expect::Protocol(431),
        ));
        for (name, method, path, status, code) in [
            (
                "GET on the signer",
                Method::GET,
                "/v1/sign",
                405,
                "method_not_allowed",
            ),
            (
                "PUT on the signer",
                Method::PUT,
                "/v1/sign",
                405,
                "method_not_allowed",
            ),
            (
                "trailing slash",
                Method::POST,
                "/v1/sign/",
                404,
                "not_found",
            ),
            ("double slash", Method::POST, "//v1/sign", 404, "not_found"),
            ("uppercase path", Method::POST, "/V1/SIGN", 404, "not_found"),
            (
                "percent-encoded path",
                Method::POST,
                "/v1/%73ign",
                404,
                "not_found",
            ),
            (
                "dot segments",
                Method::POST,
                "/v1/x/../sign",
                404,
                "not_found",
            ),
        ] {
            v.push(case(
                "http",
                name,
                Action::Request(method, path, body.clone()),
                Expect::Http(status, code),
            ));
        }
        v.push(case(
            "http",
            "plaintext HTTP on the TLS port",
            Action::Special(Special::PlaintextHttp),
            Expect::Closed,
        ));
    }

    fn slow_and_idle(&self, v: &mut Vec<Case>) {
        for (name, special, expect) in [
            ("slowloris headers", Special::SlowHeaders, Expect::Closed),
            (
                "slowloris body",
                Special::SlowBody,
                Expect::Http(408, "request_timeout"),
            ),
            (
                "slow TLS handshake",
                Special::SlowTlsHandshake,
                Expect::Closed,
            ),
            (
                "TCP connection that never speaks",
                Special::SilentTcp,
                Expect::Closed,
            ),
            (
                "TLS connection that never sends a request",
                Special::IdleTls,
                Expect::Closed,
            ),
            (
                "idle keep-alive connection",
                Special::IdleKeepAlive,
                Expect::Closed,
            ),
            ("40 idle connections", Special::ManyIdle, Expect::Closed),
            (
                "connections over the limit",
                Special::OverConnectionLimit,
                Expect::Closed,
            ),
        ] {
            v.push(case("slow clients", name, Action::Special(special), expect));
        }
    }

    fn http2(&self, v: &mut Vec<Case>) {
        let wrong = "V".repeat(43);
        self.remember(&wrong);
        let host = "names.example.internal";
        v.push(
            case(
                "http/2",
                "wrong PSK over HTTP/2",
                Action::H2(
                    "POST",
                    "/v1/sign",
                    Some("application/pkcs10"),
                    p256_csr(&CsrSpec::host(host, &wrong)),
                ),
                Expect::Http(403, "psk_rejected"),
            )
            .audit("psk_wrong"),
        );
        v.push(case(
            "http/2",
            "body over 64 KiB over HTTP/2",
            Action::H2("POST", "/v1/sign", None, vec![b'A'; 70_000]),
            Expect::Http(413, "body_too_large"),
        ));
        v.push(case(
            "http/2",
            "JSON content type over HTTP/2",
            Action::H2(
                "POST",
                "/v1/sign",
                Some("application/json"),
                self.csr(host, vec![]),
            ),
            Expect::Http(400, "unsupported_content_type"),
        ));
        v.push(case(
            "http/2",
            "GET on the signer over HTTP/2",
            Action::H2("GET", "/v1/sign", None, vec![]),
            Expect::Http(405, "method_not_allowed"),
        ));
        v.push(case(
            "http/2",
            "garbage over HTTP/2",
            Action::H2("POST", "/v1/sign", None, b"garbage".to_vec()),
            Expect::Http(400, "malformed_csr"),
        ));
        v.push(
            case(
                "http/2",
                "a certificate over HTTP/2",
                Action::H2(
                    "POST",
                    "/v1/sign",
                    Some("application/pkcs10"),
                    self.csr("h2.example.internal", vec![]),
                ),
                Expect::Http(201, ""),
            )
            .effect(Effect::Issued("h2.example.internal")),
        );
        for (name, special, expect) in [
            ("idle HTTP/2 connection", Special::H2Idle, Expect::Closed),
            (
                "slowloris body over HTTP/2",
                Special::H2SlowBody,
                Expect::Http(408, "request_timeout"),
            ),
            (
                "HTTP/2 rapid reset",
                Special::H2RapidReset,
                Expect::Seen(Seen::GoAway(raw::h2_error::ENHANCE_YOUR_CALM)),
            ),
            (
                "HTTP/2 body longer than its content-length",
                Special::H2ContentLengthMismatch,
                Expect::Seen(Seen::Reset(raw::h2_error::PROTOCOL_ERROR)),
            ),
        ] {
            v.push(case("http/2", name, Action::Special(special), expect));
        }
        // Last: the fixture PSK survived every hostile case above.
        v.push(
            case(
                "psk",
                "the fixture PSK still works after all of the above",
                sign(fixture("p256.der")),
                Expect::Http(201, ""),
            )
            .effect(Effect::Issued(FIXTURE_HOST)),
        );
    }

    fn remember(&self, secret: &str) {
        SECRETS.with(|s| s.borrow_mut().push(secret.to_owned()));
    }
}

thread_local! {
    /// Secrets cases send, for the leak check at the end.
    static SECRETS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The outer SEQUENCE header and content of a DER value.
fn split_outer(der: &[u8]) -> (&[u8], &[u8]) {
    let header = match der[1] {
        n if n < 0x80 => 2,
        n => 2 + (n & 0x7f) as usize,
    };
    der.split_at(header)
}

/// Store state a case may or may not change.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    psks: BTreeSet<String>,
    certs: BTreeMap<String, String>,
    /// Refusals counted in the audit log, by reason.
    refusals: BTreeMap<String, i64>,
}

fn snapshot(server: &CaServer) -> Snapshot {
    let lines = |args: &[&str]| -> Vec<serde_json::Value> {
        run_ok(server.cli().args(args))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let psks = lines(&["psk", "list", "--json"])
        .iter()
        .map(|p| p["hostname"].as_str().unwrap().to_owned())
        .collect();
    let certs = lines(&["cert", "list", "--json"])
        .iter()
        .map(|c| {
            (
                c["serial"].as_str().unwrap().to_owned(),
                c["hostname"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut refusals = BTreeMap::new();
    for row in lines(&["audit", "--since", "1d", "--limit", "100000", "--json"]) {
        if row["outcome"] == "rejected" {
            let reason = row["reason"].as_str().unwrap_or("").to_owned();
            *refusals.entry(reason).or_insert(0) += row["count"].as_i64().unwrap();
        }
    }
    Snapshot {
        psks,
        certs,
        refusals,
    }
}

fn refusals_with(s: &Snapshot, prefix: &str) -> i64 {
    s.refusals
        .iter()
        .filter(|(r, _)| r.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

/// Checks the store changes of a case; `Err` says what is wrong.
fn check_effect(case: &Case, before: &Snapshot, after: &Snapshot) -> Result<(), String> {
    let new_certs: Vec<(&String, &String)> = after
        .certs
        .iter()
        .filter(|(s, _)| !before.certs.contains_key(*s))
        .collect();
    let spent: Vec<&String> = before.psks.difference(&after.psks).collect();
    let added: Vec<&String> = after.psks.difference(&before.psks).collect();
    if !added.is_empty() {
        return Err(format!("PSKs appeared: {added:?}"));
    }
    match case.effect {
        Effect::Nothing | Effect::Replayed => {
            if !spent.is_empty() || !new_certs.is_empty() {
                return Err(format!("consumed {spent:?}, recorded {new_certs:?}"));
            }
        }
        Effect::Issued(host) => {
            if spent != [host] || new_certs.len() != 1 || new_certs[0].1 != host {
                return Err(format!(
                    "expected {host} spent and certified; consumed {spent:?}, recorded {new_certs:?}"
                ));
            }
        }
        Effect::Burned(host) => {
            if spent != [host] || !new_certs.is_empty() {
                return Err(format!(
                    "expected {host} burned; consumed {spent:?}, recorded {new_certs:?}"
                ));
            }
        }
    }
    let total = |s: &Snapshot| s.refusals.values().sum::<i64>();
    let delta = total(after) - total(before);
    match case.audit {
        Some(reason) => {
            let d = refusals_with(after, reason) - refusals_with(before, reason);
            if d != 1 || delta != 1 {
                let changed: Vec<_> = after
                    .refusals
                    .iter()
                    .filter(|(r, n)| before.refusals.get(*r) != Some(n))
                    .collect();
                return Err(format!(
                    "audit: {d} refusal(s) under {reason}, {delta} in all (expected 1): {changed:?}"
                ));
            }
        }
        None if delta != 0 => return Err(format!("audit: {delta} unexpected refusal row(s)")),
        None => {}
    }
    Ok(())
}

/// Every certificate the suite gets must carry the server's profile only.
fn check_profile(chain_pem: &[u8], host: &str) -> Result<(), String> {
    let leaf = pem::parse_many(chain_pem)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no certificate in the answer")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.contents()).map_err(|e| e.to_string())?;
    let subject = cert.subject().to_string();
    if subject != format!("CN={host}") {
        return Err(format!("subject {subject}"));
    }
    let mut oids: Vec<String> = cert
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    oids.sort();
    let expected = [
        "2.5.29.14",
        "2.5.29.15",
        "2.5.29.17",
        "2.5.29.19",
        "2.5.29.31",
        "2.5.29.35",
        "2.5.29.37",
    ];
    if oids != expected {
        return Err(format!("extensions {oids:?}"));
    }
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    if bc.ca || bc.path_len_constraint.is_some() {
        return Err("basicConstraints is not CA:FALSE".into());
    }
    let ku = cert.key_usage().unwrap().unwrap().value;
    if !ku.digital_signature() || ku.key_cert_sign() || ku.crl_sign() || ku.key_encipherment() {
        return Err(format!("key usage {ku}"));
    }
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    if !(eku.server_auth && eku.client_auth) || eku.any || eku.code_signing || !eku.other.is_empty()
    {
        return Err("extended key usage beyond serverAuth, clientAuth".into());
    }
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    if san.general_names.len() != 1
        || san.general_names[0].to_string() != format!("DNSName({host})")
    {
        return Err(format!("SAN {:?}", san.general_names));
    }
    let v = cert.validity();
    let days = (v.not_after.timestamp() - v.not_before.timestamp() - 300) / 86_400;
    if days != 30 {
        return Err(format!("validity of {days} days"));
    }
    let text = format!("{:?}", cert.extensions());
    if text.contains("evil.example") {
        return Err("a requested URL reached the certificate".into());
    }
    Ok(())
}

/// Runs one case; returns what the server did (and the body of an answer).
async fn perform(suite: &Suite, action: &Action) -> Result<(Seen, Bytes), String> {
    let server = &suite.server;
    match action {
        Action::Sign(body, ct) => http1(server, Method::POST, "/v1/sign", *ct, body.clone()).await,
        Action::Request(method, path, body) => {
            http1(
                server,
                method.clone(),
                path,
                Some("application/pkcs10"),
                body.clone(),
            )
            .await
        }
        Action::Raw(bytes) => Ok((raw::exchange(server, bytes).await, Bytes::new())),
        Action::H2(method, path, ct, body) => {
            let (mut sender, _driver) = raw::h2(server).await;
            raw::h2_send(
                &mut sender,
                raw::h2_request(method, path, *ct, raw::full(body.clone())),
            )
            .await
        }
        Action::Special(s) => special(suite, *s).await.map(|seen| (seen, Bytes::new())),
    }
}

async fn http1(
    server: &CaServer,
    method: Method,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> Result<(Seen, Bytes), String> {
    let reply = server
        .client()
        .send(method, path, ct, Bytes::from(body))
        .await
        .map_err(|e| e.to_string())?;
    let code = reply.api_error().map(|(c, _)| c);
    Ok((Seen::Http(reply.status.as_u16(), code), reply.body))
}

/// `GET /healthz` on a fresh connection answers 200 (other clients are served).
async fn served(server: &CaServer) -> Result<(), String> {
    match http1(server, Method::GET, "/healthz", None, vec![]).await? {
        (Seen::Http(200, _), _) => Ok(()),
        (other, _) => Err(format!("healthz answered {other}")),
    }
}

async fn special(suite: &Suite, s: Special) -> Result<Seen, String> {
    let server = &suite.server;
    let slow = Duration::from_millis(400);
    match s {
        Special::EndlessChunked => {
            let mut conn = raw::tls(server, &[b"http/1.1"]).await;
            let head = raw::sign_head(&[
                "Transfer-Encoding: chunked",
                "Content-Type: application/pkcs10",
            ]);
            conn.write_all(&head).await.map_err(|e| e.to_string())?;
            let chunk = [
                format!("{:x}\r\n", 8192).into_bytes(),
                vec![b'A'; 8192],
                b"\r\n".to_vec(),
            ]
            .concat();
            // Keep sending until the server stops reading (about 64 KiB) or 1 MiB went out.
            for _ in 0..128 {
                if conn.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            Ok(raw::read_outcome(&mut conn).await)
        }
        Special::Smuggle => {
            let wrong = "U".repeat(43);
            suite.remember(&wrong);
            let body = p256_csr(&CsrSpec::host("names.example.internal", &wrong));
            let chunked = [
                format!("{:x}\r\n", body.len()).into_bytes(),
                body,
                b"\r\n0\r\n\r\n".to_vec(),
            ]
            .concat();
            let request = [
                raw::sign_head(&[
                    "Content-Length: 5",
                    "Transfer-Encoding: chunked",
                    "Content-Type: application/pkcs10",
                ]),
                chunked,
                b"GET /v1/ca HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            ]
            .concat();
            let mut conn = raw::tls(server, &[b"http/1.1"]).await;
            conn.write_all(&request).await.map_err(|e| e.to_string())?;
            // Everything the server sends until it closes: exactly one answer.
            let mut all = Vec::new();
            let closed = tokio::time::timeout(raw::PATIENCE, async {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut conn, &mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&chunk[..n]);
                }
            })
            .await
            .is_ok();
            let answers = all.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
            if !closed || answers != 1 {
                return Err(format!("{answers} answers; closed: {closed}"));
            }
            Ok(raw::parse_response(&all))
        }
        Special::SlowHeaders => {
            let mut conn = raw::tls(server, &[b"http/1.1"]).await;
            let head = raw::sign_head(&[&format!("X-Slow: {}", "a".repeat(200))]);
            let trickle = raw::trickle(&mut conn, &head, slow);
            let (seen, others) = tokio::join!(trickle, served(server));
            others.map(|_| seen)
        }
        Special::SlowBody => {
            let mut conn = raw::tls(server, &[b"http/1.1"]).await;
            let head = raw::sign_head(&["Content-Length: 300", "Content-Type: application/pkcs10"]);
            conn.write_all(&head).await.map_err(|e| e.to_string())?;
            let trickle = raw::trickle(&mut conn, &[b'A'; 300], slow);
            let (seen, others) = tokio::join!(trickle, served(server));
            others.map(|_| seen)
        }
        Special::SlowTlsHandshake => {
            let mut tcp = raw::tcp_from(server, "127.0.0.1").await;
            // The start of a TLS ClientHello record, one byte at a time.
            let hello = [
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ];
            let bytes: Vec<u8> = hello
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0x42, 200))
                .collect();
            let trickle = raw::trickle(&mut tcp, &bytes, slow);
            let (seen, others) = tokio::join!(trickle, served(server));
            others.map(|_| seen)
        }
        Special::SilentTcp => {
            let mut tcp = raw::tcp_from(server, "127.0.0.1").await;
            let (seen, others) = tokio::join!(raw::read_outcome(&mut tcp), served(server));
            others.map(|_| seen)
        }
        Special::IdleTls => {
            let mut conn = raw::tls(server, &[b"http/1.1"]).await;
            let (seen, others) = tokio::join!(raw::read_outcome(&mut conn), served(server));
            others.map(|_| seen)
        }
        Special::IdleKeepAlive => {
            let mut conn = raw::tls(server, &[b"http/1.1"]).await;
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            match raw::read_outcome(&mut conn).await {
                Seen::Http(200, _) => {}
                other => return Err(format!("the first request got {other}")),
            }
            Ok(raw::read_outcome(&mut conn).await)
        }
        Special::PlaintextHttp => {
            let mut tcp = raw::tcp_from(server, "127.0.0.1").await;
            tcp.write_all(
                b"POST /v1/sign HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n",
            )
            .await
            .map_err(|e| e.to_string())?;
            let seen = raw::read_outcome(&mut tcp).await;
            // rustls may answer a TLS alert before closing; that is no HTTP answer.
            Ok(match seen {
                Seen::Http(0, None) => Seen::Closed,
                other => other,
            })
        }
        Special::ManyIdle => {
            let mut conns = Vec::new();
            for i in 0..40 {
                let tls = i % 2 == 0;
                let tcp = raw::tcp_from(server, "127.0.0.1").await;
                conns.push(if tls {
                    Either::Tls(Box::new(
                        raw::tls_over(server, tcp, &[b"h2", b"http/1.1"]).await,
                    ))
                } else {
                    Either::Tcp(tcp)
                });
            }
            served(server).await?;
            let outcomes = futures_join(conns).await;
            Ok(if outcomes.iter().all(|o| *o == Seen::Closed) {
                Seen::Closed
            } else {
                Seen::StillOpen
            })
        }
        Special::OverConnectionLimit => {
            // Hold every slot with idle TLS connections, then try more: those
            // are closed at accept. Once the idle ones are closed, service resumes.
            let mut held = Vec::new();
            let mut refused = 0;
            for _ in 0..MAX_CONNECTIONS + 16 {
                let tcp = raw::tcp_from(server, "127.0.0.1").await;
                match tokio_rustls::TlsConnector::from(raw::tls_config(server, &[b"http/1.1"]))
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                {
                    Ok(conn) => held.push(Either::Tls(Box::new(conn))),
                    Err(_) => refused += 1,
                }
            }
            if refused < 16 || held.len() > MAX_CONNECTIONS {
                return Err(format!(
                    "{} connections held, {refused} refused",
                    held.len()
                ));
            }
            let outcomes = futures_join(held).await;
            served(server).await?;
            Ok(if outcomes.iter().all(|o| *o == Seen::Closed) {
                Seen::Closed
            } else {
                Seen::StillOpen
            })
        }
        Special::H2Idle => {
            let (_sender, driver) = raw::h2(server).await;
            let (ended, others) =
                tokio::join!(tokio::time::timeout(raw::PATIENCE, driver), served(server));
            others?;
            Ok(if ended.is_ok() {
                Seen::Closed
            } else {
                Seen::StillOpen
            })
        }
        Special::H2SlowBody => {
            let (mut sender, _driver) = raw::h2(server).await;
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes>::new(1);
            let mut req = raw::h2_request(
                "POST",
                "/v1/sign",
                Some("application/pkcs10"),
                http_body_util::BodyExt::boxed(body),
            );
            req.headers_mut()
                .insert("content-length", "300".parse().unwrap());
            let feeder = tokio::spawn(async move {
                for _ in 0..300 {
                    if tx.send_data(Bytes::from_static(b"A")).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            });
            let (answer, others) = tokio::join!(raw::h2_send(&mut sender, req), served(server));
            feeder.abort();
            others?;
            answer.map(|(seen, _)| seen)
        }
        Special::H2RapidReset => {
            // CVE-2023-44487: each request is opened and reset at once, 1000
            // times in one write. The server must cut the connection off.
            let get = raw::hpack(&[2, 7], &[(1, "localhost"), (4, "/v1/ca")]);
            let mut frames = Vec::new();
            for i in 0..1000u32 {
                let stream = 2 * i + 1;
                frames.extend(raw::h2_frame(0x1, 0x5, stream, &get));
                frames.extend(raw::h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
            }
            let (seen, others) = tokio::join!(raw::h2_raw(server, &frames), served(server));
            others.map(|_| seen)
        }
        Special::H2ContentLengthMismatch => {
            // A body longer than its declared content-length: a stream error.
            let post = raw::hpack(
                &[3, 7],
                &[
                    (1, "localhost"),
                    (4, "/v1/sign"),
                    (28, "10"),
                    (31, "application/pkcs10"),
                ],
            );
            let mut frames = raw::h2_frame(0x1, 0x4, 1, &post);
            frames.extend(raw::h2_frame(0x0, 0x1, 1, &[b'A'; 100]));
            let (seen, others) = tokio::join!(raw::h2_raw(server, &frames), served(server));
            others.map(|_| seen)
        }
        Special::WaitForExpiry => {
            // The expiring PSK had a 1 s lifetime; make sure it is over.
            let left = Duration::from_millis(1500).saturating_sub(suite.expiring_since.elapsed());
            tokio::time::sleep(left).await;
            let body = p256_csr(&CsrSpec::host(EXPIRING, &suite.psk(EXPIRING)));
            http1(server, Method::POST, "/v1/sign", None, body)
                .await
                .map(|(s, _)| s)
        }
    }
}

enum Either {
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Tcp(tokio::net::TcpStream),
}

/// Waits for each connection's outcome, all at once.
async fn futures_join(conns: Vec<Either>) -> Vec<Seen> {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| {
            tokio::spawn(async move {
                match c {
                    Either::Tls(mut s) => raw::read_outcome(&mut *s).await,
                    Either::Tcp(mut s) => raw::read_outcome(&mut s).await,
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn matches(expect: &Expect, seen: &Seen) -> bool {
    match (expect, seen) {
        (Expect::Http(s, ""), Seen::Http(t, _)) => s == t,
        (Expect::Http(s, c), Seen::Http(t, Some(d))) => s == t && c == d,
        (Expect::Protocol(s), Seen::Http(t, None)) => s == t,
        (Expect::Closed, Seen::Closed) => true,
        (Expect::Seen(a), b) => a == b,
        _ => false,
    }
}

fn add_psk(server: &mut CaServer, host: &str, args: &[&str], psk: Option<&str>) -> String {
    let mut cmd = server.cli();
    cmd.args(["psk", "add", host]).args(args);
    let psk = match psk {
        Some(p) => {
            cmd.arg("--psk-stdin")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), p.as_bytes()).unwrap();
            assert!(child.wait_with_output().unwrap().status.success());
            p.to_owned()
        }
        None => run_ok(&mut cmd).trim().to_owned(),
    };
    server.remember_secret(&psk);
    psk
}

/// One result line.
struct Outcome {
    group: &'static str,
    name: String,
    expect: String,
    seen: String,
    failure: Option<String>,
}

#[test]
fn hostile_inputs_get_exact_answers_and_change_nothing_they_should_not() {
    if !require_tool("openssl") {
        return;
    }
    let limits = [
        ("--handshake-timeout", "2s"),
        ("--header-timeout", "2s"),
        ("--body-timeout", "2s"),
        ("--max-connections", &MAX_CONNECTIONS.to_string()),
        // This suite sends many PSK failures from 127.0.0.1 on purpose;
        // throttling has its own test below.
        ("--throttle-failures", "100000"),
        // Each case checks its own audit effect at once: repeats are
        // written by their request instead of the once-a-second flush.
        ("--audit-flush-interval", "0s"),
    ];
    let mut server = CaServer::start_with(ServerOptions {
        args: limits
            .iter()
            .flat_map(|(k, v)| [k.to_string(), v.to_string()])
            .collect(),
        log: Some("debug".into()),
        ..Default::default()
    });
    let mut psks = BTreeMap::new();
    psks.insert(
        FIXTURE_HOST,
        add_psk(&mut server, FIXTURE_HOST, &[], Some(FIXTURE_PSK)),
    );
    for host in HOSTS {
        psks.insert(*host, add_psk(&mut server, host, &[], None));
    }
    psks.insert(
        EXPIRING,
        add_psk(&mut server, EXPIRING, &["--ttl", "1s"], None),
    );
    let mut suite = Suite {
        server,
        psks,
        expiring_since: Instant::now(),
        bodies: Vec::new(),
    };
    let cases = suite.cases();
    assert!(cases.len() >= 40, "the suite has {} cases", cases.len());

    let mut outcomes = Vec::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    for case in &cases {
        let before = snapshot(&suite.server);
        let result = rt.block_on(perform(&suite, &case.action));
        let health = rt.block_on(served(&suite.server));
        let after = snapshot(&suite.server);
        let (seen, failure) = match result {
            Err(e) => (format!("error: {e}"), Some(e)),
            Ok((seen, body)) => {
                let mut failure = None;
                if !matches(&case.expect, &seen) {
                    failure = Some(format!("expected {}, saw {seen}", case.expect));
                } else if let Effect::Issued(host) = case.effect {
                    failure = check_profile(&body, host)
                        .err()
                        .map(|e| format!("certificate: {e}"));
                }
                suite.bodies.push(body);
                (seen.to_string(), failure)
            }
        };
        let failure = failure
            .or_else(|| health.err().map(|e| format!("unhealthy afterwards: {e}")))
            .or_else(|| check_effect(case, &before, &after).err());
        outcomes.push(Outcome {
            group: case.group,
            name: case.name.clone(),
            expect: case.expect.to_string(),
            seen,
            failure,
        });
    }

    // Error bodies and the metrics endpoint never carry a PSK; nor do the
    // server's (debug) log, its store files or the audit log.
    let metrics = rt.block_on(http1(&suite.server, Method::GET, "/metrics", None, vec![]));
    if let Ok((_, body)) = metrics {
        suite.bodies.push(body);
    }
    SECRETS.with(|s| {
        for secret in s.borrow().iter() {
            suite.server.remember_secret(secret);
        }
    });
    let all_psks: Vec<String> = suite.psks.values().cloned().collect();
    let bodies = suite.bodies.concat();
    for psk in all_psks
        .iter()
        .chain(SECRETS.with(|s| s.borrow().clone()).iter())
    {
        for form in secret_forms(psk) {
            assert!(
                !bodies.windows(form.len()).any(|w| w == form.as_bytes()),
                "a PSK appears in a response body"
            );
        }
    }
    suite.server.assert_no_secret_leaks();

    let summary = write_summary(&outcomes);
    println!("{summary}");
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    assert!(
        failed.is_empty(),
        "{} hostile case(s) failed:\n{}",
        failed.len(),
        failed
            .iter()
            .map(|o| format!(
                "  {} / {}: {}",
                o.group,
                o.name,
                o.failure.as_deref().unwrap()
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Writes the summary to target/tmp/hostile-summary.txt and returns it.
fn write_summary(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let passed = outcomes.iter().filter(|o| o.failure.is_none()).count();
    out.push_str(&format!(
        "hostile-input suite: {} cases, {passed} passed, {} failed\n",
        outcomes.len(),
        outcomes.len() - passed
    ));
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_group: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes {
        *by_outcome.entry(o.seen.as_str()).or_insert(0) += 1;
        *by_group.entry(o.group).or_insert(0) += 1;
    }
    out.push_str("outcomes:\n");
    for (seen, n) in &by_outcome {
        out.push_str(&format!("  {n:4}  {seen}\n"));
    }
    out.push_str("groups:\n");
    for (group, n) in &by_group {
        out.push_str(&format!("  {n:4}  {group}\n"));
    }
    out.push_str("cases:\n");
    for o in outcomes {
        out.push_str(&format!(
            "  {} [{}] {}: expected {}, saw {}{}\n",
            if o.failure.is_none() { "PASS" } else { "FAIL" },
            o.group,
            o.name,
            o.expect,
            o.seen,
            o.failure
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        ));
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-summary.txt");
    std::fs::write(&path, &out).unwrap();
    out
}
