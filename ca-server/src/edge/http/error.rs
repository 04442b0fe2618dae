//! The one place where domain errors become HTTP status codes and JSON
//! bodies `{"error": "<code>", "message": "<text>"}`. Codes are stable; messages
//! name the problem and never carry a secret.

use super::body::BodyError;
use crate::admin::AdminError;
use crate::admin::auth::AdminAuthError;
use crate::issue::sign::SignError;
use crate::store::StoreError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use policy::RejectionClass;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
    }

    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body exceeds {limit} bytes"),
        )
    }

    /// No current CRL to serve (never signed, or expired while re-signing failed):
    /// an expired CRL is never served.
    pub fn crl_unavailable() -> ApiError {
        ApiError::unavailable("crl_unavailable", "no current CRL; retry later")
    }

    /// A name in a Puppet URL with no certificate (or no valid name at all).
    pub fn certificate_not_found(name: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "Could not find certificate {}",
                policy::hostname::escape_for_display(&name.chars().take(256).collect::<String>())
            ),
        )
    }

    /// For Puppet's `certificate_request`: agents read a 400 there as "this
    /// name already has a request" and go on to wait, silently, for a manual
    /// signature that never comes. A CSR the CA cannot read is a 422 instead,
    /// so the agent prints "Failed to submit the CSR, HTTP response was 422".
    pub fn for_puppet_csr(mut self) -> ApiError {
        if self.status == StatusCode::BAD_REQUEST {
            self.status = StatusCode::UNPROCESSABLE_ENTITY;
        }
        self
    }

    /// The same answer as text for the Puppet CA API, whose agents send
    /// `Accept: text/plain` and print only the status line: the message goes
    /// in the body and, as far as HTTP allows, in the reason phrase (which
    /// `puppet ... --debug` shows).
    pub fn into_text_response(self) -> Response {
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.message),
        )
            .into_response();
        let phrase: Vec<u8> = self
            .message
            .bytes()
            .take(160)
            .map(|b| if (0x20..0x7f).contains(&b) { b } else { b'?' })
            .collect();
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(phrase) {
            resp.extensions_mut().insert(phrase);
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(Outcome(self.code));
        resp
    }

    /// 429 with `Retry-After`: the address failed too often (throttle.rs).
    pub fn too_many_failures(retry: std::time::Duration) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            "too many failed requests from this address; retry later",
        );
        e.retry_after = Some(crate::issue::throttle::retry_after_secs(retry));
        e
    }

    pub fn store_unavailable() -> ApiError {
        ApiError::unavailable(
            "store_unavailable",
            "the certificate store is unavailable; retry later (nothing was consumed)",
        )
    }

    /// 503 with `Retry-After: 5`.
    fn unavailable(code: &'static str, message: &str) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(5);
        e
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::UnsupportedContentType => ApiError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_content_type",
                "send the CSR as PEM (text/plain) or DER (application/pkcs10)",
            ),
            BodyError::BadLength => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid Content-Length",
            ),
            BodyError::TooLarge(limit) => ApiError::body_too_large(limit),
            BodyError::Timeout(t) => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("request body not received within {} s", t.as_secs()),
            ),
            BodyError::Unreadable => ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "could not read the request body",
            ),
        }
    }
}

impl From<SignError> for ApiError {
    fn from(e: SignError) -> ApiError {
        match e {
            SignError::Rejected(r) => {
                let status = match r.class() {
                    RejectionClass::Malformed => StatusCode::BAD_REQUEST,
                    RejectionClass::PskRejected | RejectionClass::Forbidden => {
                        StatusCode::FORBIDDEN
                    }
                    RejectionClass::Refused => StatusCode::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(status, r.code(), r.client_message())
            }
            SignError::Throttled(retry) => ApiError::too_many_failures(retry),
            SignError::Store(StoreError::Corrupt(detail)) => {
                tracing::error!(%detail, "store holds an unreadable row");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
            SignError::Store(e) => {
                tracing::error!(error = %e, "store error");
                ApiError::store_unavailable()
            }
            SignError::Signer(e) => {
                tracing::error!(error = %format!("{e:#}"), "signing failed");
                let mut e = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "signer_unavailable",
                    "the CA could not sign; retry later (nothing was consumed)",
                );
                e.retry_after = Some(5);
                e
            }
        }
    }
}

/// Admin API: every refusal of the caller's certificate is a 403 with its
/// own code (`admin/auth.rs`), as for `/v1/renew`.
impl From<AdminAuthError> for ApiError {
    fn from(e: AdminAuthError) -> ApiError {
        match e {
            AdminAuthError::Refused(r) => {
                ApiError::new(StatusCode::FORBIDDEN, r.code(), r.to_string())
            }
            AdminAuthError::Throttled(retry) => ApiError::too_many_failures(retry),
            AdminAuthError::Store(e) => SignError::Store(e).into(),
        }
    }
}

/// Admin API: what an operation (`admin::Ops`) refused or failed at.
impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> ApiError {
        match e {
            AdminError::Invalid(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            AdminError::NotFound(message) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            AdminError::Store(e) => SignError::Store(e).into(),
            AdminError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "admin operation failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(Outcome(self.code));
        resp
    }
}

/// The decision code of a response, picked up by the request log.
#[derive(Debug, Clone, Copy)]
pub struct Outcome(pub &'static str);
