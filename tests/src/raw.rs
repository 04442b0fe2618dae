//! Raw clients for hostile tests: byte-exact HTTP/1.1 over TLS (requests a
//! well-behaved client would never send), slow writers, idle connections,
//! and an HTTP/2 client, all pinned to the test server's root.

use crate::CaServer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// What the server did with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// An HTTP response: status and the JSON `error` code, if any.
    Http(u16, Option<String>),
    /// The server closed the connection without an HTTP response.
    Closed,
    /// Nothing happened within the test's patience (the server kept the
    /// connection open): always a failure for the cases that expect a close.
    StillOpen,
    /// HTTP/2: the server reset the stream with this error code.
    Reset(u32),
    /// HTTP/2: the server sent GOAWAY with this error code.
    GoAway(u32),
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Http(s, Some(c)) => write!(f, "{s} {c}"),
            Seen::Http(s, None) => write!(f, "{s} (no JSON code)"),
            Seen::Closed => f.write_str("closed by server"),
            Seen::StillOpen => f.write_str("still open"),
            Seen::Reset(code) => write!(f, "HTTP/2 stream reset, error {code:#x}"),
            Seen::GoAway(code) => write!(f, "HTTP/2 GOAWAY, error {code:#x}"),
        }
    }
}

/// How long a test waits for the server to answer or close before calling
/// the connection [`Seen::StillOpen`]: far beyond every limit the hostile
/// servers are configured with, so it measures no timing, only the outcome.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The pinned TLS client configuration for `server`, with `alpn`.
pub fn tls_config(server: &CaServer, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let root = pem::parse(std::fs::read(server.root_pem()).unwrap())
        .unwrap()
        .into_contents();
    let mut config = ca_client::trust::pinned_client_config(&root, None).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TCP connection to `server` from the loopback address `from` (e.g.
/// 127.0.0.2, so tests can act as several client addresses).
pub async fn tcp_from(server: &CaServer, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{from}:0").parse().unwrap())
        .expect("binding a loopback source address");
    socket
        .connect(format!("127.0.0.1:{}", server.port).parse().unwrap())
        .await
        .expect("connecting to the server")
}

/// A TLS connection from 127.0.0.1.
pub async fn tls(server: &CaServer, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tls_over(server, tcp_from(server, "127.0.0.1").await, alpn).await
}

pub async fn tls_over(server: &CaServer, tcp: TcpStream, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    tokio_rustls::TlsConnector::from(tls_config(server, alpn))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// Reads until the server closes (or [`PATIENCE`] runs out) and classifies.
pub async fn read_outcome<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Seen {
    read_outcome_after(stream, Vec::new()).await
}

/// [`read_outcome`] when the first bytes of the answer are already in `buf`.
async fn read_outcome_after<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, buf: Vec<u8>) -> Seen {
    let (buf, in_time) = read_response(stream, buf).await;
    if buf.is_empty() {
        return if in_time {
            Seen::Closed
        } else {
            Seen::StillOpen
        };
    }
    parse_response(&buf)
}

/// Reads until a whole response is in `buf`, the server closes, or
/// [`PATIENCE`] runs out (then the flag is `false`).
async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
) -> (Vec<u8>, bool) {
    let in_time = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0u8; 8192];
        while !response_complete(&buf) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, in_time)
}

/// A complete HTTP/1.1 response (headers and a Content-Length body) is in `buf`.
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match len {
        Some(n) => buf.len() >= end + 4 + n,
        None => false,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Status and JSON `error` code of a raw HTTP/1.1 response.
pub fn parse_response(buf: &[u8]) -> Seen {
    let text = String::from_utf8_lossy(buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let code = find(buf, b"\r\n\r\n").and_then(|end| {
        let v: serde_json::Value = serde_json::from_slice(&buf[end + 4..]).ok()?;
        Some(v.get("error")?.as_str()?.to_owned())
    });
    Seen::Http(status, code)
}

/// Sends `request` as is over a fresh TLS connection and reports the outcome.
pub async fn exchange(server: &CaServer, request: &[u8]) -> Seen {
    let mut s = tls(server, &[b"http/1.1"]).await;
    if s.write_all(request).await.is_err() || s.flush().await.is_err() {
        return Seen::Closed;
    }
    read_outcome(&mut s).await
}

/// Sends `request` over a fresh TLS connection from the loopback address
/// `from`; returns the outcome and the `Retry-After` seconds, if any.
pub async fn exchange_from(server: &CaServer, from: &str, request: &[u8]) -> (Seen, Option<u64>) {
    let tcp = tcp_from(server, from).await;
    let mut s = tls_over(server, tcp, &[b"http/1.1"]).await;
    if s.write_all(request).await.is_err() {
        return (Seen::Closed, None);
    }
    let (buf, _) = read_response(&mut s, Vec::new()).await;
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let retry_after = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .and_then(|v| v.trim().parse().ok());
    (parse_response(&buf), retry_after)
}

/// A complete `POST /v1/sign` request with `body` and extra `headers`.
pub fn sign_request(body: &[u8], headers: &[&str]) -> Vec<u8> {
    let len = format!("Content-Length: {}", body.len());
    let mut all = vec!["Content-Type: application/pkcs10", len.as_str()];
    all.extend_from_slice(headers);
    [sign_head(&all), body.to_vec()].concat()
}

/// A request head for `POST /v1/sign` with `headers` (each "Name: value").
pub fn sign_head(headers: &[&str]) -> Vec<u8> {
    let mut head = String::from("POST /v1/sign HTTP/1.1\r\nHost: localhost\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Writes `bytes` one at a time, `gap` apart, until the server answers or
/// closes; then reports what it did.
pub async fn trickle<S>(stream: &mut S, bytes: &[u8], gap: Duration) -> Seen
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let start = tokio::time::Instant::now();
    for b in bytes {
        if start.elapsed() > PATIENCE {
            return Seen::StillOpen;
        }
        if stream.write_all(&[*b]).await.is_err() || stream.flush().await.is_err() {
            return Seen::Closed;
        }
        // Between bytes, see whether the server has answered or hung up.
        let mut probe = [0u8; 4096];
        match tokio::time::timeout(gap, stream.read(&mut probe)).await {
            Err(_) => continue,
            Ok(Ok(0)) | Ok(Err(_)) => return Seen::Closed,
            Ok(Ok(n)) => return read_outcome_after(stream, probe[..n].to_vec()).await,
        }
    }
    read_outcome(stream).await
}

/// Request bodies for the HTTP/2 client: whole, or streamed by the test.
pub type H2Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
/// An HTTP/2 connection's request handle.
pub type H2Sender = hyper::client::conn::http2::SendRequest<H2Body>;

/// A whole request body.
pub fn full(body: Vec<u8>) -> H2Body {
    Full::new(Bytes::from(body)).boxed()
}

/// An HTTP/2 connection (ALPN h2) from 127.0.0.1, and the task driving it
/// (it ends when the server closes the connection).
pub async fn h2(server: &CaServer) -> (H2Sender, tokio::task::JoinHandle<()>) {
    let stream = tls(server, &[b"h2"]).await;
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the server negotiates HTTP/2"
    );
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, driver)
}

/// An HTTP/2 request for `path`.
pub fn h2_request(
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: H2Body,
) -> http::Request<H2Body> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"));
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.body(body).unwrap()
}

