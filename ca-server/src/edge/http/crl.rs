//! `GET /v1/crl`: the intermediate's current CRL, and `GET /v1/crl/root`:
//! the root's (covering the intermediate), each DER (`application/pkix-crl`)
//! or PEM (`?format=pem`), with `Last-Modified` / `If-Modified-Since`. The
//! CRLs are signed and published by [`crate::pki::crl`]; handlers only read the
//! cache and never serve an expired CRL.

use super::AppState;
use super::error::ApiError;
use crate::pki::crl::{CrlSet, SignedCrl};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/crl", get(get_crl))
        .route("/v1/crl/root", get(get_root_crl))
}

async fn get_crl(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve_crl(&state, query.as_deref(), &headers, |set| {
        Some(&set.intermediate)
    })
}

async fn get_root_crl(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve_crl(&state, query.as_deref(), &headers, |set| set.root.as_ref())
}

/// One CRL of the cached set, if it is there and current.
fn serve_crl(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    pick: fn(&CrlSet) -> Option<&SignedCrl>,
) -> Result<Response, ApiError> {
    let pem = match format_param(query) {
        Some("der") | None => false,
        Some("pem") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "format must be der or pem",
            ));
        }
    };
    let now = state.authority.clock.now();
    let set = current_crls(state, now)?;
    let Some(crl) = pick(&set).filter(|c| c.is_current(now)) else {
        return Err(ApiError::crl_unavailable());
    };
    if let Some(resp) = not_modified(headers, set.generated_at) {
        return Ok(resp);
    }
    let mut resp = if pem {
        (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            crl.pem.clone(),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/pkix-crl")],
            crl.der.clone(),
        )
            .into_response()
    };
    set_last_modified(&mut resp, set.generated_at);
    Ok(resp)
}

/// The value of the last `format=` in a query string.
fn format_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .filter_map(|kv| kv.strip_prefix("format="))
        .next_back()
}

/// The cached CRLs, or 503 when there are none yet.
pub(crate) fn current_crls(state: &AppState, now: i64) -> Result<Arc<CrlSet>, ApiError> {
    match state.crl.current() {
        Some(set) => Ok(set),
        None => {
            tracing::warn!(now, "a CRL was asked for before any was signed");
            Err(ApiError::crl_unavailable())
        }
    }
}

/// `304 Not Modified` when the request's `If-Modified-Since` is at or after
/// `generated_at` (HTTP dates have whole seconds, as does `generated_at`).
pub(crate) fn not_modified(headers: &HeaderMap, generated_at: i64) -> Option<Response> {
    let since = headers
        .get(header::IF_MODIFIED_SINCE)?
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())?;
    let since = since.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    (since >= generated_at).then(|| {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        set_last_modified(&mut resp, generated_at);
        resp
    })
}

pub(crate) fn set_last_modified(resp: &mut Response, generated_at: i64) {
    let at = UNIX_EPOCH + Duration::from_secs(generated_at.max(0) as u64);
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
        resp.headers_mut().insert(header::LAST_MODIFIED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NOW, fixture};
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(app: &axum::Router, path: &str) -> (StatusCode, Vec<u8>) {
        let resp = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        (
            status,
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
    }

    fn number_and_next_update(der: &[u8]) -> (i64, i64) {
        let (_, crl) = x509_parser::parse_x509_crl(der).unwrap();
        (
            i64::try_from(crl.crl_number().unwrap().clone()).unwrap(),
            crl.next_update().unwrap().timestamp(),
        )
    }

    /// With an injected clock: the CRL is served until its nextUpdate and
    /// never after (a 503 instead), and the refresh re-signs it at half of
    /// its validity, long before that.
    #[tokio::test]
    async fn an_expired_crl_is_never_served_and_the_refresh_re_signs_well_before() {
        let f = fixture().await;
        let crl = Arc::new(f.service());
        crl.regenerate().await.unwrap();
        let app = super::super::router(AppState {
            authority: Arc::new(f.authority()),
            store: f.store.clone(),
            crl: crl.clone(),
            body_timeout: Duration::from_secs(10),
            public_url: "https://localhost:8443".into(),
            reserved: Default::default(),
        });
        let (status, der) = get(&app, "/v1/crl").await;
        assert_eq!(status, StatusCode::OK);
        let (first, next_update) = number_and_next_update(&der);
        assert_eq!(next_update, NOW + 86_400);
        let (status, root) = get(&app, "/v1/crl/root?format=pem").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            String::from_utf8(root)
                .unwrap()
                .starts_with("-----BEGIN X509 CRL-----")
        );

        // The last second of its validity: still served.
        f.clock.set(NOW + 86_399);
        assert_eq!(get(&app, "/v1/crl").await.0, StatusCode::OK);
        // At nextUpdate (nothing re-signed it, e.g. the store was down): never served.
        f.clock.set(NOW + 86_400);
        for path in ["/v1/crl", "/v1/crl?format=pem"] {
            let (status, body) = get(&app, path).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"], "crl_unavailable");
        }

        // The refresh: nothing to do an hour in, a new CRL at half-life.
        f.clock.set(NOW + 3600);
        crl.poll().await.unwrap();
        assert_eq!(crl.current().unwrap().generation(), first);
        f.clock.set(NOW + 12 * 3600);
        crl.poll().await.unwrap();
        f.clock.set(NOW + 86_400);
        let (status, der) = get(&app, "/v1/crl").await;
        assert_eq!(status, StatusCode::OK);
        let (second, next_update) = number_and_next_update(&der);
        assert!(second > first);
        assert_eq!(next_update, NOW + 12 * 3600 + 86_400);
    }

    #[test]
    fn the_last_format_parameter_wins() {
        assert_eq!(format_param(None), None);
        assert_eq!(format_param(Some("format=pem")), Some("pem"));
        assert_eq!(format_param(Some("x=1&format=der&format=pem")), Some("pem"));
        assert_eq!(format_param(Some("formats=pem")), None);
    }

    #[test]
    fn if_modified_since_is_compared_in_whole_seconds() {
        let t: i64 = 1_800_000_000;
        let mut h = HeaderMap::new();
        assert!(not_modified(&h, t).is_none());
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(t as u64));
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_str(&date).unwrap(),
        );
        let resp = not_modified(&h, t).expect("same second: not modified");
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
        assert!(resp.headers().contains_key(header::LAST_MODIFIED));
        assert!(
            not_modified(&h, t + 1).is_none(),
            "re-signed since: send it"
        );
        h.insert(
            header::IF_MODIFIED_SINCE,
            HeaderValue::from_static("not a date"),
        );
        assert!(not_modified(&h, t).is_none());
    }
}
