//! A small HTTPS client on hyper and rustls: one request per connection
//! ([`HttpsClient::send`]) or several on one keep-alive connection
//! ([`HttpsClient::connect`]). Used by `ca-client`, the tests and the load generator.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest response body read.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// A response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The `error` and `message` of a JSON error body, if it is one.
    pub fn api_error(&self) -> Option<(String, String)> {
        let v: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        Some((
            v.get("error")?.as_str()?.to_owned(),
            v.get("message")?.as_str()?.to_owned(),
        ))
    }

    /// Seconds from a `Retry-After: <seconds>` header.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// Why a request got no response: the connection, TLS or a timeout.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP exchange with {0} failed: {1}")]
    Http(String, String),
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
}

impl TransportError {
    /// A TLS failure is usually a trust problem, not a transient one.
    pub fn is_tls(&self) -> bool {
        matches!(self, TransportError::Tls(..))
    }
}

/// Where and how to reach a server.
#[derive(Clone)]
pub struct HttpsClient {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    config: Arc<ClientConfig>,
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish()
    }
}

impl HttpsClient {
    /// `url` is `https://host[:port][/]`.
    pub fn new(url: &str, config: ClientConfig) -> anyhow::Result<HttpsClient> {
        let uri: Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid URL {url:?}"))?;
        if uri.scheme_str() != Some("https") {
            anyhow::bail!("the server URL must start with https:// (got {url:?})");
        }
        let host = uri
            .host()
            .ok_or_else(|| anyhow::anyhow!("URL {url:?} has no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| anyhow::anyhow!("invalid server name {host:?}"))?;
        Ok(HttpsClient {
            port: uri.port_u16().unwrap_or(443),
            host,
            server_name,
            config: Arc::new(config),
            timeout: Duration::from_secs(30),
        })
    }

    fn target(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Opens a keep-alive connection.
    pub async fn connect(&self) -> Result<Connection, TransportError> {
        let target = self.target();
        let tcp = tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| TransportError::Timeout(target.clone(), self.timeout))?
        .map_err(|e| TransportError::Connect(target.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(
            self.timeout,
            TlsConnector::from(self.config.clone()).connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| TransportError::Timeout(target.clone(), self.timeout))?
        .map_err(|e| TransportError::Tls(target.clone(), e))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| TransportError::Http(target.clone(), e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Connection {
            sender,
            target,
            authority: target_authority(&self.host, self.port),
            timeout: self.timeout,
        })
    }

    /// One request on a fresh connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let mut conn = self.connect().await?;
        conn.send(method, path, content_type, body).await
    }
}

fn target_authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An open HTTP/1.1 connection.
#[derive(Debug)]
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    target: String,
    authority: String,
    timeout: Duration,
}

impl Connection {
    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply, TransportError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(
                header::USER_AGENT,
                concat!("ca-client/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| TransportError::Http(self.target.clone(), e.to_string()))?;
        let exchange = async {
            self.sender
                .ready()
                .await
                .map_err(|e| TransportError::Http(self.target.clone(), e.to_string()))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| TransportError::Http(self.target.clone(), e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| TransportError::Http(self.target.clone(), e.to_string()))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| TransportError::Timeout(self.target.clone(), self.timeout))?
    }
}
