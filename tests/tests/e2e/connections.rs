//! Connection-level limits: a client address gets at most
//! `--max-connections-per-address` connections (more are closed at accept,
//! before TLS, and counted), the HTTP/2 settings bound what one connection
//! can make the server hold, and over HTTP/2 an early refusal (wrong content
//! type, body too large) reaches real `curl` as its status, never as a
//! stream error.

use ca_tests::raw::{self, H2Preamble, Seen, h2_setting};
use ca_tests::*;
use std::process::{Command, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS connection from `from`, or `None` if the server closed it.
async fn try_tls(
    server: &CaServer,
    from: &str,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = raw::tcp_from(server, from).await;
    tokio_rustls::TlsConnector::from(raw::tls_config(server, &[b"http/1.1"]))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .ok()
}

/// `GET /healthz` on a kept-alive HTTP/1.1 connection: its status.
async fn healthz<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> Seen {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&buf).contains("\"status\"") {
        match tokio::time::timeout(raw::PATIENCE, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Seen::Closed,
        }
    }
    raw::parse_response(&buf)
}

#[test]
fn connections_beyond_the_per_address_limit_are_closed_at_accept() {
    let server = CaServer::start_with(ServerOptions {
        args: ["--max-connections-per-address", "4"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    });
    block_on(async {
        let mut open = Vec::new();
        for i in 0..4 {
            let s = try_tls(&server, "127.0.0.1").await;
            open.push(s.unwrap_or_else(|| panic!("connection {} refused", i + 1)));
        }
        // The fifth is closed before TLS: the server never says a byte.
        let mut fifth = raw::tcp_from(&server, "127.0.0.1").await;
        assert_eq!(raw::read_outcome(&mut fifth).await, Seen::Closed);
        // The four stay usable, and another address is not affected.
        for s in open.iter_mut() {
            assert_eq!(healthz(s).await, Seen::Http(200, None));
        }
        let mut other = try_tls(&server, "127.0.0.2")
            .await
            .expect("another address");
        assert_eq!(healthz(&mut other).await, Seen::Http(200, None));

        // After one closes, a new connection is accepted (once the server
        // has seen the close).
        drop(open.pop());
        let mut accepted = None;
        for _ in 0..100 {
            if let Some(mut s) = try_tls(&server, "127.0.0.1").await
                && healthz(&mut s).await == Seen::Http(200, None)
            {
                accepted = Some(s);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            accepted.is_some(),
            "no connection accepted after one closed"
        );

        // The refusal is counted.
        other
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut metrics = Vec::new();
        let _ = tokio::time::timeout(raw::PATIENCE, other.read_to_end(&mut metrics)).await;
        let metrics = String::from_utf8_lossy(&metrics);
        let refused = metrics
            .lines()
            .find_map(|l| l.strip_prefix(r#"ca_connections_refused_total{reason="per_address"} "#))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no per-address refusal counter:\n{metrics}"));
        assert!(refused >= 1.0, "{refused}");
    });
    wait_for(
        std::time::Duration::from_secs(10),
        "the limit in the log",
        || {
            server
                .logs()
                .contains("per-address connection limit reached")
                .then_some(())
        },
    );
}

#[test]
fn http2_settings_bound_streams_windows_and_headers() {
    let server = CaServer::start();
    let seen: H2Preamble = block_on(raw::h2_preamble(&server));
    assert_eq!(
        seen.setting(h2_setting::MAX_CONCURRENT_STREAMS),
        Some(32),
        "{seen:?}"
    );
    let stream_window = seen
        .setting(h2_setting::INITIAL_WINDOW_SIZE)
        .expect("an initial stream window");
    assert!(
        (64 * 1024..=128 * 1024).contains(&stream_window),
        "stream window {stream_window} fits one 64 KiB body"
    );
    let header_list = seen
        .setting(h2_setting::MAX_HEADER_LIST_SIZE)
        .expect("a header list limit");
    assert!(header_list <= 64 * 1024, "{header_list}");
    let connection_window = 65_535 + seen.connection_window_increment.expect("a window update");
    assert!(
        (128 * 1024..=1024 * 1024).contains(&connection_window),
        "connection window {connection_window}"
    );
}

/// Runs `n` `curl --http2` posts at once with `content_type` and `body`;
/// each one's exit status, HTTP status and stderr.
fn concurrent_curls(
    server: &CaServer,
    n: usize,
    content_type: &str,
    body: &std::path::Path,
) -> Vec<(bool, String, String)> {
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new("curl")
                .args([
                    "-sS",
                    "--http2",
                    "-k",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                ])
                .args(["-X", "POST", "-H"])
                .arg(format!("Content-Type: {content_type}"))
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .arg(format!("{}/v1/sign", server.url))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("running curl")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

#[test]
fn early_refusals_over_http2_reach_curl_as_their_status() {
    if !require_tool("curl") {
        return;
    }
    // Every refusal counts against the address: this test makes 192 on purpose.
    let server = CaServer::start_with(ServerOptions {
        args: ["--throttle-failures", "100000"].map(String::from).to_vec(),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    // Bodies larger than the stream window, so the client is still sending
    // when the refusal is ready (before the fix, most of these 32 got a
    // stream error instead of the status).
    let large = write_file(dir.path(), "large", vec![b'A'; 200 * 1024]);
    for round in 0..3 {
        for (content_type, body, want) in [
            ("application/json", &large, "400"),
            ("application/pkcs10", &large, "413"),
        ] {
            let results = concurrent_curls(&server, 32, content_type, body);
            let wrong: Vec<_> = results
                .iter()
                .filter(|(ok, status, _)| !ok || status != want)
                .collect();
            assert!(
                wrong.is_empty(),
                "round {round}, {content_type}: {} of 32 did not get {want}: {wrong:?}",
                wrong.len()
            );
        }
    }
    let client = server.client();
    block_on(async {
        let health = client
            .send(http::Method::GET, "/healthz", None, bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(health.status, http::StatusCode::OK);
    });
}
