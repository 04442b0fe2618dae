//! ACME (RFC 8555) on the HTTPS listener, for stock clients (certbot, lego,
//! acme.sh, Caddy, cert-manager): the directory, Replay-Nonces, JWS
//! authentication of every POST, and the resources (accounts, orders,
//! authorizations, challenges, certificates). An account needs an External
//! Account Binding whose `kid` is a hostname and whose HMAC key is that
//! host's PSK (`issue::acme` spends it); its authorizations are valid from
//! the start. Every answer carries a fresh `Replay-Nonce` and the `index`
//! link; every refusal is a problem document ([`problem`]).
//!
//! URLs are built from the request's authority, so a client reaches every
//! resource the way it reached the directory; an account URL (`kid`) is
//! recognised by its path, so an account created through one replica works
//! through another.

pub mod jws;
pub mod nonce;
pub mod problem;

use crate::edge::http::{AppState, BODY_LIMIT, Peer, error::Outcome, read_body};
use crate::issue::acme::{AcmeError, NewAccount, RevokeBy};
use crate::store::{AcmeAccount, AcmeOrder};
use crate::store::{Event, Outcome as AuditOutcome};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jws::{AccountKey, Flattened, Jws, JwsError};
use problem::Problem;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;

/// Media type of every ACME POST body.
const JOSE_JSON: &str = "application/jose+json";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/acme/directory", get(directory))
        .route("/acme/new-nonce", get(new_nonce).head(new_nonce))
        .route("/acme/new-account", post(new_account))
        .route("/acme/new-order", post(new_order))
        .route("/acme/revoke-cert", post(revoke_cert))
        .route("/acme/key-change", post(key_change))
        .route("/acme/acct/{id}", post(account))
        .route("/acme/acct/{id}/orders", post(account_orders))
        .route("/acme/order/{id}", post(order))
        .route("/acme/order/{id}/finalize", post(finalize))
        .route("/acme/authz/{id}/{idx}", post(authz))
        .route("/acme/chall/{id}/{idx}", post(challenge))
        .route("/acme/cert/{serial}", post(certificate))
}

/// Where a request came from and the URL base it used.
#[derive(Debug, Clone)]
struct Ctx {
    base: String,
    /// The full URL of this request (the JWS `url` must equal it).
    url: String,
    peer: SocketAddr,
}

impl Ctx {
    fn of(req: &Request) -> Result<Ctx, Problem> {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .ok_or_else(|| Problem::malformed("the request names no host"))?;
        if authority.is_empty()
            || authority.len() > 255
            || !authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(Problem::malformed(
                "the request's host is not a valid authority",
            ));
        }
        let base = format!("https://{authority}");
        let peer = req
            .extensions()
            .get::<Peer>()
            .map(|p| p.addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        Ok(Ctx {
            url: format!("{base}{}", req.uri().path()),
            base,
            peer,
        })
    }

    fn account_url(&self, id: &str) -> String {
        format!("{}/acme/acct/{id}", self.base)
    }
    fn order_url(&self, id: &str) -> String {
        format!("{}/acme/order/{id}", self.base)
    }
}

/// A successful answer, before the nonce and links are added.
struct Answer {
    status: StatusCode,
    body: Body,
    location: Option<String>,
    up: Option<String>,
    outcome: &'static str,
}

enum Body {
    Json(Value),
    Pem(String),
    Empty,
}

impl Answer {
    fn new(status: StatusCode, body: Body, outcome: &'static str) -> Answer {
        Answer {
            status,
            body,
            location: None,
            up: None,
            outcome,
        }
    }

    fn json(status: StatusCode, body: Value, outcome: &'static str) -> Answer {
        Answer::new(status, Body::Json(body), outcome)
    }
    fn at(mut self, location: String) -> Answer {
        self.location = Some(location);
        self
    }
}

