//! Request body intake: the content-type check, the size limit (refused from
//! `Content-Length` before a byte is read, or cut off while reading) and the
//! deadline. Generic over the body type and with its own error type (mapped
//! to status codes in [`super::error`]), so the `http_body` fuzz target
//! compiles this file on its own.

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use std::time::Duration;

/// Why a body was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// A content type other than the CSR ones.
    UnsupportedContentType,
    /// A `Content-Length` that is not a number.
    BadLength,
    /// Over the limit (declared or read).
    TooLarge(usize),
    /// The body did not arrive within the deadline.
    Timeout(Duration),
    /// The connection failed while reading.
    Unreadable,
}

impl BodyError {
    /// Whether the client sent something refusable (counted against its
    /// address), rather than being slow or losing its connection.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            BodyError::UnsupportedContentType | BodyError::BadLength | BodyError::TooLarge(_)
        )
    }
}

/// CSRs come as PEM (text/plain, application/x-pem-file, application/pkcs10)
/// or DER (application/pkcs10, application/octet-stream); no type means sniff.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), BodyError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    match essence {
        "application/pkcs10"
        | "application/x-pem-file"
        | "text/plain"
        | "application/octet-stream"
        | "application/pem-certificate-chain" => Ok(()),
        _ => Err(BodyError::UnsupportedContentType),
    }
}

/// Reads a request body with a size limit and a deadline. A declared length
/// over the limit is refused before a byte is read; an endless chunked body
/// is cut off at the limit.
pub async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(len) = headers.get(header::CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(BodyError::BadLength)?;
        if len > limit as u64 {
            // A client still sending its body when we answer and close would
            // often see a reset connection instead of the 413 (the kernel
            // resets a socket closed with unread data). A modest excess is
            // read and dropped first, within a short deadline; a huge one,
            // or one announced with `Expect: 100-continue`, is not.
            if len <= DRAIN_LIMIT && !headers.contains_key(header::EXPECT) {
                drain(body, timeout.min(DRAIN_TIME)).await;
            }
            return Err(BodyError::TooLarge(limit));
        }
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(BodyError::Timeout(timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Ok(Err(_)) => Err(BodyError::Unreadable),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The largest refused body read to its end before answering (see `read_body`).
pub const DRAIN_LIMIT: u64 = 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Reads and drops the body of a request refused before its body was read
/// (wrong content type, throttled, not authenticated), when it declares at
/// most `max` bytes (or nothing) and no `Expect: 100-continue`.
///
/// Over HTTP/2, answering while the client is still sending makes the
/// server reset the stream; if the reset goes out before the response is
/// complete it is CANCEL, and clients report a stream error instead of the
/// status. Reading the body first means the response ends the stream
/// cleanly. Over HTTP/1.1 it avoids the reset connection (see `read_body`).
pub async fn discard<B>(body: B, headers: &HeaderMap, max: u64, timeout: Duration)
where
    B: http_body::Body<Data = Bytes>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) || headers.contains_key(header::EXPECT) {
        return;
    }
    drain(body, timeout.min(DRAIN_TIME)).await;
}

/// Reads and drops up to [`DRAIN_LIMIT`] bytes of `body`, within `deadline`.
async fn drain<B>(body: B, deadline: Duration)
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut seen = 0u64;
    let _ = tokio::time::timeout(deadline, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        }
    })
    .await;
}
