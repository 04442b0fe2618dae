//! The plain-HTTP listener (`serve --http-listen`): public material only,
//! for relying parties that fetch revocation data without TLS (nginx and
//! HAProxy stapling, OpenSSL, browsers following AIA and CDP):
//!
//! - `GET /crl/intermediate.crl`, `GET /crl/root.crl` (DER, `application/pkix-crl`)
//! - `GET /ca/intermediate.crt`, `GET /ca/root.crt` (DER, `application/pkix-cert`)
//! - `GET /ocsp/<base64 request>` and `POST /ocsp` (`application/ocsp-request`)
//!
//! No PSK, admin, renewal or signing route answers here (404), and only GET
//! and POST are allowed (405). HTTP/1.1 only, with the HTTPS listener's
//! header, idle and body timeouts and its connection limit.

use crate::clock::Clock;
use crate::edge::http::error::ApiError;
use crate::edge::server::Limits;
use crate::pki::ca::{
    PLAIN_PATH_INTERMEDIATE_CERT, PLAIN_PATH_INTERMEDIATE_CRL, PLAIN_PATH_ROOT_CERT,
    PLAIN_PATH_ROOT_CRL, Signer,
};
use crate::pki::crl::CrlService;
use crate::pki::ocsp::MAX_REQUEST;
use crate::pki::responder::{Answer, Responder};
use anyhow::Result;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use proto::ocsp::ResponseStatus;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// What the plain-HTTP handlers read.
#[derive(Debug, Clone)]
pub struct PlainState {
    pub crl: Arc<CrlService>,
    pub signer: Arc<Signer>,
    pub responder: Arc<Responder>,
    pub clock: Arc<dyn Clock>,
    pub body_timeout: Duration,
}

/// The plain-HTTP routes.
pub fn router(state: PlainState) -> Router {
    Router::new()
        .route(PLAIN_PATH_INTERMEDIATE_CRL, get(intermediate_crl))
        .route(PLAIN_PATH_ROOT_CRL, get(root_crl))
        .route(PLAIN_PATH_INTERMEDIATE_CERT, get(intermediate_cert))
        .route(PLAIN_PATH_ROOT_CERT, get(root_cert))
        .route("/ocsp", axum::routing::post(ocsp_post).get(ocsp_empty))
        .route("/ocsp/", axum::routing::post(ocsp_post).get(ocsp_empty))
        .route("/ocsp/{*request}", get(ocsp_get))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

async fn log_request(req: Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        path = %policy::hostname::escape_for_display(&path),
        status = resp.status().as_u16(),
        listener = "http",
        "request"
    );
    resp
}

fn etag_of(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    format!("\"{}\"", hex::encode(&d.as_ref()[..16]))
}

/// 304 when `If-None-Match` names `etag`.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

/// A DER body with ETag, Cache-Control and 304 handling.
fn der_response(
    headers: &HeaderMap,
    body: Bytes,
    content_type: &'static str,
    max_age: i64,
    last_modified: Option<i64>,
) -> Response {
    let etag = etag_of(&body);
    let mut resp = if matches_etag(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex etag"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={}, no-transform", max_age.max(0)))
            .expect("ascii"),
    );
    if let Some(t) = last_modified {
        crate::edge::http::crl::set_last_modified(&mut resp, t);
    }
    resp
}

fn crl_response(state: &PlainState, headers: &HeaderMap, root: bool) -> Response {
    let now = state.clock.now();
    let set = state.crl.current();
    let crl = set.as_ref().and_then(|s| {
        if root {
            s.current_root(now)
        } else {
            Some(&s.intermediate).filter(|c| c.is_current(now))
        }
    });
    match crl {
        // Cached until half its validity: the CRL is re-signed by then.
        Some(c) => der_response(
            headers,
            Bytes::from(c.der.clone()),
            "application/pkix-crl",
            ((c.this_update + c.next_update) / 2 - now)
                .max(60)
                .min(c.next_update - now),
            Some(c.this_update),
        ),
        None => ApiError::crl_unavailable().into_response(),
    }
}

async fn intermediate_crl(State(s): State<PlainState>, headers: HeaderMap) -> Response {
    crl_response(&s, &headers, false)
}

async fn root_crl(State(s): State<PlainState>, headers: HeaderMap) -> Response {
    crl_response(&s, &headers, true)
}

/// CA certificates change only with a rotation (and a restart): a day.
const CERT_MAX_AGE: i64 = 86_400;

async fn intermediate_cert(State(s): State<PlainState>, headers: HeaderMap) -> Response {
    let der = Bytes::from(s.signer.intermediate_der.clone());
    der_response(&headers, der, "application/pkix-cert", CERT_MAX_AGE, None)
}

async fn root_cert(State(s): State<PlainState>, headers: HeaderMap) -> Response {
    let der = Bytes::from(s.signer.root_der.clone());
    der_response(&headers, der, "application/pkix-cert", CERT_MAX_AGE, None)
}

