//! The admin API under `/v1/admin/`: the CLI's `psk`, `cert`, `revoke` and
//! `audit` verbs for a remote spawner, over mTLS with an admin certificate.
//!
//! Every request under the prefix, known route and method or not, first passes
//! [`require_admin`] (throttle, then the certificate against the store: see
//! `admin/auth.rs`); only then is it routed, so an unauthenticated caller
//! learns nothing, not even which endpoints exist. Handlers run the same
//! [`Ops`] as the local CLI, with the admin's certificate subject as the
//! audit actor; reads are audited too (`admin_read`).
//!
//! | method, path | body / query | answer |
//! |---|---|---|
//! | `GET /v1/admin/psks` | | `[PskInfo]` (hostnames, SANs, times; never a secret or hash) |
//! | `POST /v1/admin/psks` | `PskAddRequest` | 201 `PskAdded` (the PSK, once) |
//! | `POST /v1/admin/psks/batch` | `PskBatchRequest` | 201 `[PskIssued]` |
//! | `DELETE /v1/admin/psks/{hostname}` | | `{"removed": hostname}` |
//! | `GET /v1/admin/certs` | `?host=&expiring_secs=&stale=&renew_grace_secs=` | `[CertView]` (`stale`: the server's own grace unless given) |
//! | `GET /v1/admin/certs/{serial-or-host}` | | `CertView` with `pem` |
//! | `POST /v1/admin/revoke` | `RevokeRequest` | `RevokeReport` |
//! | `GET /v1/admin/acme/accounts` | `?host=` | `[AcmeAccountView]` |
//! | `POST /v1/admin/acme/accounts/{id}/deactivate` | `{}` | `AcmeAccountView` |
//! | `GET /v1/admin/audit` | `?since_secs=&limit=&host=&event=` | `[AuditEvent]` |

use super::error::ApiError;
use super::{AppState, BODY_LIMIT, Peer, read_body};
use crate::admin::auth::AdminIdentity;
use crate::admin::{
    AdminError, AuditQuery, CertQuery, Hints, Ops, PskAddRequest, PskBatchRequest, Publisher,
    RevokeRequest,
};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use tower::Layer;

/// The admin routes under `/v1/admin`, behind [`require_admin`].
pub fn routes(state: AppState) -> Router<AppState> {
    let api = Router::new()
        .route("/psks", get(psk_list).post(psk_add))
        .route("/psks/batch", post(psk_batch))
        .route("/psks/{hostname}", delete(psk_remove))
        .route("/certs", get(cert_list))
        .route("/certs/{target}", get(cert_show))
        .route("/revoke", post(revoke))
        .route("/audit", get(audit))
        .route("/acme/accounts", get(acme_accounts))
        .route("/acme/accounts/{id}/deactivate", post(acme_deactivate))
        .route("/", any(|| async { ApiError::not_found() }))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state.clone());
    // Around the whole router, not each route: the certificate is checked
    // before routing, so a wrong method on a known path (405) says nothing
    // to a caller without an admin certificate either.
    let guarded = middleware::from_fn_with_state(state, require_admin).layer(api);
    Router::new().nest_service("/v1/admin", guarded)
}

/// Lets a request in only with a valid admin certificate; the identity goes
/// into the request's extensions for the handler.
async fn require_admin(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<Peer>().cloned();
    let addr = peer
        .as_ref()
        .map(|p| p.addr)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let chain = peer.and_then(|p| p.client_chain);
    match state
        .authority
        .authenticate_admin(chain.as_deref().map(Vec::as_slice), addr)
        .await
    {
        Ok(id) => {
            req.extensions_mut().insert(Caller { id, addr });
            next.run(req).await
        }
        Err(e) => {
            // Read and drop a refused request's body first (bounded), so
            // HTTP/2 clients get the status (body.rs `discard`).
            let headers = req.headers().clone();
            super::body::discard(
                req.into_body(),
                &headers,
                BODY_LIMIT as u64,
                state.body_timeout,
            )
            .await;
            ApiError::from(e).into_response()
        }
    }
}

