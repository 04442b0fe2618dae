//! Why a request was refused: one variant per rule, each with a stable code.
//!
//! The HTTP layer maps [`RejectionClass`] to a status code; [`Rejection::code`]
//! is the stable machine-readable code sent to the client; [`Rejection::reason`]
//! is the precise reason written to the audit log. Neither ever contains a PSK.

use crate::hostname::{HostnameError, escape_for_display};
use thiserror::Error;

/// How a rejection is answered: the server maps each class to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionClass {
    /// The request body is not a well-formed, correctly self-signed CSR (400).
    Malformed,
    /// The PSK did not authenticate the request (403, one generic code).
    PskRejected,
    /// A valid CSR that the policy refuses: key type, algorithm, names (422).
    Refused,
    /// The client's credential cannot get a certificate: a renewal presented
    /// no certificate, an unknown one, or one that is revoked, expired or
    /// superseded (403, each with its own code).
    Forbidden,
}

/// Ways a CSR body can be malformed. Messages name the problem, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Malformed {
    #[error("empty body")]
    Empty,
    #[error("PEM block has label {0:?}; expected CERTIFICATE REQUEST")]
    PemLabel(String),
    #[error("PEM is not valid: {0}")]
    Pem(String),
    #[error("body holds {0} PEM blocks; expected exactly one CSR")]
    PemBlockCount(usize),
    #[error("CSR is not valid DER: {0}")]
    Der(String),
    #[error("{0} bytes of trailing data after the CSR")]
    TrailingData(usize),
    #[error("CSR version must be v1 (0)")]
    Version,
    #[error("public key is malformed: {0}")]
    PublicKey(String),
    #[error("extension {0} appears more than once")]
    DuplicateExtension(String),
    #[error("more than {0} requested extensions")]
    TooManyExtensions(usize),
    #[error("requested extension {0} cannot be parsed")]
    Extension(String),
    #[error("pp_preshared_key must be a DER UTF8String")]
    PskEncoding,
    #[error("the PSK in pp_preshared_key and in challengePassword differ")]
    ConflictingPsk,
    #[error("attribute {0} appears more than once")]
    DuplicateAttribute(String),
}

/// Why the PSK did not authenticate the request. All of these are answered with
/// the same generic `psk_rejected` so that hostnames cannot be probed; the
/// precise variant goes to the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PskFailure {
    /// The CSR carries no PSK at all.
    Missing,
    /// No live PSK exists for this hostname.
    UnknownHost,
    /// A PSK exists for this hostname but the presented one does not match.
    Wrong,
    /// The presented PSK matched but its lifetime is over.
    Expired,
    /// The PSK was already redeemed (decided by the server, which knows the history).
    Used,
}

impl PskFailure {
    /// Stable reason for the audit log.
    pub fn reason(self) -> &'static str {
        match self {
            PskFailure::Missing => "psk_missing",
            PskFailure::UnknownHost => "psk_unknown_host",
            PskFailure::Wrong => "psk_wrong",
            PskFailure::Expired => "psk_expired",
            PskFailure::Used => "psk_used",
        }
    }
}

/// Why a certificate presented for renewal (`POST /v1/renew`) cannot renew.
/// A host in any of these states (but `Superseded`, which has a newer
/// certificate) needs a fresh PSK from its spawner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RenewalRefusal {
    #[error("renewal needs the current certificate as the TLS client certificate")]
    NoClientCertificate,
    #[error("the client certificate is not one this CA issued to a host")]
    UnknownCertificate,
    #[error("the client certificate is revoked")]
    Revoked,
    /// Expired longer ago than the server's renewal grace (or the grace is 0).
    #[error(
        "the client certificate expired {} ago{}: the host needs a new PSK from its spawner \
         (`ca-server psk add HOST`) and a new `ca-client bootstrap`",
        crate::renewal::human_secs(*expired_for),
        grace_text(*grace)
    )]
    Expired { expired_for: i64, grace: i64 },
    #[error("a certificate with this key was revoked as compromised (keyCompromise)")]
    KeyCompromised,
    #[error("the client certificate is not valid yet")]
    NotYetValid,
    #[error("the client certificate was already renewed; use the newer certificate")]
    Superseded,
}

