//! The one place where domain errors become HTTP status codes and JSON
//! bodies `{"error": "<code>", "message": "<text>"}`. Codes are stable; messages
//! name the problem and never carry a secret.

use super::body::BodyError;
use crate::authority::SignError;
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

    pub fn store_unavailable() -> ApiError {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the certificate store is unavailable; retry later (nothing was consumed)",
        );
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
                    RejectionClass::PskRejected => StatusCode::FORBIDDEN,
                    RejectionClass::Refused => StatusCode::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(status, r.code(), r.client_message())
            }
            SignError::Throttled(retry) => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_failures",
                    "too many failed requests from this address; retry later",
                );
                e.retry_after = Some(crate::throttle::retry_after_secs(retry));
                e
            }
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