/// A fresh nonce ([`nonce`]: good once, on any replica).
fn fresh_nonce(state: &AppState) -> Result<String, Problem> {
    nonce::issue(state.authority.clock.now())
        .ok_or_else(|| Problem::server_internal("no nonce could be made"))
}

fn set(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().append(name, v);
    }
}

/// Renders an answer or a problem with a fresh `Replay-Nonce` (a badNonce
/// answer carries the nonce the client retries with), the `index` link and
/// no caching.
async fn finish(state: &AppState, base: Option<&str>, result: Result<Answer, Problem>) -> Response {
    let nonce = match fresh_nonce(state) {
        Ok(n) => Some(n),
        Err(p) => return problem_response(&p, base, None),
    };
    match result {
        Ok(a) => {
            let mut resp = match a.body {
                Body::Json(v) => (a.status, axum::Json(v)).into_response(),
                Body::Pem(pem) => {
                    let mut r = (a.status, pem).into_response();
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/pem-certificate-chain"),
                    );
                    r
                }
                Body::Empty => a.status.into_response(),
            };
            decorate(&mut resp, base, nonce.as_deref());
            if let Some(l) = &a.location {
                set(&mut resp, header::LOCATION, l);
            }
            if let Some(up) = &a.up {
                set(&mut resp, header::LINK, &format!("<{up}>;rel=\"up\""));
            }
            resp.extensions_mut().insert(Outcome(a.outcome));
            resp
        }
        Err(p) => problem_response(&p, base, nonce.as_deref()),
    }
}

