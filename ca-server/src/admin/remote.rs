//! The CLI's side of the admin API: `--server URL --admin-cert DIR` sends
//! each admin verb to `URL/v1/admin/...` over TLS pinned to `DIR/ca.pem`,
//! presenting `DIR/chain.pem` (admin certificate + intermediate) and
//! `DIR/key.pem` (what `admin-cert issue` wrote). Answers come back as the
//! same wire types the local operations return; errors as [`AdminError`]s
//! with the server's code and message.

use super::{
    AdminError, AuditQuery, CertQuery, CertView, PskAddRequest, PskAdded, PskBatchRequest,
    PskIssued, RevokeReport, RevokeRequest,
};
use crate::store::{AuditEvent, PskInfo};
use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{Method, StatusCode};
use proto::files::{CA_FILE, CHAIN_FILE, KEY_FILE};
use proto::https::{HttpsClient, Reply};
use proto::keys::HostKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::de::DeserializeOwned;
use std::path::Path;

/// A remote server's admin API, reached with an admin certificate.
#[derive(Debug)]
pub struct Remote {
    client: HttpsClient,
    /// The pinned root's fingerprint (from `DIR/ca.pem`).
    pub fingerprint: String,
}

impl Remote {
    /// Reads the admin certificate directory and prepares the client.
    pub fn load(server: &str, dir: &Path) -> anyhow::Result<Remote> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let root = proto::certs::certs_from_pem(&read(CA_FILE)?)
            .with_context(|| format!("{}", dir.join(CA_FILE).display()))?
            .remove(0);
        let chain = proto::certs::certs_from_pem(&read(CHAIN_FILE)?)
            .with_context(|| format!("{}", dir.join(CHAIN_FILE).display()))?;
        let key = HostKey::load(&dir.join(KEY_FILE))?;
        let client_auth = (
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
        );
        let config = proto::trust::pinned_client_config(&root, Some(client_auth))?;
        Ok(Remote {
            client: HttpsClient::new(server, config)?,
            fingerprint: proto::trust::fingerprint(&root),
        })
    }

    /// One request; a 2xx answer's JSON body as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminError> {
        let content_type = body.as_ref().map(|_| "application/json");
        let reply = self
            .client
            .send(
                method,
                path,
                content_type,
                Bytes::from(body.unwrap_or_default()),
            )
            .await
            .map_err(|e| {
                let hint = if e.is_tls() {
                    " (is --server the CA whose root is in the admin directory's ca.pem?)"
                } else {
                    ""
                };
                AdminError::Internal(anyhow!("{e}{hint}"))
            })?;
        if reply.status.is_success() {
            return serde_json::from_slice(&reply.body).map_err(|e| {
                AdminError::Internal(anyhow!(
                    "the CA's answer to {path} is not what this version reads: {e}"
                ))
            });
        }
        Err(refusal(&reply))
    }

    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, AdminError> {
        let body = serde_json::to_vec(body).map_err(|e| AdminError::Internal(e.into()))?;
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn psk_add(&self, req: &PskAddRequest) -> Result<PskAdded, AdminError> {
        self.post("/v1/admin/psks", req).await
    }

    pub async fn psk_batch(&self, req: &PskBatchRequest) -> Result<Vec<PskIssued>, AdminError> {
        self.post("/v1/admin/psks/batch", req).await
    }

    pub async fn psk_list(&self) -> Result<Vec<PskInfo>, AdminError> {
        self.call(Method::GET, "/v1/admin/psks", None).await
    }

    pub async fn psk_remove(&self, host: &str) -> Result<(), AdminError> {
        let _: serde_json::Value = self
            .call(
                Method::DELETE,
                &format!("/v1/admin/psks/{}", encode(host)),
                None,
            )
            .await?;
        Ok(())
    }

    pub async fn cert_list(&self, q: &CertQuery) -> Result<Vec<CertView>, AdminError> {
        let mut query = Vec::new();
        if let Some(h) = &q.host {
            query.push(format!("host={}", encode(h)));
        }
        if let Some(s) = q.expiring_secs {
            query.push(format!("expiring_secs={s}"));
        }
        if q.stale {
            query.push("stale=true".into());
        }
        if let Some(s) = q.renew_grace_secs {
            query.push(format!("renew_grace_secs={s}"));
        }
        let path = with_query("/v1/admin/certs", &query);
        self.call(Method::GET, &path, None).await
    }

    pub async fn cert_show(&self, target: &str) -> Result<CertView, AdminError> {
        let path = format!("/v1/admin/certs/{}", encode(target));
        self.call(Method::GET, &path, None).await
    }

    pub async fn revoke(&self, req: &RevokeRequest) -> Result<RevokeReport, AdminError> {
        self.post("/v1/admin/revoke", req).await
    }

    pub async fn acme_accounts(
        &self,
        q: &super::acme::AcmeAccountQuery,
    ) -> Result<Vec<super::acme::AcmeAccountView>, AdminError> {
        let query: Vec<String> = q
            .host
            .iter()
            .map(|h| format!("host={}", encode(h)))
            .collect();
        let path = with_query("/v1/admin/acme/accounts", &query);
        self.call(Method::GET, &path, None).await
    }

    pub async fn acme_deactivate(
        &self,
        id: &str,
    ) -> Result<super::acme::AcmeAccountView, AdminError> {
        let path = format!("/v1/admin/acme/accounts/{}/deactivate", encode(id));
        self.post(&path, &serde_json::json!({})).await
    }

    pub async fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>, AdminError> {
        let mut query = vec![
            format!("since_secs={}", q.since_secs),
            format!("limit={}", q.limit),
        ];
        if let Some(h) = &q.host {
            query.push(format!("host={}", encode(h)));
        }
        if let Some(e) = &q.event {
            query.push(format!("event={}", encode(e)));
        }
        self.call(Method::GET, &with_query("/v1/admin/audit", &query), None)
            .await
    }
}

/// The error for a non-2xx answer: 400 and 404 keep their meaning (the
/// server ran the same operation the CLI runs locally); the rest name the
/// server's code and message.
fn refusal(reply: &Reply) -> AdminError {
    let (code, message) = reply
        .api_error()
        .unwrap_or_else(|| (reply.status.as_u16().to_string(), String::new()));
    match reply.status {
        // An unknown endpoint: a server without this part of the admin API.
        StatusCode::NOT_FOUND if message == "no such endpoint" => AdminError::Internal(anyhow!(
            "the CA has no such admin endpoint (an older ca-server?)"
        )),
        StatusCode::NOT_FOUND => AdminError::NotFound(message),
        StatusCode::BAD_REQUEST if code == "bad_request" => AdminError::Invalid(message),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => AdminError::Internal(anyhow!(
            "the CA refused the admin certificate ({}): {code}: {message}",
            reply.status.as_u16()
        )),
        StatusCode::TOO_MANY_REQUESTS => AdminError::Internal(anyhow!(
            "too many failed requests from this address; retry in {} s",
            reply.retry_after().unwrap_or(1)
        )),
        s => AdminError::Internal(anyhow!("the CA answered {}: {code}: {message}", s.as_u16())),
    }
}

fn with_query(path: &str, query: &[String]) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_query_values_are_percent_encoded() {
        assert_eq!(encode("web1.example-2_x~"), "web1.example-2_x~");
        assert_eq!(encode("admin:a b/c?d&e"), "admin%3Aa%20b%2Fc%3Fd%26e");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(with_query("/p", &[]), "/p");
        assert_eq!(
            with_query("/p", &["a=1".into(), "b=2".into()]),
            "/p?a=1&b=2"
        );
    }
}
