//! Load generator for `POST /v1/sign` (and, for comparison, cfssl's
//! `/api/v1/cfssl/sign`): N PSKs and N CSRs are prepared off the clock, then
//! C workers drive the server over HTTPS with keep-alive or a new TLS
//! connection per request. Reports certificates/s, latency percentiles,
//! errors, server CPU seconds per certificate and peak RSS, as a table and
//! as JSON, and verifies afterwards that exactly N certificates were recorded
//! and N PSKs consumed.
//!
//! With `--flood N`, another address (`--flood-from`, a loopback alias)
//! sends N malformed CSRs over one HTTP/2 connection (`--flood-streams` at
//! once) while the honest workers run, and the report adds the flood's
//! answers, the audit rows it added and the refusal log's store writes
//! (`ca_refusal_audit_writes_total`).
//!
//! With `--target puppet` it drives a Puppet Server CA the way an agent
//! does (PUT the CSR, then GET the certificate) and makes the PSKs itself:
//! one file per certname in `--puppet-psk-dir`, which the autosign policy
//! script bench.sh installs compares with the CSR's `pp_preshared_key` and
//! deletes. A CSR with a wrong PSK is sent first and must stay unsigned.
//!
//! Used by scripts/bench.sh and scripts/bench-flood.sh; see BENCHMARKS.md
//! for the figures.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ca_client::https::{Connection, HttpsClient, Reply, TransportError};
use ca_client::keys::{HostKey, KeyType};
use http::Method;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// ca-server's /v1/sign with a PSK per CSR.
    Ours,
    /// cfssl serve's /api/v1/cfssl/sign (no PSK check, no database).
    Cfssl,
    /// Puppet Server's CA (PUT certificate_request, GET certificate), a PSK
    /// checked by an autosign policy script.
    Puppet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnMode {
    KeepAlive,
    NewConnection,
}

#[derive(Debug)]
struct Args {
    server: String,
    root: PathBuf,
    target: Target,
    requests: usize,
    concurrency: usize,
    mode: ConnMode,
    /// ca-server binary and data dir, to create PSKs and verify the store.
    ca_server: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    server_pid: Option<u32>,
    label: String,
    json_out: Option<PathBuf>,
    csr_cache: Option<PathBuf>,
    tls_resumption: bool,
    flood: usize,
    flood_from: String,
    flood_streams: usize,
    /// Skip the store check afterwards (it lists the whole store: the soak
    /// checks its counts with SQL instead).
    no_verify: bool,
    /// HOST<TAB>PSK lines of PSKs already in the store, used instead of
    /// `psk batch` (the soak: 100,000 PSKs through `psk batch` take a
    /// minute, which would leave the server idle most of the hour).
    psk_file: Option<PathBuf>,
    /// `--target puppet`: where the autosign script finds each certname's PSK.
    puppet_psk_dir: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen --server URL --root ROOT.pem [--target ours|cfssl] [--requests N] \
         [--concurrency C] [--mode keepalive|new-conn] [--ca-server BIN --data-dir DIR \
         [--database-url URL]] [--server-pid PID] [--label TEXT] [--json FILE] \
         [--csr-cache FILE] [--tls-resumption] [--flood N [--flood-from ADDR] \
         [--flood-streams S]] [--no-verify] [--psk-file FILE] [--target puppet --puppet-psk-dir DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        server: String::new(),
        root: PathBuf::new(),
        target: Target::Ours,
        requests: 1000,
        concurrency: 8,
        mode: ConnMode::KeepAlive,
        ca_server: None,
        data_dir: None,
        database_url: None,
        server_pid: None,
        label: String::new(),
        json_out: None,
        csr_cache: None,
        tls_resumption: false,
        flood: 0,
        flood_from: "127.0.0.2".into(),
        flood_streams: 32,
        no_verify: false,
        psk_file: None,
        puppet_psk_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--server" => a.server = val(),
            "--root" => a.root = val().into(),
            "--target" => {
                a.target = match val().as_str() {
                    "ours" => Target::Ours,
                    "cfssl" => Target::Cfssl,
                    "puppet" => Target::Puppet,
                    _ => usage(),
                }
            }
            "--requests" => a.requests = val().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => a.concurrency = val().parse().unwrap_or_else(|_| usage()),
            "--mode" => {
                a.mode = match val().as_str() {
                    "keepalive" => ConnMode::KeepAlive,
                    "new-conn" => ConnMode::NewConnection,
                    _ => usage(),
                }
            }
            "--ca-server" => a.ca_server = Some(val().into()),
            "--data-dir" => a.data_dir = Some(val().into()),
            "--database-url" => a.database_url = Some(val()),
            "--server-pid" => a.server_pid = Some(val().parse().unwrap_or_else(|_| usage())),
            "--label" => a.label = val(),
            "--json" => a.json_out = Some(val().into()),
            "--csr-cache" => a.csr_cache = Some(val().into()),
            "--tls-resumption" => a.tls_resumption = true,
            "--flood" => a.flood = val().parse().unwrap_or_else(|_| usage()),
            "--flood-from" => a.flood_from = val(),
            "--flood-streams" => a.flood_streams = val().parse().unwrap_or_else(|_| usage()),
            "--no-verify" => a.no_verify = true,
            "--psk-file" => a.psk_file = Some(val().into()),
            "--puppet-psk-dir" => a.puppet_psk_dir = Some(val().into()),
            _ => usage(),
        }
    }
    if a.server.is_empty() || a.root.as_os_str().is_empty() {
        usage();
    }
    if a.target == Target::Ours && (a.ca_server.is_none() || a.data_dir.is_none()) {
        eprintln!("--target ours needs --ca-server and --data-dir to create PSKs");
        usage();
    }
    if a.target == Target::Puppet && a.puppet_psk_dir.is_none() {
        eprintln!("--target puppet needs --puppet-psk-dir for the autosign script");
        usage();
    }
    a
}

