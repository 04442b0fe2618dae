//! ACME's error mapping, in one place: every refusal of an ACME route is an
//! RFC 7807 problem document (`application/problem+json`) with an ACME
//! error type (`urn:ietf:params:acme:error:*`) and its status code. The JSON
//! API's mapping (`edge/http/error.rs`) is separate.

use super::jws::JwsError;
use crate::edge::http::body::BodyError;
use crate::issue::acme::AcmeError;
use crate::issue::sign::SignError;
use crate::store::StoreError;
use axum::http::StatusCode;
use policy::RejectionClass;

/// One problem document.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The ACME error type without its `urn:ietf:params:acme:error:` prefix.
    pub kind: &'static str,
    pub status: StatusCode,
    pub detail: String,
    pub retry_after: Option<u64>,
    /// `Location` (an existing account for a key rollover `conflict`).
    pub location: Option<String>,
}

impl Problem {
    pub fn new(kind: &'static str, status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind,
            status,
            detail: detail.into(),
            retry_after: None,
            location: None,
        }
    }

    pub fn malformed(detail: impl Into<String>) -> Problem {
        Problem::new("malformed", StatusCode::BAD_REQUEST, detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new("unauthorized", StatusCode::FORBIDDEN, detail)
    }

    pub fn bad_nonce() -> Problem {
        Problem::new(
            "badNonce",
            StatusCode::BAD_REQUEST,
            "the nonce is unknown, used or expired; retry with the Replay-Nonce of this answer",
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new("malformed", StatusCode::NOT_FOUND, detail)
    }

    /// newAccount without a binding.
    pub fn external_account_required() -> Problem {
        Problem::new(
            "externalAccountRequired",
            StatusCode::UNAUTHORIZED,
            "this CA requires an external account binding: kid = the hostname, \
             HMAC key = its PSK",
        )
    }

    /// A key rollover that cannot happen; `location`: the account holding the key.
    pub fn conflict(detail: &str, location: Option<String>) -> Problem {
        let mut p = Problem::new("conflict", StatusCode::CONFLICT, detail);
        p.location = location;
        p
    }

    pub fn unsupported_media_type() -> Problem {
        Problem::new(
            "malformed",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "ACME requests are application/jose+json",
        )
    }

    pub fn rate_limited(retry: std::time::Duration) -> Problem {
        let secs = crate::issue::throttle::retry_after_secs(retry);
        let mut p = Problem::new(
            "rateLimited",
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many failed authentications from this address; retry in {secs} s"),
        );
        p.retry_after = Some(secs);
        p
    }

    pub fn server_internal(detail: impl Into<String>) -> Problem {
        Problem::new("serverInternal", StatusCode::INTERNAL_SERVER_ERROR, detail)
    }

    /// The store is unreachable: 503 with `Retry-After`.
    pub fn unavailable() -> Problem {
        let mut p = Problem::new(
            "serverInternal",
            StatusCode::SERVICE_UNAVAILABLE,
            "the certificate store is unavailable; retry shortly",
        );
        p.retry_after = Some(5);
        p
    }

    /// The metrics outcome and log code: the ACME type itself.
    pub fn code(&self) -> &'static str {
        self.kind
    }

    pub fn body(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "type": format!("urn:ietf:params:acme:error:{}", self.kind),
            "detail": self.detail,
            "status": self.status.as_u16(),
        });
        // RFC 8555 §6.2: the algorithms the server accepts.
        if self.kind == "badSignatureAlgorithm" {
            body["algorithms"] = serde_json::json!(["ES256", "ES384", "RS256", "EdDSA"]);
        }
        body
    }
}

impl From<BodyError> for Problem {
    fn from(e: BodyError) -> Problem {
        match e {
            BodyError::TooLarge(limit) => Problem::new(
                "malformed",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the JWS is over {} KiB", limit / 1024),
            ),
            BodyError::Timeout(t) => Problem::new(
                "malformed",
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {} s", t.as_secs()),
            ),
            _ => Problem::malformed("the body could not be read"),
        }
    }
}

impl From<JwsError> for Problem {
    fn from(e: JwsError) -> Problem {
        match e {
            JwsError::BadAlgorithm(_) => Problem::new(
                "badSignatureAlgorithm",
                StatusCode::BAD_REQUEST,
                e.to_string(),
            ),
            JwsError::BadSignature => Problem::malformed(e.to_string()),
            JwsError::Malformed(m) => Problem::malformed(m),
        }
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        match e {
            StoreError::Unavailable(_) | StoreError::Down { .. } | StoreError::NoSpace(_) => {
                tracing::warn!(error = %e, "ACME: store unavailable");
                Problem::unavailable()
            }
            other => {
                tracing::error!(error = %other, "ACME: store error");
                Problem::server_internal("internal error")
            }
        }
    }
}

impl From<AcmeError> for Problem {
    fn from(e: AcmeError) -> Problem {
        let detail = e.to_string();
        match e {
            AcmeError::EabRejected | AcmeError::Unauthorized(_) => Problem::unauthorized(detail),
            AcmeError::Malformed(_) => Problem::malformed(detail),
            AcmeError::AccountDoesNotExist => {
                Problem::new("accountDoesNotExist", StatusCode::BAD_REQUEST, detail)
            }
            AcmeError::RejectedIdentifier(_) => {
                Problem::new("rejectedIdentifier", StatusCode::BAD_REQUEST, detail)
            }
            AcmeError::BadCsr(r) => match r.class() {
                RejectionClass::Malformed => {
                    Problem::new("badCSR", StatusCode::BAD_REQUEST, detail)
                }
                _ if matches!(r, policy::Rejection::KeyNotAllowed(_)) => {
                    Problem::new("badPublicKey", StatusCode::BAD_REQUEST, detail)
                }
                _ => Problem::new("badCSR", StatusCode::BAD_REQUEST, detail),
            },
            AcmeError::OrderNotReady(_) => {
                Problem::new("orderNotReady", StatusCode::FORBIDDEN, detail)
            }
            AcmeError::AlreadyRevoked => {
                Problem::new("alreadyRevoked", StatusCode::BAD_REQUEST, detail)
            }
            AcmeError::BadRevocationReason(_) => {
                Problem::new("badRevocationReason", StatusCode::BAD_REQUEST, detail)
            }
            AcmeError::Sign(SignError::Store(s)) => s.into(),
            AcmeError::Sign(SignError::Throttled(d)) => Problem::rate_limited(d),
            AcmeError::Sign(SignError::Rejected(r)) => {
                Problem::new("badCSR", StatusCode::BAD_REQUEST, r.reason())
            }
            AcmeError::Sign(SignError::Signer(e)) => {
                // As /v1/sign's 503 signer_unavailable (a lost or hung
                // PKCS#11 token): nothing was spent, the client retries.
                tracing::error!(error = %format!("{e:#}"), "ACME: signing failed");
                let mut p = Problem::new(
                    "serverInternal",
                    StatusCode::SERVICE_UNAVAILABLE,
                    "signer_unavailable: the CA's signer is unavailable; retry shortly",
                );
                p.retry_after = Some(5);
                p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signer_failure_at_finalize_is_a_retryable_503_like_v1_sign() {
        let p = Problem::from(AcmeError::Sign(SignError::Signer(anyhow::anyhow!(
            "the PKCS#11 token is unavailable"
        ))));
        assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(p.kind, "serverInternal");
        assert_eq!(p.retry_after, Some(5));
        assert!(p.detail.contains("signer_unavailable"), "{}", p.detail);
    }
}
