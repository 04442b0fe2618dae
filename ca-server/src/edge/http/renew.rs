//! `POST /v1/renew`: a new certificate for a host that presents its current
//! one as the TLS client certificate. The handler authenticates the
//! certificate against the store before reading the body, then runs the
//! renewal flow (`crate::issue::renew`) on its own task; it answers like
//! `/v1/sign` (201 + chain, 200 for the retry of a lost answer).

use super::body::discard;
use super::error::ApiError;
use super::{AppState, BODY_LIMIT, Peer, detached, issued_response, read_refusable};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use std::net::SocketAddr;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/renew", post(renew))
}

async fn renew(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let peer = req.extensions().get::<Peer>().cloned();
    let addr = peer
        .as_ref()
        .map(|p| p.addr)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let chain = peer.as_ref().and_then(|p| p.client_chain.clone());
    // Who asks comes first: a throttled address, or one without a
    // certificate of ours, gets nothing read.
    // Refused bodies are read and dropped (bounded) so that HTTP/2 clients
    // get the status rather than a reset stream (body.rs `discard`).
    let admitted = match state.authority.admit(addr).await {
        Ok(()) => {
            state
                .authority
                .authenticate_client(chain.as_deref().map(Vec::as_slice), addr)
                .await
        }
        Err(e) => Err(e),
    };
    let client = match admitted {
        Ok(client) => client,
        Err(e) => {
            discard(
                req.into_body(),
                &headers,
                BODY_LIMIT as u64,
                state.body_timeout,
            )
            .await;
            return Err(e.into());
        }
    };
    let body = read_refusable(&state, &headers, req, addr).await?;
    let authority = state.authority.clone();
    let issued = detached(&state.store, async move {
        authority.renew(&client, &body, addr).await
    })
    .await?;
    Ok(issued_response(issued))
}