fn ca_server_cmd(a: &Args) -> Command {
    let mut cmd = Command::new(a.ca_server.as_ref().expect("--ca-server"));
    cmd.arg("--data-dir")
        .arg(a.data_dir.as_ref().expect("--data-dir"));
    if let Some(url) = &a.database_url {
        cmd.arg("--database-url").arg(url);
    }
    cmd
}

/// Creates one PSK per host with `ca-server psk batch`; returns them in order.
fn create_psks(a: &Args, hosts: &[String]) -> Result<Vec<String>> {
    use std::io::Write;
    let mut child = ca_server_cmd(a)
        .args(["psk", "batch", "--ttl", "2h"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("running ca-server psk batch")?;
    {
        let mut stdin = child.stdin.take().expect("stdin");
        for h in hosts {
            writeln!(stdin, "{h}")?;
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("ca-server psk batch failed");
    }
    let text = String::from_utf8(out.stdout)?;
    let mut psks = Vec::with_capacity(hosts.len());
    for (line, host) in text.lines().zip(hosts) {
        let (h, psk) = line
            .split_once('\t')
            .context("psk batch output is HOST<TAB>PSK")?;
        if h != host {
            bail!("psk batch answered {h} for {host}");
        }
        psks.push(psk.to_owned());
    }
    if psks.len() != hosts.len() {
        bail!(
            "psk batch returned {} PSKs for {} hosts",
            psks.len(),
            hosts.len()
        );
    }
    Ok(psks)
}

/// `--psk-file`: HOST<TAB>PSK per line.
fn read_psk_file(path: &PathBuf) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).context("reading --psk-file")?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (h, p) = l
                .split_once('\t')
                .context("--psk-file lines are HOST<TAB>PSK")?;
            Ok((h.to_owned(), p.to_owned()))
        })
        .collect()
}