fn decorate(resp: &mut Response, base: Option<&str>, nonce: Option<&str>) {
    if let Some(n) = nonce {
        set(resp, header::HeaderName::from_static("replay-nonce"), n);
    }
    if let Some(base) = base {
        set(
            resp,
            header::LINK,
            &format!("<{base}/acme/directory>;rel=\"index\""),
        );
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn problem_response(p: &Problem, base: Option<&str>, nonce: Option<&str>) -> Response {
    let mut resp = (p.status, p.body().to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    decorate(&mut resp, base, nonce);
    if let Some(secs) = p.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(l) = &p.location {
        set(&mut resp, header::LOCATION, l);
    }
    resp.extensions_mut().insert(Outcome(p.code()));
    resp
}

async fn directory(req: Request) -> Response {
    let ctx = match Ctx::of(&req) {
        Ok(c) => c,
        Err(p) => return problem_response(&p, None, None),
    };
    let b = &ctx.base;
    let mut resp = axum::Json(json!({
        "newNonce": format!("{b}/acme/new-nonce"),
        "newAccount": format!("{b}/acme/new-account"),
        "newOrder": format!("{b}/acme/new-order"),
        "revokeCert": format!("{b}/acme/revoke-cert"),
        "keyChange": format!("{b}/acme/key-change"),
        "meta": {
            "externalAccountRequired": true,
            "website": format!("{b}/v1/ca"),
        },
    }))
    .into_response();
    resp.extensions_mut().insert(Outcome("ok"));
    resp
}

async fn new_nonce(State(state): State<AppState>, req: Request) -> Response {
    let ctx = match Ctx::of(&req) {
        Ok(c) => c,
        Err(p) => return problem_response(&p, None, None),
    };
    let status = if req.method() == Method::HEAD {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    let answer = Answer::new(status, Body::Empty, "ok");
    finish(&state, Some(&ctx.base), Ok(answer)).await
}

/// Which key a POST must be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyRule {
    /// `jwk` (newAccount).
    Jwk,
    /// `kid` of a valid account (everything else).
    Account,
    /// Either (revokeCert: the account, or the certificate's key).
    Either,
}

/// An authenticated POST.
struct Signed {
    jws: Jws,
    key: AccountKey,
    account: Option<AcmeAccount>,
}

impl Signed {
    fn account(&self) -> &AcmeAccount {
        self.account
            .as_ref()
            .expect("KeyRule::Account has an account")
    }

    /// The payload as JSON (`{}` for POST-as-GET's empty payload).
    fn json(&self) -> Result<Value, Problem> {
        if self.jws.payload.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&self.jws.payload)
            .map_err(|e| Problem::malformed(format!("the payload is not JSON: {e}")))
    }
}

/// The account id a `kid` names (its path; the host may be another replica's).
fn kid_account(kid: &str) -> Option<&str> {
    let rest = kid.strip_prefix("https://")?;
    let path = &rest[rest.find('/')?..];
    let id = path.strip_prefix("/acme/acct/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Admission, body intake, JWS parse, url, key, signature, then the nonce.
async fn authenticate(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    body: axum::body::Body,
    rule: KeyRule,
) -> Result<Signed, Problem> {
    let authority = &state.authority;
    authority
        .acme_admit(ctx.peer)
        .await
        .map_err(Problem::rate_limited)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim() != JOSE_JSON {
        return Err(Problem::unsupported_media_type());
    }
    let body = read_body(body, headers, BODY_LIMIT, state.body_timeout)
        .await
        .map_err(Problem::from)?;
    let jws = Jws::parse(&body)?;
    if !jws::supported_alg(&jws.header.alg) {
        return Err(JwsError::BadAlgorithm(jws::clip(&jws.header.alg)).into());
    }
    if jws.header.url.as_deref() != Some(ctx.url.as_str()) {
        return Err(Problem::unauthorized(format!(
            "the JWS url must be this request's URL, {}",
            ctx.url
        )));
    }
    let (key, account) = match (&jws.header.jwk, &jws.header.kid, rule) {
        (Some(jwk), None, KeyRule::Jwk | KeyRule::Either) => (AccountKey::from_jwk(jwk)?, None),
        (None, Some(kid), KeyRule::Account | KeyRule::Either) => {
            let account = match kid_account(kid) {
                Some(id) => authority.store.acme_account(id).await?,
                None => None,
            };
            let account = account.ok_or_else(|| Problem::from(AcmeError::AccountDoesNotExist))?;
            if account.status != "valid" {
                return Err(Problem::unauthorized(format!(
                    "account {} is {}",
                    account.id, account.status
                )));
            }
            let jwk: Value = serde_json::from_str(&account.jwk)
                .map_err(|_| Problem::server_internal("stored account key unreadable"))?;
            (AccountKey::from_jwk(&jwk)?, Some(account))
        }
        (Some(_), Some(_), _) => {
            return Err(Problem::malformed("a JWS carries jwk or kid, not both"));
        }
        (_, _, KeyRule::Jwk) => {
            return Err(Problem::malformed("this request is signed with a jwk"));
        }
        (_, _, _) => {
            return Err(Problem::malformed(
                "this request is signed by an account (kid)",
            ));
        }
    };
    if let Err(e) = jws.verify(&key) {
        if e == JwsError::BadSignature {
            authority.throttle.record_failure(
                ctx.peer.ip(),
                std::time::Instant::now(),
                crate::issue::throttle::Weight::Full,
            );
            authority
                .acme_refusal(
                    authority.clock.now(),
                    account.as_ref().map(|a| a.hostname.as_str()),
                    ctx.peer,
                    "acme_bad_signature",
                    format!("bad JWS signature; key {}", key.thumbprint()),
                )
                .await;
        }
        return Err(e.into());
    }
    let Some(nonce) = jws.header.nonce.as_deref() else {
        return Err(Problem::bad_nonce());
    };
    let now = authority.clock.now();
    let Some(expires) = nonce::check(nonce, now) else {
        return Err(Problem::bad_nonce());
    };
    if !authority.store.use_acme_nonce(nonce, now, expires).await? {
        return Err(Problem::bad_nonce());
    }
    Ok(Signed { jws, key, account })
}

/// Runs one POST route: context, authentication by `rule`, then `f`.
async fn run<F, Fut>(state: AppState, req: Request, rule: KeyRule, f: F) -> Response
where
    F: FnOnce(AppState, Ctx, Signed) -> Fut,
    Fut: Future<Output = Result<Answer, Problem>>,
{
    let ctx = match Ctx::of(&req) {
        Ok(c) => c,
        Err(p) => return finish(&state, None, Err(p)).await,
    };
    let (parts, body) = req.into_parts();
    let result = match authenticate(&state, &ctx, &parts.headers, body, rule).await {
        Ok(signed) => f(state.clone(), ctx.clone(), signed).await,
        Err(p) => Err(p),
    };
    if let Err(p) = &result {
        count_refusal(&state, &ctx, p);
    }
    finish(&state, Some(&ctx.base), result).await
}

/// Every refused ACME request counts against the address, as on `/v1/sign`:
/// a quarter of a failure. Not `badNonce` (clients retry it by design, RFC
/// 8555 6.5), not `rateLimited` (already throttled), not `unauthorized`
/// (binding failures count in full where they are refused), not a lookup of
/// an account that does not exist yet (every client's first step).
fn count_refusal(state: &AppState, ctx: &Ctx, p: &Problem) {
    let counted = p.status.is_client_error()
        && !matches!(
            p.code(),
            "badNonce" | "rateLimited" | "unauthorized" | "accountDoesNotExist"
        );
    if counted {
        state.authority.throttle.record_failure(
            ctx.peer.ip(),
            std::time::Instant::now(),
            crate::issue::throttle::Weight::Light,
        );
    }
}

fn account_json(ctx: &Ctx, a: &AcmeAccount) -> Value {
    json!({
        "status": a.status,
        "contact": a.contact,
        "orders": format!("{}/orders", ctx.account_url(&a.id)),
    })
}

fn identifier_json(name: &str) -> Value {
    let kind = if name.parse::<std::net::IpAddr>().is_ok() {
        "ip"
    } else {
        "dns"
    };
    json!({"type": kind, "value": name})
}

fn order_json(ctx: &Ctx, o: &AcmeOrder) -> Value {
    let mut v = json!({
        "status": o.status,
        "expires": proto::timefmt::rfc3339(o.expires_at),
        "identifiers": o.identifiers.iter().map(|n| identifier_json(n)).collect::<Vec<_>>(),
        "authorizations": (0..o.identifiers.len())
            .map(|i| format!("{}/acme/authz/{}/{i}", ctx.base, o.id))
            .collect::<Vec<_>>(),
        "finalize": format!("{}/finalize", ctx.order_url(&o.id)),
    });
    if let Some(serial) = &o.serial {
        v["certificate"] = json!(format!("{}/acme/cert/{serial}", ctx.base));
    }
    v
}

/// The challenge of authorization `idx` of an order: already valid.
fn challenge_json(ctx: &Ctx, o: &AcmeOrder, idx: usize) -> Value {
    let token = ring::digest::digest(&ring::digest::SHA256, format!("{}/{idx}", o.id).as_bytes());
    json!({
        "type": "http-01",
        "url": format!("{}/acme/chall/{}/{idx}", ctx.base, o.id),
        "status": "valid",
        "validated": proto::timefmt::rfc3339(o.created_at),
        "token": URL_SAFE_NO_PAD.encode(token.as_ref()),
    })
}

async fn new_account(State(state): State<AppState>, req: Request) -> Response {
    run(state, req, KeyRule::Jwk, |state, ctx, signed| async move {
        let payload = signed.json()?;
        let authority = &state.authority;
        if let Some(existing) = authority
            .store
            .acme_account_by_key(&signed.key.thumbprint())
            .await?
        {
            if existing.status != "valid" {
                return Err(Problem::unauthorized(format!(
                    "the account of this key is {}",
                    existing.status
                )));
            }
            return Ok(
                Answer::json(StatusCode::OK, account_json(&ctx, &existing), "existing")
                    .at(ctx.account_url(&existing.id)),
            );
        }
        if payload["onlyReturnExisting"] == json!(true) {
            return Err(AcmeError::AccountDoesNotExist.into());
        }
        let Some(eab) = payload.get("externalAccountBinding") else {
            return Err(Problem::external_account_required());
        };
        let eab: Flattened = serde_json::from_value(eab.clone()).map_err(|e| {
            Problem::malformed(format!(
                "externalAccountBinding is not a flattened JWS: {e}"
            ))
        })?;
        let eab = Jws::from_flattened(&eab)?;
        let contact = payload["contact"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(Value::as_str)
                    .take(4)
                    .map(|s| s.chars().take(128).collect())
                    .collect()
            })
            .unwrap_or_default();
        let account = authority
            .acme_new_account(
                NewAccount {
                    key: &signed.key,
                    eab: &eab,
                    url: &ctx.url,
                    contact,
                },
                ctx.peer,
            )
            .await?;
        Ok(
            Answer::json(StatusCode::CREATED, account_json(&ctx, &account), "created")
                .at(ctx.account_url(&account.id)),
        )
    })
    .await
}

/// The signed account must be the one the path names.
fn own_account<'a>(signed: &'a Signed, id: &str) -> Result<&'a AcmeAccount, Problem> {
    let a = signed.account();
    if a.id != id {
        return Err(Problem::unauthorized(
            "the request is signed by another account",
        ));
    }
    Ok(a)
}

async fn account(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let a = own_account(&signed, &id)?.clone();
            let payload = signed.json()?;
            if payload["status"] == json!("deactivated") {
                let audit = crate::store::AuditEvent {
                    at: state.authority.clock.now(),
                    event: Event::AcmeAccount.into(),
                    hostname: Some(a.hostname.clone()),
                    outcome: AuditOutcome::Deactivated.into(),
                    reason: Some(format!(
                        "account {}; key {}; by its key",
                        a.id, a.thumbprint
                    )),
                    peer: Some(ctx.peer.to_string()),
                    actor: Some(crate::issue::acme::actor(&a)),
                    ..Default::default()
                };
                state.store.deactivate_acme_account(&a.id, &audit).await?;
                let a = AcmeAccount {
                    status: "deactivated".into(),
                    ..a
                };
                return Ok(
                    Answer::json(StatusCode::OK, account_json(&ctx, &a), "deactivated")
                        .at(ctx.account_url(&a.id)),
                );
            }
            if payload.get("status").is_some() {
                return Err(Problem::malformed(
                    "an account's status can only become deactivated",
                ));
            }
            Ok(Answer::json(StatusCode::OK, account_json(&ctx, &a), "ok")
                .at(ctx.account_url(&a.id)))
        },
    )
    .await
}

