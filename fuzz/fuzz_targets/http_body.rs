//! The `/v1/sign` body handling on arbitrary input: the first bytes pick a
//! Content-Type, a Content-Length and how the body is split into frames;
//! the rest is the body. Reading (with its size limit) and parsing must
//! never panic, and never return more than the limit.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

/// The server's body intake, compiled here on its own.
#[path = "../../ca-server/src/edge/http/body.rs"]
#[allow(dead_code)]
mod body;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (ctl, body) = (&data[..3], &data[3..]);
    let mut headers = HeaderMap::new();
    let types = [
        "application/pkcs10",
        "text/plain; charset=utf-8",
        "application/json",
        "APPLICATION/X-PEM-FILE",
        "",
    ];
    if let Ok(v) = HeaderValue::from_str(types[ctl[0] as usize % types.len()]) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    match ctl[1] % 4 {
        0 => {}
        1 => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        2 => {
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(LIMIT + ctl[2] as usize),
            );
        }
        _ => {
            let junk = String::from_utf8_lossy(&body[..body.len().min(8)]).into_owned();
            if let Ok(v) = HeaderValue::from_str(&junk) {
                headers.insert(header::CONTENT_LENGTH, v);
            }
        }
    }
    let _ = body::check_content_type(&headers);
    // The body arrives in frames of a fuzzed size.
    let step = (ctl[2] as usize % 64) + 1;
    let stream = Frames(body.chunks(step).map(Bytes::copy_from_slice).collect());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let read = rt.block_on(body::read_body(
        stream,
        &headers,
        LIMIT,
        Duration::from_secs(5),
    ));
    if let Ok(bytes) = read {
        assert!(bytes.len() <= LIMIT);
        let _ = policy::csr::parse(&bytes);
    }
});

/// A body that yields its frames one by one.
struct Frames(std::collections::VecDeque<Bytes>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|b| Ok(http_body::Frame::data(b))),
        )
    }
}
