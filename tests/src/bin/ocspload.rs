//! OCSP load generator: C workers send the same OCSP request by GET
//! (`/ocsp/<base64>`, keep-alive HTTP/1.1) to a ca-server plain-HTTP
//! listener for a fixed time, then print requests/s, latency percentiles
//! and errors (any non-200 or non-`successful` answer). With `--metrics`
//! (the HTTPS `/metrics` URL and the root) it also reads
//! `ca_ocsp_signatures_total` before and after: the hot path signs nothing.
//!
//! Used for the OCSP figure in BENCHMARKS.md.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn usage() -> ! {
    eprintln!(
        "usage: ocspload --url http://HOST:PORT/ocsp --request REQ.der [--seconds 10] \
         [--concurrency 8] [--metrics https://HOST:PORT --root ROOT.pem]"
    );
    std::process::exit(2)
}

async fn worker(
    addr: String,
    path: String,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicUsize>,
) -> Result<Vec<Duration>> {
    let tcp = tokio::net::TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let req = http::Request::get(&path)
            .header(http::header::HOST, &addr)
            .body(Empty::<Bytes>::new())?;
        let t = Instant::now();
        let resp = sender.send_request(req).await?;
        let ok = resp.status() == http::StatusCode::OK;
        let body = resp.into_body().collect().await?.to_bytes();
        lat.push(t.elapsed());
        let successful = ca_client::ocsp::decode_response(&body)
            .is_ok_and(|(s, _)| s == ca_client::ocsp::ResponseStatus::Successful);
        if !ok || !successful {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(lat)
}

fn signatures(metrics: &str, root: &std::path::Path) -> Result<u64> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(root)
        .arg(format!("{}/metrics", metrics.trim_end_matches('/')))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("ca_ocsp_signatures_total "))
        .context("no ca_ocsp_signatures_total in /metrics")?
        .trim()
        .parse()
        .context("parsing ca_ocsp_signatures_total")
}

fn main() -> Result<()> {
    let mut url = None;
    let mut request = None;
    let (mut seconds, mut concurrency) = (10u64, 8usize);
    let (mut metrics, mut root) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => url = Some(val()),
            "--request" => request = Some(val()),
            "--seconds" => seconds = val().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--metrics" => metrics = Some(val()),
            "--root" => root = Some(std::path::PathBuf::from(val())),
            _ => usage(),
        }
    }
    let (Some(url), Some(request)) = (url, request) else {
        usage()
    };
    let uri: http::Uri = url.parse()?;
    if uri.scheme_str() != Some("http") {
        bail!("--url must be http://");
    }
    let addr = format!(
        "{}:{}",
        uri.host().context("no host")?,
        uri.port_u16().unwrap_or(80)
    );
    use base64::Engine as _;
    let der = std::fs::read(&request).with_context(|| format!("reading {request}"))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let path = format!(
        "{}/{}",
        uri.path().trim_end_matches('/'),
        b64.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    let sig_before = match (&metrics, &root) {
        (Some(m), Some(r)) => Some(signatures(m, r)?),
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut lat: Vec<Duration> = rt.block_on(async {
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                tokio::spawn(worker(
                    addr.clone(),
                    path.clone(),
                    stop.clone(),
                    errors.clone(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "ocsp GET: {} requests in {elapsed:.1} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        lat.len(),
        lat.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        errors.load(Ordering::Relaxed)
    );
    if let (Some(before), Some(m), Some(r)) = (sig_before, &metrics, &root) {
        let after = signatures(m, r)?;
        println!("signatures during the run: {}", after - before);
    }
    Ok(())
}