async fn account_orders(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let a = own_account(&signed, &id)?;
            let ids = state.store.acme_orders_of(&a.id, 1000).await?;
            let urls: Vec<String> = ids.iter().map(|o| ctx.order_url(o)).collect();
            Ok(Answer::json(StatusCode::OK, json!({"orders": urls}), "ok"))
        },
    )
    .await
}

async fn new_order(State(state): State<AppState>, req: Request) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let payload = signed.json()?;
            if payload.get("notBefore").is_some() || payload.get("notAfter").is_some() {
                return Err(Problem::malformed(
                    "notBefore and notAfter are not supported: the host profile sets validity",
                ));
            }
            let ids = payload["identifiers"]
                .as_array()
                .ok_or_else(|| Problem::malformed("newOrder needs an identifiers array"))?
                .iter()
                .map(|i| match (i["type"].as_str(), i["value"].as_str()) {
                    (Some(t), Some(v)) => Ok((t.to_owned(), v.to_owned())),
                    _ => Err(Problem::malformed("an identifier is {\"type\", \"value\"}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let order = state
                .authority
                .acme_new_order(signed.account(), &ids, ctx.peer)
                .await?;
            Ok(
                Answer::json(StatusCode::CREATED, order_json(&ctx, &order), "created")
                    .at(ctx.order_url(&order.id)),
            )
        },
    )
    .await
}

/// The order `id`, if the signing account owns it.
async fn own_order(state: &AppState, signed: &Signed, id: &str) -> Result<AcmeOrder, Problem> {
    let order = state
        .store
        .acme_order(id)
        .await?
        .ok_or_else(|| Problem::not_found("no such order"))?;
    if order.account_id != signed.account().id {
        return Err(Problem::unauthorized(
            "the order belongs to another account",
        ));
    }
    Ok(order)
}

async fn order(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let o = own_order(&state, &signed, &id).await?;
            Ok(Answer::json(StatusCode::OK, order_json(&ctx, &o), "ok"))
        },
    )
    .await
}