/// The authenticated admin and where the request came from.
#[derive(Debug, Clone)]
struct Caller {
    id: AdminIdentity,
    addr: SocketAddr,
}

impl Caller {
    fn ops<'a>(&self, state: &'a AppState) -> Ops<'a> {
        Ops {
            store: &state.store,
            now: state.authority.clock.now(),
            actor: self.id.actor(),
            peer: Some(self.addr.to_string()),
        }
    }
}

/// A JSON body within the size limit and deadline. Parse errors say where,
/// never what: a body may hold a PSK.
async fn json_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    req: Request,
) -> Result<T, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(AdminError::Invalid("send the request as application/json".into()).into());
    }
    let body = read_body(req.into_body(), headers, BODY_LIMIT, state.body_timeout).await?;
    serde_json::from_slice(&body).map_err(|e| {
        AdminError::Invalid(format!(
            "the JSON body does not fit this endpoint ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
        .into()
    })
}

/// A query string's filters, or a 400 saying which part is wrong.
fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| AdminError::Invalid(format!("query string: {}", e.body_text())).into())
}

async fn psk_list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    let ops = caller.ops(&state);
    let list = ops.psk_list().await?;
    ops.audit_read(&format!("psk list ({} entries)", list.len()))
        .await?;
    Ok(Json(list).into_response())
}

async fn psk_add(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let body: PskAddRequest = json_body(&state, &headers, req).await?;
    let hints = Hints {
        fingerprint: Some(state.authority.signer.fingerprint.clone()),
        server_url: Some(state.public_url.clone()),
    };
    let added = caller
        .ops(&state)
        .psk_add(body, &hints, &state.reserved)
        .await?;
    Ok((StatusCode::CREATED, Json(&added)).into_response())
}

async fn psk_batch(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let body: PskBatchRequest = json_body(&state, &headers, req).await?;
    let issued = caller.ops(&state).psk_batch(&body, &state.reserved).await?;
    Ok((StatusCode::CREATED, Json(&issued)).into_response())
}

async fn psk_remove(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(hostname): Path<String>,
) -> Result<Response, ApiError> {
    caller.ops(&state).psk_remove(&hostname).await?;
    Ok(Json(serde_json::json!({ "removed": hostname })).into_response())
}

async fn cert_list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<CertQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let mut q = query(q)?;
    if q.stale && q.renew_grace_secs.is_none() {
        q.renew_grace_secs = Some(state.authority.renew_grace.max(0) as u64);
    }
    let ops = caller.ops(&state);
    let list = ops.cert_list(&q).await?;
    ops.audit_read(&format!("cert list ({} entries)", list.len()))
        .await?;
    Ok(Json(list).into_response())
}

async fn cert_show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(target): Path<String>,
) -> Result<Response, ApiError> {
    let ops = caller.ops(&state);
    let cert = ops.cert_show(&target).await?;
    ops.audit_read(&format!("cert show {}", cert.serial))
        .await?;
    Ok(Json(cert).into_response())
}

async fn revoke(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let body: RevokeRequest = json_body(&state, &headers, req).await?;
    let publisher = Publisher::Service(state.crl.clone());
    let report = caller.ops(&state).revoke(&body, &publisher).await?;
    Ok(Json(report).into_response())
}

async fn audit(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let ops = caller.ops(&state);
    let rows = ops
        .audit(&q, Some(crate::admin::MAX_REMOTE_AUDIT_ROWS))
        .await?;
    ops.audit_read(&format!("audit ({} rows)", rows.len()))
        .await?;
    Ok(Json(rows).into_response())
}

async fn acme_accounts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: Result<
        Query<crate::admin::acme::AcmeAccountQuery>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let ops = caller.ops(&state);
    let list = ops.acme_accounts(&q).await?;
    ops.audit_read(&format!("acme accounts ({} entries)", list.len()))
        .await?;
    Ok(Json(list).into_response())
}

async fn acme_deactivate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(caller.ops(&state).acme_deactivate(&id).await?).into_response())
}
