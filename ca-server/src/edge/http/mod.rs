//! The HTTPS API's routes and handlers. Handlers decode, call the authority,
//! and render; status codes are chosen only in [`error`].

pub mod admin;
pub mod body;
pub mod crl;
pub mod error;
pub mod metrics;
pub mod puppet;
pub mod renew;

pub use body::{check_content_type, read_body};

use crate::issue::sign::{Authority, Issued, SignError};
use crate::issue::throttle::Weight;
use crate::pki::crl::CrlService;
use crate::store::{Store, StoreError};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::{ApiError, Outcome};
use futures_util::FutureExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted anywhere.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Who is on the other end of a connection, attached to every request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client certificate chain, if the client presented one that chains
    /// to our root. It may be expired or revoked: handlers authenticate it
    /// against the store (`Authority::authenticate_client`).
    pub client_chain: Option<Arc<Vec<rustls::pki_types::CertificateDer<'static>>>>,
}

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    pub authority: Arc<Authority>,
    pub store: Store,
    pub crl: Arc<CrlService>,
    pub body_timeout: Duration,
    /// The URL hosts reach this server at (the admin API's `psk add` names it).
    pub public_url: String,
    /// The CA's own names (server certificate, public URL host): no PSK for them.
    pub reserved: Arc<policy::ReservedNames>,
}

/// The router: every route of the API and the JSON fallbacks.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/ca", get(get_ca))
        .route("/v1/sign", post(sign))
        .route("/healthz", get(healthz))
        .merge(crl::routes())
        .merge(puppet::routes())
        .merge(renew::routes())
        .merge(metrics::routes())
        .merge(admin::routes(state.clone()))
        .merge(crate::edge::acme::routes())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One log line per request, with the decision code when there is one.
async fn log_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req.extensions().get::<Peer>().map(|p| p.addr.to_string());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let resp = next.run(req).await;
    let outcome = resp
        .extensions()
        .get::<Outcome>()
        .map(|o| o.0)
        .unwrap_or("");
    crate::metrics::metrics().observe_request(
        route.as_deref(),
        resp.status().as_u16(),
        outcome,
        start.elapsed(),
    );
    tracing::info!(
        %method,
        path = %policy::hostname::escape_for_display(&path),
        status = resp.status().as_u16(),
        outcome,
        peer = peer.as_deref().unwrap_or("-"),
        micros = start.elapsed().as_micros() as u64,
        route = route.as_deref().unwrap_or("-"),
        "request"
    );
    resp
}

async fn get_ca(State(state): State<AppState>) -> Response {
    pem_response(
        StatusCode::OK,
        state.authority.signer.bundle_pem.clone(),
        "application/pem-certificate-chain",
    )
}

async fn healthz(State(state): State<AppState>) -> Response {
    // A CA key in a lost PKCS#11 token cannot sign: the server is not healthy.
    if let Err(e) = state.authority.signer.key_available() {
        tracing::warn!(error = %e, "health check: signer unavailable");
        return ApiError::signer_unavailable().into_response();
    }
    match state.authority.store_ready().await {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store unavailable");
            ApiError::store_unavailable().into_response()
        }
    }
}

async fn sign(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let issued = issue(&state, &headers, req, None).await?;
    Ok(issued_response(issued))
}

/// 201 (200 for an idempotent retry) with the chain PEM and `X-Certificate-Serial`.
pub(crate) fn issued_response(issued: Issued) -> Response {
    let status = if issued.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut resp = pem_response(
        status,
        issued.chain_pem,
        "application/pem-certificate-chain",
    );
    resp.headers_mut().insert(
        "x-certificate-serial",
        HeaderValue::from_str(&issued.serial).expect("hex is a valid header"),
    );
    resp.extensions_mut().insert(Outcome(if issued.replayed {
        "replayed"
    } else {
        "issued"
    }));
    resp
}

/// Reads a CSR body and runs the issuance flow for it (with the CN bound to
/// `certname` when the route names one): every route to the signer goes
/// through here and [`Authority::sign`].
pub(crate) async fn issue(
    state: &AppState,
    headers: &HeaderMap,
    req: Request,
    certname: Option<String>,
) -> Result<Issued, ApiError> {
    let peer = req
        .extensions()
        .get::<Peer>()
        .map(|p| p.addr)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    // A throttled address is refused before its body is parsed.
    if let Err(e) = state.authority.admit(peer).await {
        body::discard(
            req.into_body(),
            headers,
            BODY_LIMIT as u64,
            state.body_timeout,
        )
        .await;
        return Err(e.into());
    }
    let body = read_refusable(state, headers, req, peer).await?;

    // On the connection's task, not a task of its own: the flow is safe to
    // drop at any await (a client that hangs up). A refusal is counted
    // before its audit row is written, and a dropped write leaves the row
    // for the next flush (`rejection_log`); an issuance handed to the store
    // commits whether or not anyone waits, and the client's retry gets that
    // certificate back. A spawn per request cost 1-7 % (BENCHMARKS.md). A
    // panic is still a 500, as it was from a task of its own.
    let flow = state.authority.sign(&body, certname.as_deref(), peer);
    let issued = std::panic::AssertUnwindSafe(flow)
        .catch_unwind()
        .await
        .map_err(|_| flow_failed("panicked"))?;
    Ok(suspect_outage(&state.store, issued)?)
}

/// A CSR body, its content type checked: a refused one (wrong type, bad or
/// excessive length) counts lightly against the address and is read and
/// dropped (bounded) before the answer, so HTTP/2 clients get the status.
pub(crate) async fn read_refusable(
    state: &AppState,
    headers: &HeaderMap,
    req: Request,
    peer: SocketAddr,
) -> Result<bytes::Bytes, ApiError> {
    if let Err(e) = check_content_type(headers) {
        state.authority.count_refusal(peer, Weight::Light);
        body::discard(
            req.into_body(),
            headers,
            body::DRAIN_LIMIT,
            state.body_timeout,
        )
        .await;
        return Err(e.into());
    }
    read_body(req.into_body(), headers, BODY_LIMIT, state.body_timeout)
        .await
        .map_err(|e| {
            if e.is_refusal() {
                state.authority.count_refusal(peer, Weight::Light);
            }
            e.into()
        })
}

/// Runs a signing flow on its own task: a client that disconnects
/// mid-request must not cancel it between signing and recording (the
/// renewal flow; `issue` shows why the PSK flow needs no task).
pub(crate) async fn detached(
    store: &Store,
    flow: impl Future<Output = Result<Issued, SignError>> + Send + 'static,
) -> Result<Issued, ApiError> {
    let issued = tokio::spawn(flow).await.map_err(|e| {
        flow_failed(if e.is_panic() {
            "panicked"
        } else {
            "cancelled"
        })
    })?;
    Ok(suspect_outage(store, issued)?)
}

/// The 500 of a signing flow that panicked (its message went to the panic
/// hook's output) or whose task was cancelled (shutdown).
fn flow_failed(how: &str) -> ApiError {
    tracing::error!("signing flow {how}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

/// Wakes the store watcher when a flow failed on the database: the error
/// may be an outage.
fn suspect_outage(store: &Store, issued: Result<Issued, SignError>) -> Result<Issued, SignError> {
    issued.inspect_err(|e| {
        if let SignError::Store(StoreError::Unavailable(_)) = e {
            store.suspect();
        }
    })
}

fn pem_response(status: StatusCode, body: String, content_type: &'static str) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