/// One P-256 key and CSR per host, on every core.
fn make_csrs(hosts: &[String], psks: &[Option<String>]) -> Vec<Bytes> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let chunk = hosts.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .chunks(chunk)
            .zip(psks.chunks(chunk))
            .map(|(hs, ps)| {
                s.spawn(move || {
                    hs.iter()
                        .zip(ps)
                        .map(|(h, p)| {
                            let key = HostKey::generate(KeyType::P256).expect("keygen");
                            let psk = p
                                .as_ref()
                                .map(|p| policy::Psk::new(p.clone()).expect("psk"));
                            Bytes::from(
                                key.csr_pem(h, &[], psk.as_ref())
                                    .expect("csr")
                                    .as_bytes()
                                    .to_vec(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("csr thread"))
            .collect()
    })
}

/// `n` random PSKs (128 bits, hex), for `--target puppet`.
fn random_psks(n: usize) -> Result<Vec<String>> {
    use ring::rand::{SecureRandom, SystemRandom};
    let rng = SystemRandom::new();
    (0..n)
        .map(|_| {
            let mut b = [0u8; 16];
            rng.fill(&mut b)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            Ok(hex::encode(b))
        })
        .collect()
}

/// The PSK file the autosign script reads: the hex of the extension's DER
/// (the UTF8String), as `openssl asn1parse` prints it, mode 0600.
fn write_puppet_psk(dir: &std::path::Path, host: &str, psk: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let psk = policy::Psk::new(psk.to_owned()).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let der = policy::psk::encode_extension_value(&psk);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(host))
        .with_context(|| format!("writing the PSK file for {host}"))?;
    f.write_all(hex::encode_upper(&der[..]).as_bytes())?;
    Ok(())
}

/// Before the run: a CSR whose PSK differs from its certname's file is not
/// signed (the autosign script is a gate, not a formality).
async fn puppet_refuses_wrong_psk(a: &Args, client: &HttpsClient, run_id: u32) -> Result<()> {
    let dir = a.puppet_psk_dir.as_ref().expect("checked in parse_args");
    let host = format!("wrong-psk-{run_id}.probe.internal");
    let psks = random_psks(2)?;
    write_puppet_psk(dir, &host, &psks[0])?;
    let csr = make_csrs(std::slice::from_ref(&host), &[Some(psks[1].clone())]).remove(0);
    let reply = exchange_fresh(client, Target::Puppet, &host, &csr).await?;
    if reply.status != http::StatusCode::NOT_FOUND {
        bail!(
            "Puppet answered {} for a certificate whose CSR had the wrong PSK",
            reply.status
        );
    }
    Ok(())
}

/// CPU seconds (user + system) and peak RSS in KiB of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let hwm = status_kib(pid, "VmHWM:")?;
    // Clock ticks are 100 per second on Linux x86_64.
    Some(((utime + stime) / 100.0, hwm))
}

/// One `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples the server's anonymous RSS (heap, stacks: what the process
/// itself holds) every 20 ms until `stop`; returns the peak in KiB. VmHWM
/// also counts file pages mapped into the process (the binary's own text),
/// which are page cache the kernel reclaims, so both are reported.
fn sample_anon_peak(
    pid: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        loop {
            peak = peak.max(status_kib(pid, "RssAnon:").unwrap_or(0));
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return peak;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[derive(Debug, Default)]
struct Outcome {
    latencies_us: Vec<u64>,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
}

fn body_for(target: Target, csr: &Bytes) -> (Option<&'static str>, &'static str, Bytes) {
    match target {
        Target::Ours => (Some("application/pkcs10"), "/v1/sign", csr.clone()),
        Target::Puppet => unreachable!("a Puppet agent's PUT and GET are in `exchange`"),
        Target::Cfssl => {
            let body = serde_json::json!({ "certificate_request": String::from_utf8_lossy(csr) });
            (
                Some("application/json"),
                "/api/v1/cfssl/sign",
                Bytes::from(body.to_string()),
            )
        }
    }
}

fn is_success(target: Target, status: http::StatusCode, body: &[u8]) -> bool {
    match target {
        Target::Ours => status == http::StatusCode::CREATED,
        Target::Puppet => {
            status == http::StatusCode::OK && body.starts_with(b"-----BEGIN CERTIFICATE-----")
        }
        Target::Cfssl => {
            status == http::StatusCode::OK
                && serde_json::from_slice::<serde_json::Value>(body)
                    .is_ok_and(|v| v["success"] == true)
        }
    }
}

/// One certificate on `conn`: a POST for ours and cfssl; for Puppet what an
/// agent does, the PUT of its CSR (the autosign script runs inside it), then
/// the GET of the certificate.
async fn exchange(
    conn: &mut Connection,
    target: Target,
    host: &str,
    csr: &Bytes,
) -> Result<Reply, TransportError> {
    if target == Target::Puppet {
        let put = conn
            .send(
                Method::PUT,
                &format!("/puppet-ca/v1/certificate_request/{host}?environment=production"),
                Some("text/plain"),
                csr.clone(),
            )
            .await?;
        if put.status != http::StatusCode::OK {
            return Ok(put);
        }
        return conn
            .send(
                Method::GET,
                &format!("/puppet-ca/v1/certificate/{host}?environment=production"),
                None,
                Bytes::new(),
            )
            .await;
    }
    let (ct, path, body) = body_for(target, csr);
    conn.send(Method::POST, path, ct, body).await
}

/// [`exchange`] on a connection of its own.
async fn exchange_fresh(
    client: &HttpsClient,
    target: Target,
    host: &str,
    csr: &Bytes,
) -> Result<Reply, TransportError> {
    let mut conn = client.connect().await?;
    exchange(&mut conn, target, host, csr).await
}

async fn drive(
    a: &Args,
    client: HttpsClient,
    hosts: Arc<Vec<String>>,
    csrs: Arc<Vec<Bytes>>,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (client, hosts, csrs, next) =
            (client.clone(), hosts.clone(), csrs.clone(), next.clone());
        let (target, mode) = (a.target, a.mode);
        workers.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            let mut conn = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= csrs.len() {
                    break;
                }
                let (host, csr) = (&hosts[i], &csrs[i]);
                let start = Instant::now();
                let result = match mode {
                    ConnMode::NewConnection => exchange_fresh(&client, target, host, csr).await,
                    ConnMode::KeepAlive => {
                        if conn.is_none() {
                            conn = client.connect().await.ok();
                        }
                        match conn.as_mut() {
                            Some(c) => {
                                let r = exchange(c, target, host, csr).await;
                                if r.is_err() {
                                    conn = None;
                                }
                                r
                            }
                            None => exchange_fresh(&client, target, host, csr).await,
                        }
                    }
                };
                let us = start.elapsed().as_micros() as u64;
                match result {
                    Ok(reply) if is_success(target, reply.status, &reply.body) => {
                        out.ok += 1;
                        out.latencies_us.push(us);
                    }
                    Ok(reply) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| {
                            format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body))
                        });
                    }
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            out
        }));
    }
    let mut total = Outcome::default();
    for w in workers {
        let o = w.await.expect("worker");
        total.ok += o.ok;
        total.errors += o.errors;
        total.latencies_us.extend(o.latencies_us);
        if total.first_error.is_none() {
            total.first_error = o.first_error;
        }
    }
    total
}

