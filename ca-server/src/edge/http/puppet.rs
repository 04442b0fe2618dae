//! The part of the Puppet CA HTTP API (v1) that a Puppet 7 agent uses to
//! bootstrap (`puppet ssl bootstrap`, the start of `puppet agent -t`), so a
//! stock agent with `pp_preshared_key` in its `csr_attributes.yaml` enrols.
//! See docs/puppet.md and /work/shared/PUPPET_AGENT_PROTOCOL.md.
//!
//! Answers are `text/plain`, as the agent expects. The differences from
//! Puppet Server's CA are deliberate:
//! - `PUT certificate_request/{certname}` runs the same [`super::issue`] →
//!   `Authority::sign` flow as `/v1/sign` (same PSK rules, audit and
//!   idempotent retry) with the CSR's CN bound to `{certname}`. It answers
//!   200 (empty) only when a certificate was issued; a refusal gets the same
//!   status as on `/v1/sign` (403 for any PSK failure, 422 for a policy
//!   refusal, and 422 rather than 400 for an unreadable CSR, since the agent
//!   takes a 400 as "already requested") so the agent prints "Failed to
//!   submit the CSR, HTTP response was 403" instead of waiting for a manual
//!   signature that never comes.
//!   Nothing is kept from a refused request: no pending CSR can squat a name.
//! - `GET certificate/{certname}` returns the newest valid (unexpired,
//!   unrevoked) certificate issued against a PSK for that name, 404 otherwise.
//!   Certificates are public; an agent only asks after its PUT got 200, which
//!   happens only when a certificate for its own key was recorded.
//! - `GET certificate_revocation_list/ca` returns the intermediate's CRL with
//!   the long validity and the root's CRL: the agent checks the whole chain.

use super::AppState;
use super::crl::{current_crls, not_modified, set_last_modified};
use super::error::{ApiError, Outcome};
use crate::store::CertKind;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};

/// The name Puppet uses for the CA's own certificate and CRL.
const CA_NAME: &str = "ca";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/puppet-ca/v1/certificate/{name}", get(certificate))
        .route(
            "/puppet-ca/v1/certificate_revocation_list/{name}",
            get(revocation_list),
        )
        .route(
            "/puppet-ca/v1/certificate_request/{name}",
            put(certificate_request),
        )
}

fn text(status: StatusCode, body: String, outcome: &'static str) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, "text/plain")], body).into_response();
    resp.extensions_mut().insert(Outcome(outcome));
    resp
}

/// `GET certificate/ca`: the CA bundle (intermediate then root).
/// `GET certificate/{certname}`: the host's current certificate.
async fn certificate(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    if name == CA_NAME {
        return text(
            StatusCode::OK,
            state.authority.signer.bundle_pem.clone(),
            "ca",
        );
    }
    if policy::hostname::validate(&name).is_err() {
        return ApiError::certificate_not_found(&name).into_text_response();
    }
    let now = state.authority.clock.now();
    let certs = match state.store.host_certs(&name).await {
        Ok(certs) => certs,
        Err(e) => {
            tracing::error!(error = %e, "store error");
            return ApiError::store_unavailable().into_text_response();
        }
    };
    // Newest first; only certificates a PSK paid for (not the server's own).
    let current = certs
        .into_iter()
        .find(|c| c.kind == CertKind::Host && c.revoked_at.is_none() && c.not_after > now);
    match current {
        Some(cert) => text(
            StatusCode::OK,
            pem::encode(&pem::Pem::new("CERTIFICATE", cert.der)),
            "certificate",
        ),
        None => ApiError::certificate_not_found(&name).into_text_response(),
    }
}

/// `GET certificate_revocation_list/ca`: the CRLs for the whole chain, PEM,
/// honouring `If-Modified-Since` (the agent sends it when it refreshes).
async fn revocation_list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if name != CA_NAME {
        return ApiError::not_found().into_text_response();
    }
    let now = state.authority.clock.now();
    let set = match current_crls(&state, now) {
        Ok(set) if set.intermediate_long.is_current(now) => set,
        Ok(_) => return ApiError::crl_unavailable().into_text_response(),
        Err(e) => return e.into_text_response(),
    };
    if let Some(resp) = not_modified(&headers, set.generated_at) {
        return resp;
    }
    let mut resp = text(StatusCode::OK, set.chain_pem(now), "crl");
    set_last_modified(&mut resp, set.generated_at);
    resp
}

/// `PUT certificate_request/{certname}`: the CSR, PEM, as `text/plain`.
async fn certificate_request(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    match super::issue(&state, &headers, req, Some(name)).await {
        Ok(issued) => text(
            StatusCode::OK,
            String::new(),
            if issued.replayed {
                "replayed"
            } else {
                "issued"
            },
        ),
        Err(e) => e.for_puppet_csr().into_text_response(),
    }
}