async fn finalize(State(state): State<AppState>, Path(id): Path<String>, req: Request) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let o = own_order(&state, &signed, &id).await?;
            let payload = signed.json()?;
            let csr = payload["csr"]
                .as_str()
                .ok_or_else(|| Problem::malformed("finalize needs a csr (base64url DER)"))?;
            let csr = jws::b64(csr, "the csr")?;
            let account = signed.account().clone();
            // Signing and recording run on their own task: a client hanging up
            // must not cancel between them.
            let authority = state.authority.clone();
            let done = tokio::spawn(async move {
                authority
                    .acme_finalize(&account, &o, &csr, ctx.peer)
                    .await
                    .map(|o| (o, ctx))
            })
            .await
            .map_err(|_| Problem::server_internal("internal error"))?;
            let (o, ctx) = done?;
            Ok(Answer::json(StatusCode::OK, order_json(&ctx, &o), "issued")
                .at(ctx.order_url(&o.id)))
        },
    )
    .await
}

async fn authz(
    State(state): State<AppState>,
    Path((id, idx)): Path<(String, usize)>,
    req: Request,
) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let o = own_order(&state, &signed, &id).await?;
            let name = o
                .identifiers
                .get(idx)
                .ok_or_else(|| Problem::not_found("no such authorization"))?;
            Ok(Answer::json(
                StatusCode::OK,
                json!({
                    "identifier": identifier_json(name),
                    "status": "valid",
                    "expires": proto::timefmt::rfc3339(o.expires_at),
                    "challenges": [challenge_json(&ctx, &o, idx)],
                }),
                "ok",
            ))
        },
    )
    .await
}