/// What the flood got back: answers by status, and transport errors.
#[derive(Debug, Default)]
struct FloodOutcome {
    statuses: std::collections::BTreeMap<u16, usize>,
    errors: usize,
    first_error: Option<String>,
    wall_s: f64,
}

type FloodSender = hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>>;

/// An HTTP/2 connection to the server from the loopback address `from`.
async fn flood_connection(
    server: std::net::SocketAddr,
    from: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<FloodSender> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse()?)?;
    let tcp = socket.connect(server).await?;
    // Headers and body go out as separate writes: without this, Nagle and
    // the server's delayed ACK add ~40 ms to every request.
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect("localhost".try_into()?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `a.flood` malformed CSRs from `a.flood_from`, `a.flood_streams` at
/// once on one HTTP/2 connection (a worker whose request fails opens its own).
async fn flood(
    a: &Args,
    server: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> FloodOutcome {
    use http_body_util::BodyExt;
    let start = Instant::now();
    let first = match flood_connection(server, &a.flood_from, tls.clone()).await {
        Ok(s) => s,
        Err(e) => {
            return FloodOutcome {
                errors: a.flood,
                first_error: Some(format!("connecting: {e:#}")),
                ..Default::default()
            };
        }
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..a.flood_streams.max(1) {
        let (mut sender, next, tls) = (first.clone(), next.clone(), tls.clone());
        let (total, from) = (a.flood, a.flood_from.clone());
        workers.push(tokio::spawn(async move {
            let mut out = FloodOutcome::default();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let req = http::Request::post("https://localhost/v1/sign")
                    .header("content-type", "application/pkcs10")
                    .body(http_body_util::Full::new(Bytes::from_static(
                        b"this is not a certificate request",
                    )))
                    .expect("request");
                let result = async {
                    sender.ready().await?;
                    let resp = sender.send_request(req).await?;
                    let status = resp.status().as_u16();
                    resp.into_body().collect().await?;
                    anyhow::Ok(status)
                }
                .await;
                match result {
                    Ok(status) => *out.statuses.entry(status).or_insert(0) += 1,
                    Err(e) => {
                        out.errors += 1;
                        out.first_error.get_or_insert_with(|| format!("{e:#}"));
                        if let Ok(s) = flood_connection(server, &from, tls.clone()).await {
                            sender = s;
                        }
                    }
                }
            }
            out
        }));
    }
    let mut total = FloodOutcome::default();
    for w in workers {
        let o = w.await.expect("flood worker");
        for (k, v) in o.statuses {
            *total.statuses.entry(k).or_insert(0) += v;
        }
        total.errors += o.errors;
        if total.first_error.is_none() {
            total.first_error = o.first_error;
        }
    }
    total.wall_s = start.elapsed().as_secs_f64();
    total
}

/// Audit rows in the store, through `ca-server audit`.
fn audit_rows(a: &Args) -> Result<usize> {
    let out = ca_server_cmd(a)
        .args(["audit", "--since", "1d", "--limit", "100000000", "--json"])
        .output()?;
    Ok(String::from_utf8(out.stdout)?.lines().count())
}

/// `ca_refusal_audit_writes_total` from the server's /metrics.
async fn refusal_audit_writes(client: &HttpsClient) -> Option<f64> {
    let reply = client
        .send(Method::GET, "/metrics", None, Bytes::new())
        .await
        .ok()?;
    String::from_utf8_lossy(&reply.body)
        .lines()
        .find_map(|l| l.strip_prefix("ca_refusal_audit_writes_total "))
        .and_then(|v| v.trim().parse().ok())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

fn main() -> Result<()> {
    let a = parse_args();
    let root = pem::parse(std::fs::read(&a.root).context("reading --root")?)?.into_contents();
    let mut config = ca_client::trust::pinned_client_config(&root, None)?;
    if !a.tls_resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    let mut h2_config = config.clone();
    h2_config.alpn_protocols = vec![b"h2".to_vec()];
    let mut client = HttpsClient::new(&a.server, config)?;
    client.timeout = Duration::from_secs(60);
    let server_addr: std::net::SocketAddr = {
        let uri: http::Uri = a.server.parse().context("--server")?;
        let port = uri.port_u16().unwrap_or(443);
        format!("127.0.0.1:{port}").parse()?
    };

    // Off the clock: hosts, PSKs and CSRs.
    let run_id = std::process::id();
    let given = a.psk_file.as_ref().map(read_psk_file).transpose()?;
    if let Some(pairs) = &given
        && pairs.len() != a.requests
    {
        bail!(
            "--psk-file has {} PSKs for --requests {}",
            pairs.len(),
            a.requests
        );
    }
    let hosts: Vec<String> = match &given {
        Some(pairs) => pairs.iter().map(|(h, _)| h.clone()).collect(),
        None => (0..a.requests)
            .map(|i| format!("h{i}-r{run_id}.bench.internal"))
            .collect(),
    };
    let prep = Instant::now();
    let csrs = match (&a.csr_cache, a.target) {
        (Some(cache), Target::Cfssl) if cache.exists() => {
            let v: Vec<String> = serde_json::from_slice(&std::fs::read(cache)?)?;
            v.into_iter()
                .map(|s| Bytes::from(s.into_bytes()))
                .take(a.requests)
                .collect()
        }
        _ => {
            let psks: Vec<Option<String>> = match (a.target, given) {
                (Target::Ours, Some(pairs)) => pairs.into_iter().map(|(_, p)| Some(p)).collect(),
                (Target::Ours, None) => create_psks(&a, &hosts)?.into_iter().map(Some).collect(),
                (Target::Cfssl, _) => vec![None; hosts.len()],
                (Target::Puppet, _) => {
                    let dir = a.puppet_psk_dir.as_ref().expect("checked in parse_args");
                    let psks = random_psks(hosts.len())?;
                    for (host, psk) in hosts.iter().zip(&psks) {
                        write_puppet_psk(dir, host, psk)?;
                    }
                    psks.into_iter().map(Some).collect()
                }
            };
            make_csrs(&hosts, &psks)
        }
    };
    if let (Some(cache), Target::Ours) = (&a.csr_cache, a.target) {
        let v: Vec<String> = csrs
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        std::fs::write(cache, serde_json::to_vec(&v)?)?;
    }
    eprintln!(
        "prepared {} CSRs in {:.1} s",
        csrs.len(),
        prep.elapsed().as_secs_f64()
    );

    let before = a.server_pid.and_then(proc_usage);
    let stop_sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let anon_sampler = a
        .server_pid
        .map(|pid| sample_anon_peak(pid, stop_sampling.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (rows_before, writes_before) = if a.flood > 0 {
        (
            Some(audit_rows(&a)?),
            rt.block_on(refusal_audit_writes(&client)),
        )
    } else {
        (None, None)
    };
    if a.target == Target::Puppet {
        rt.block_on(puppet_refuses_wrong_psk(&a, &client, run_id))?;
    }
    let metrics_client = client.clone();
    let start = Instant::now();
    let (outcome, flooded) = rt.block_on(async {
        let flooding = async {
            if a.flood > 0 {
                Some(flood(&a, server_addr, Arc::new(h2_config)).await)
            } else {
                None
            }
        };
        // The honest run's own wall time: the flood may outlast it.
        let honest = async {
            let outcome = drive(&a, client, Arc::new(hosts), Arc::new(csrs)).await;
            (outcome, start.elapsed().as_secs_f64())
        };
        tokio::join!(honest, flooding)
    });
    let (mut outcome, wall) = outcome;
    // The refusal log writes counted repeats once a second: let it flush.
    let (rows_after, writes_after) = if a.flood > 0 {
        std::thread::sleep(Duration::from_millis(1500));
        (
            Some(audit_rows(&a)?),
            rt.block_on(refusal_audit_writes(&metrics_client)),
        )
    } else {
        (None, None)
    };
    let after = a.server_pid.and_then(proc_usage);
    stop_sampling.store(true, std::sync::atomic::Ordering::Relaxed);
    let anon_peak_kib = anon_sampler.and_then(|h| h.join().ok());
    outcome.latencies_us.sort_unstable();
    let l = &outcome.latencies_us;

    // Afterwards: exactly N certificates recorded and N PSKs consumed.
    let (recorded, psks_left) = if a.target == Target::Ours && !a.no_verify {
        let certs = String::from_utf8(
            ca_server_cmd(&a)
                .args(["cert", "list", "--json"])
                .output()?
                .stdout,
        )?;
        let suffix = format!("-r{run_id}.bench.internal\"");
        let recorded = certs.lines().filter(|l| l.contains(&suffix)).count();
        let psks = String::from_utf8(
            ca_server_cmd(&a)
                .args(["psk", "list", "--json"])
                .output()?
                .stdout,
        )?;
        let left = psks.lines().filter(|l| l.contains(&suffix)).count();
        (Some(recorded), Some(left))
    } else {
        (None, None)
    };

    // Puppet: every signed certificate spent its PSK file, no other did.
    let (recorded, psks_left) = match (&a.puppet_psk_dir, a.target) {
        (Some(dir), Target::Puppet) => {
            let suffix = format!("-r{run_id}.bench.internal");
            let left = std::fs::read_dir(dir)?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(&suffix))
                .count();
            (Some(outcome.ok), Some(left))
        }
        _ => (recorded, psks_left),
    };

    let cpu = match (before, after) {
        (Some((b, _)), Some((c, _))) if outcome.ok > 0 => Some((c - b) / outcome.ok as f64),
        _ => None,
    };
    let result = serde_json::json!({
        "label": a.label,
        "target": format!("{:?}", a.target),
        "mode": match a.mode { ConnMode::KeepAlive => "keepalive", ConnMode::NewConnection => "new-conn" },
        "concurrency": a.concurrency,
        "requests": a.requests,
        "ok": outcome.ok,
        "errors": outcome.errors,
        "first_error": outcome.first_error,
        "wall_s": wall,
        "certs_per_s": outcome.ok as f64 / wall,
        "p50_ms": percentile(l, 0.50),
        "p90_ms": percentile(l, 0.90),
        "p99_ms": percentile(l, 0.99),
        "max_ms": l.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        "server_cpu_ms_per_cert": cpu.map(|c| c * 1000.0),
        "server_peak_rss_mib": after.map(|(_, kib)| kib as f64 / 1024.0),
        "server_peak_rss_anon_mib": anon_peak_kib.map(|kib| kib as f64 / 1024.0),
        "recorded": recorded,
        "psks_left": psks_left,
        "verified": recorded.map(|r| r == outcome.ok && psks_left == Some(a.requests - outcome.ok)),
        "flood": flooded.as_ref().map(|f| serde_json::json!({
            "requests": a.flood,
            "from": a.flood_from,
            "streams": a.flood_streams,
            "statuses": f.statuses,
            "errors": f.errors,
            "first_error": f.first_error,
            "wall_s": f.wall_s,
            "audit_rows_added": rows_after.zip(rows_before).map(|(x, y)| x as i64 - y as i64),
            "refusal_audit_writes": writes_after.zip(writes_before).map(|(x, y)| x - y),
        })),
    });
    println!(
        "{:<28} {:>5} {:>9} {:>6} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "label",
        "conc",
        "mode",
        "ok",
        "err",
        "certs/s",
        "p50ms",
        "p90ms",
        "p99ms",
        "maxms",
        "cpu ms/c",
        "rss MiB",
        "anon MiB"
    );
    println!(
        "{:<28} {:>5} {:>9} {:>6} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>9} {:>8} {:>8}",
        a.label,
        a.concurrency,
        result["mode"].as_str().unwrap_or(""),
        outcome.ok,
        outcome.errors,
        outcome.ok as f64 / wall,
        percentile(l, 0.50),
        percentile(l, 0.90),
        percentile(l, 0.99),
        l.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        cpu.map(|c| format!("{:.3}", c * 1000.0))
            .unwrap_or_else(|| "-".into()),
        after
            .map(|(_, kib)| format!("{:.1}", kib as f64 / 1024.0))
            .unwrap_or_else(|| "-".into()),
        anon_peak_kib
            .map(|kib| format!("{:.1}", kib as f64 / 1024.0))
            .unwrap_or_else(|| "-".into()),
    );
    if let Some(e) = &outcome.first_error {
        eprintln!("first error: {e}");
    }
    if let Some(f) = &result["flood"].as_object() {
        println!(
            "flood: {} malformed CSRs from {} over HTTP/2 ({} streams) in {:.1} s: answers {}, \
             transport errors {}; audit rows added {}, refusal-log store writes {}",
            a.flood,
            a.flood_from,
            a.flood_streams,
            f["wall_s"].as_f64().unwrap_or(0.0),
            f["statuses"],
            f["errors"],
            f["audit_rows_added"],
            f["refusal_audit_writes"],
        );
    }
    if let Some(path) = &a.json_out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{result}")?;
    }
    if result["verified"] == false {
        bail!(
            "store check failed: {recorded:?} certificates recorded and {psks_left:?} PSKs left for {} successes",
            outcome.ok
        );
    }
    Ok(())
}