/// Sends one HTTP/2 request; the outcome and the body.
pub async fn h2_send(
    sender: &mut H2Sender,
    req: http::Request<H2Body>,
) -> Result<(Seen, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let code = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
    Ok((Seen::Http(status, code), body))
}

/// HTTP/2 error codes (RFC 9113 section 7).
pub mod h2_error {
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// One HTTP/2 frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block from (static-table name index, value) pairs, each a
/// literal without indexing (RFC 7541 6.2.2), plus fully indexed fields.
pub fn hpack(indexed: &[u8], literals: &[(u8, &str)]) -> Vec<u8> {
    let mut out: Vec<u8> = indexed.iter().map(|i| 0x80 | i).collect();
    for (index, value) in literals {
        if *index < 15 {
            out.push(*index);
        } else {
            out.extend_from_slice(&[0x0f, index - 15]);
        }
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Speaks raw HTTP/2 frames: the preface and an empty SETTINGS, then
/// `frames`; reads the server's frames until the first RST_STREAM or GOAWAY
/// (or a close) and reports it.
pub async fn h2_raw(server: &CaServer, frames: &[u8]) -> Seen {
    let mut s = tls(server, &[b"h2"]).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend_from_slice(frames);
    if s.write_all(&out).await.is_err() {
        return Seen::Closed;
    }
    let _ = s.flush().await;
    let read = tokio::time::timeout(PATIENCE, async {
        let mut head = [0u8; 9];
        loop {
            if s.read_exact(&mut head).await.is_err() {
                return Seen::Closed;
            }
            let len = ((head[0] as usize) << 16) | ((head[1] as usize) << 8) | head[2] as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return Seen::Closed;
            }
            let code = |at: usize| {
                payload
                    .get(at..at + 4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()))
                    .unwrap_or(0)
            };
            match head[3] {
                0x3 => return Seen::Reset(code(0)),
                0x7 => return Seen::GoAway(code(4)),
                _ => {}
            }
        }
    })
    .await;
    read.unwrap_or(Seen::StillOpen)
}

/// What an HTTP/2 server announces when a connection opens: its SETTINGS
/// parameters (identifier, value) and the connection-level WINDOW_UPDATE
/// increment (stream 0) it sends to widen the default 65,535-byte window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct H2Preamble {
    pub settings: Vec<(u16, u32)>,
    pub connection_window_increment: Option<u32>,
}

impl H2Preamble {
    /// The value of SETTINGS parameter `id`, if announced.
    pub fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }
}

/// HTTP/2 SETTINGS identifiers (RFC 9113 section 6.5.2).
pub mod h2_setting {
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Opens an HTTP/2 connection with raw frames (the preface and an empty
/// SETTINGS) and reads the server's frames until it has seen its first
/// SETTINGS and a connection WINDOW_UPDATE (or [`PATIENCE`] runs out).
pub async fn h2_preamble(server: &CaServer) -> H2Preamble {
    let mut s = tls(server, &[b"h2"]).await;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    s.write_all(&out).await.expect("sending the HTTP/2 preface");
    let _ = s.flush().await;
    let mut seen = H2Preamble::default();
    let mut got_settings = false;
    let _ = tokio::time::timeout(PATIENCE, async {
        let mut head = [0u8; 9];
        while !(got_settings && seen.connection_window_increment.is_some()) {
            if s.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = ((head[0] as usize) << 16) | ((head[1] as usize) << 8) | head[2] as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return;
            }
            let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff;
            match (head[3], head[4] & 0x1, stream) {
                (0x4, 0, 0) if !got_settings => {
                    got_settings = true;
                    for p in payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([p[0], p[1]]);
                        let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                        seen.settings.push((id, value));
                    }
                }
                (0x8, _, 0) if payload.len() == 4 => {
                    let inc = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                    seen.connection_window_increment = Some(inc);
                }
                _ => {}
            }
        }
    })
    .await;
    seen
}