impl RenewalRefusal {
    /// Stable code, sent to the client and written to the audit log.
    pub fn code(self) -> &'static str {
        match self {
            RenewalRefusal::NoClientCertificate => "client_certificate_required",
            RenewalRefusal::UnknownCertificate => "certificate_unknown",
            RenewalRefusal::Revoked => "certificate_revoked",
            RenewalRefusal::Expired { .. } => "renewal_expired",
            RenewalRefusal::KeyCompromised => "key_compromised",
            RenewalRefusal::NotYetValid => "certificate_not_yet_valid",
            RenewalRefusal::Superseded => "certificate_superseded",
        }
    }
}

/// How the renewal grace reads in an expiry refusal.
fn grace_text(grace: i64) -> String {
    if grace > 0 {
        format!(
            ", beyond the renewal grace of {}",
            crate::renewal::human_secs(grace)
        )
    } else {
        " and renewal after expiry is off on this CA".into()
    }
}

/// A refusal, naming the rule that refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("{0}")]
    Malformed(#[from] Malformed),
    #[error("the CSR's self-signature does not verify with its public key")]
    BadSignature,
    #[error("PSK rejected")]
    Psk(PskFailure),
    #[error(
        "key not allowed: {0} (allowed: ECDSA P-256/P-384, Ed25519, RSA 2048-8192 with e=65537)"
    )]
    KeyNotAllowed(String),
    #[error("signature algorithm not allowed: {0}")]
    SignatureAlgorithmNotAllowed(String),
    #[error("invalid hostname {}: {error}", escape_for_display(name))]
    InvalidHostname { name: String, error: HostnameError },
    #[error("name not allowed for this PSK: {}", escape_for_display(.0))]
    NameNotAllowed(String),
    /// A route that names the host in its URL (Puppet's
    /// `certificate_request/{certname}`) got a CSR for another name.
    #[error(
        "the CSR's subject CN {} does not match the certname {} in the URL",
        escape_for_display(cn),
        escape_for_display(certname)
    )]
    CertnameMismatch { certname: String, cn: String },
    /// Renewal: the presented certificate cannot renew.
    #[error("{0}")]
    Renewal(RenewalRefusal),
    /// Renewal: the CSR asks for another hostname than the certificate's.
    #[error(
        "the CSR asks for {}, but the client certificate can only renew {}",
        escape_for_display(requested),
        escape_for_display(certificate)
    )]
    HostnameMismatch {
        certificate: String,
        requested: String,
    },
}

impl Rejection {
    /// How the HTTP layer answers this rejection.
    pub fn class(&self) -> RejectionClass {
        match self {
            Rejection::Malformed(_) | Rejection::BadSignature => RejectionClass::Malformed,
            Rejection::Psk(_) => RejectionClass::PskRejected,
            Rejection::KeyNotAllowed(_)
            | Rejection::SignatureAlgorithmNotAllowed(_)
            | Rejection::InvalidHostname { .. }
            | Rejection::NameNotAllowed(_)
            | Rejection::CertnameMismatch { .. }
            | Rejection::HostnameMismatch { .. } => RejectionClass::Refused,
            Rejection::Renewal(_) => RejectionClass::Forbidden,
        }
    }

    /// The stable error code sent to the client.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed(Malformed::Empty) => "empty_body",
            Rejection::Malformed(Malformed::DuplicateExtension(_)) => "duplicate_extension",
            Rejection::Malformed(_) => "malformed_csr",
            Rejection::BadSignature => "bad_signature",
            Rejection::Psk(_) => "psk_rejected",
            Rejection::KeyNotAllowed(_) => "key_not_allowed",
            Rejection::SignatureAlgorithmNotAllowed(_) => "signature_algorithm_not_allowed",
            Rejection::InvalidHostname { .. } => "invalid_hostname",
            Rejection::NameNotAllowed(_) => "name_not_allowed",
            Rejection::CertnameMismatch { .. } => "certname_mismatch",
            Rejection::Renewal(r) => r.code(),
            Rejection::HostnameMismatch { .. } => "hostname_mismatch",
        }
    }

    /// The precise reason for the audit log (never a secret; names escaped).
    pub fn reason(&self) -> String {
        match self {
            Rejection::Psk(f) => f.reason().to_string(),
            other => format!("{}: {}", other.code(), other),
        }
    }

    /// The message for the client. PSK failures are deliberately generic.
    pub fn client_message(&self) -> String {
        match self {
            Rejection::Psk(_) => {
                "PSK rejected: unknown host, wrong, used or expired PSK".to_string()
            }
            other => other.to_string(),
        }
    }
}