async fn challenge(
    State(state): State<AppState>,
    Path((id, idx)): Path<(String, usize)>,
    req: Request,
) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let o = own_order(&state, &signed, &id).await?;
            if idx >= o.identifiers.len() {
                return Err(Problem::not_found("no such challenge"));
            }
            let mut a = Answer::json(StatusCode::OK, challenge_json(&ctx, &o, idx), "ok");
            a.up = Some(format!("{}/acme/authz/{}/{idx}", ctx.base, o.id));
            Ok(a)
        },
    )
    .await
}

async fn certificate(
    State(state): State<AppState>,
    Path(serial): Path<String>,
    req: Request,
) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, _ctx, signed| async move {
            let owner = state.store.acme_account_of_serial(&serial).await?;
            if owner.as_deref() != Some(signed.account().id.as_str()) {
                return Err(Problem::unauthorized(
                    "no certificate of this account has this URL",
                ));
            }
            let cert = state
                .store
                .get_cert(&serial)
                .await?
                .ok_or_else(|| Problem::not_found("no such certificate"))?;
            Ok(Answer::new(
                StatusCode::OK,
                Body::Pem(state.authority.signer.chain_pem(&cert.der)),
                "ok",
            ))
        },
    )
    .await
}

async fn revoke_cert(State(state): State<AppState>, req: Request) -> Response {
    run(
        state,
        req,
        KeyRule::Either,
        |state, ctx, signed| async move {
            let payload = signed.json()?;
            let der = payload["certificate"].as_str().ok_or_else(|| {
                Problem::malformed("revokeCert needs a certificate (base64url DER)")
            })?;
            let der = jws::b64(der, "the certificate")?;
            let reason = match payload.get("reason") {
                None => None,
                Some(r) => Some(
                    r.as_i64()
                        .ok_or_else(|| Problem::malformed("reason is an integer"))?,
                ),
            };
            let by = match &signed.account {
                Some(a) => RevokeBy::Account(a),
                None => RevokeBy::CertificateKey(&signed.key),
            };
            let revoked = state
                .authority
                .acme_revoke(&der, by, reason, ctx.peer)
                .await?;
            // Publish at once, as `ca-server revoke` does; the servers' poll
            // catches up within seconds if this fails.
            if let Err(e) = state.crl.regenerate().await {
                tracing::warn!(error = %format!("{e:#}"), serial = %revoked.serial,
                "signing the CRL after an ACME revocation failed");
            }
            Ok(Answer::new(StatusCode::OK, Body::Empty, "revoked"))
        },
    )
    .await
}