const OCSP_RESPONSE: &str = "application/ocsp-response";

fn ocsp_response(headers: &HeaderMap, answer: Answer) -> Response {
    match answer.caching {
        Some(c) => {
            let mut resp = if matches_etag(headers, &c.etag) {
                StatusCode::NOT_MODIFIED.into_response()
            } else {
                ([(header::CONTENT_TYPE, OCSP_RESPONSE)], answer.der).into_response()
            };
            let h = resp.headers_mut();
            h.insert(
                header::ETAG,
                HeaderValue::from_str(&c.etag).expect("hex etag"),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_str(&format!(
                    "public, max-age={}, no-transform, must-revalidate",
                    c.max_age
                ))
                .expect("ascii"),
            );
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + Duration::from_secs(c.next_update.max(0) as u64),
            )) {
                h.insert(header::EXPIRES, v);
            }
            crate::edge::http::crl::set_last_modified(&mut resp, c.produced_at);
            resp
        }
        // Error statuses and nonce answers are not cacheable.
        None => (
            [
                (header::CONTENT_TYPE, OCSP_RESPONSE),
                (header::CACHE_CONTROL, "no-store"),
            ],
            answer.der,
        )
            .into_response(),
    }
}

fn ocsp_error(status: StatusCode, ocsp: ResponseStatus) -> Response {
    crate::metrics::metrics().ocsp_request(ocsp.name());
    (
        status,
        [
            (header::CONTENT_TYPE, OCSP_RESPONSE),
            (header::CACHE_CONTROL, "no-store"),
        ],
        ocsp.error_response(),
    )
        .into_response()
}

async fn ocsp_get(State(s): State<PlainState>, uri: Uri, headers: HeaderMap) -> Response {
    // The raw path, not a percent-decoded copy: base64 holds '/' and '+',
    // and the request may be URL-encoded (RFC 6960 A.1) or not.
    let request = uri.path().strip_prefix("/ocsp/").unwrap_or("");
    let Ok(der) = crate::pki::ocsp::decode_get_path(request) else {
        return ocsp_error(StatusCode::OK, ResponseStatus::MalformedRequest);
    };
    let answer = s.responder.answer(&der).await;
    ocsp_response(&headers, answer)
}

async fn ocsp_empty() -> Response {
    ocsp_error(StatusCode::OK, ResponseStatus::MalformedRequest)
}

async fn ocsp_post(State(s): State<PlainState>, headers: HeaderMap, req: Request) -> Response {
    let body =
        match crate::edge::http::read_body(req.into_body(), &headers, MAX_REQUEST, s.body_timeout)
            .await
        {
            Ok(b) => b,
            Err(crate::edge::http::body::BodyError::TooLarge(_)) => {
                return ocsp_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ResponseStatus::MalformedRequest,
                );
            }
            Err(e @ crate::edge::http::body::BodyError::Timeout(_)) => {
                return ApiError::from(e).into_response();
            }
            Err(_) => return ocsp_error(StatusCode::OK, ResponseStatus::MalformedRequest),
        };
    let answer = s.responder.answer(&body).await;
    ocsp_response(&headers, answer)
}

/// Serves `app` on `listener` (HTTP/1.1, no TLS) until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "plain HTTP: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, "plain HTTP: connection limit reached; closing");
            continue;
        };
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let idle = limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            // Requests in flight, and a tick per finished one: a connection
            // with none in flight for `idle` is closed.
            let in_flight = Arc::new(AtomicUsize::new(0));
            let (done_tx, mut done_rx) = tokio::sync::watch::channel(0u64);
            let counter = in_flight.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(crate::edge::http::Peer {
                    addr,
                    client_chain: None,
                });
                counter.fetch_add(1, Ordering::SeqCst);
                let counter = counter.clone();
                let done_tx = done_tx.clone();
                let app = app.clone();
                async move {
                    let resp = app.oneshot(req.map(Body::new)).await;
                    counter.fetch_sub(1, Ordering::SeqCst);
                    done_tx.send_modify(|n| *n += 1);
                    resp
                }
            });
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            let watchdog = async {
                loop {
                    let tick = tokio::time::timeout(idle, done_rx.changed()).await;
                    match tick {
                        Ok(Ok(())) => continue,
                        Ok(Err(_)) => std::future::pending::<()>().await,
                        Err(_) if in_flight.load(Ordering::SeqCst) == 0 => return,
                        Err(_) => continue,
                    }
                }
            };
            tokio::select! {
                result = watcher.watch(conn) => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %addr, error = %e, "plain HTTP connection ended with an error");
                    }
                }
                _ = watchdog => tracing::debug!(peer = %addr, "plain HTTP: closing an idle connection"),
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
    Ok(())
}
