//! `GET /metrics`: Prometheus metrics (OpenMetrics text), open to anyone who
//! can reach the listen address, as the contract says. What is counted and
//! why no label carries a hostname or a PSK: [`crate::metrics`].

use super::AppState;
use crate::metrics::{CONTENT_TYPE, ScrapeSource, metrics};
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(get_metrics))
}

async fn get_metrics(State(state): State<AppState>) -> Response {
    let body = metrics()
        .render(&ScrapeSource {
            store: &state.store,
            signer: &state.authority.signer,
            crl: &state.crl,
            clock: state.authority.clock.as_ref(),
            renew_grace: state.authority.renew_grace,
        })
        .await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}