async fn key_change(State(state): State<AppState>, req: Request) -> Response {
    run(
        state,
        req,
        KeyRule::Account,
        |state, ctx, signed| async move {
            let account = signed.account().clone();
            let inner: Flattened = serde_json::from_slice(&signed.jws.payload).map_err(|e| {
                Problem::malformed(format!("keyChange's payload is not a JWS: {e}"))
            })?;
            let inner = Jws::from_flattened(&inner)?;
            if !jws::supported_alg(&inner.header.alg) {
                return Err(JwsError::BadAlgorithm(jws::clip(&inner.header.alg)).into());
            }
            let (Some(jwk), None) = (&inner.header.jwk, &inner.header.kid) else {
                return Err(Problem::malformed(
                    "the inner JWS is signed with the new key's jwk",
                ));
            };
            if inner.header.url.as_deref() != Some(ctx.url.as_str()) {
                return Err(Problem::malformed(
                    "the inner JWS's url must be the keyChange URL",
                ));
            }
            let new_key = AccountKey::from_jwk(jwk)?;
            inner.verify(&new_key)?;
            let body: Value = serde_json::from_slice(&inner.payload)
                .map_err(|_| Problem::malformed("the inner payload is not JSON"))?;
            let named = body["account"].as_str().and_then(kid_account);
            if named != Some(account.id.as_str()) {
                return Err(Problem::malformed(
                    "the inner payload names another account",
                ));
            }
            let old = AccountKey::from_jwk(&body["oldKey"])?;
            if old != signed.key {
                return Err(Problem::malformed(
                    "oldKey is not the account's current key",
                ));
            }
            let thumbprint = new_key.thumbprint();
            if let Some(other) = state.store.acme_account_by_key(&thumbprint).await? {
                return Err(Problem::conflict(
                    "the new key already belongs to an account",
                    Some(ctx.account_url(&other.id)),
                ));
            }
            let audit = crate::store::AuditEvent {
                at: state.authority.clock.now(),
                event: Event::AcmeAccount.into(),
                hostname: Some(account.hostname.clone()),
                outcome: AuditOutcome::KeyChanged.into(),
                reason: Some(format!(
                    "account {}; key {} -> {thumbprint}",
                    account.id, account.thumbprint
                )),
                peer: Some(ctx.peer.to_string()),
                actor: Some(crate::issue::acme::actor(&account)),
                ..Default::default()
            };
            if !state
                .store
                .roll_acme_key(
                    &account.id,
                    &account.thumbprint,
                    &thumbprint,
                    &new_key.canonical_jwk(),
                    &audit,
                )
                .await?
            {
                return Err(Problem::conflict(
                    "the account's key changed meanwhile",
                    None,
                ));
            }
            Ok(
                Answer::json(StatusCode::OK, account_json(&ctx, &account), "key_changed")
                    .at(ctx.account_url(&account.id)),
            )
        },
    )
    .await
}
