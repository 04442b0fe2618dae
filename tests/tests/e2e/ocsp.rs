//! OCSP and the plain-HTTP listener (`serve --http-listen`) with real
//! clients: `openssl ocsp` against two replicas on PostgreSQL (good, then
//! revoked after `ca-server revoke`), the CRL fetched from the leaf's
//! http:// distribution point verified by `openssl crl`, nginx stapling with
//! `ssl_stapling_verify on`, HAProxy stapling from `ca-client ocsp
//! --install haproxy`, and hostile OCSP input answered with OCSP error
//! statuses while the server stays healthy.

use ca_client::ocsp::{CertId, CertIdHash, IssuerKeys, der, encode_request};
use ca_tests::fleet::{Host, bootstrap, install, strs};
use ca_tests::pg::{PgCluster, require_postgres};
use ca_tests::services::{Haproxy, Nginx, free_port};
use ca_tests::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WEB: &str = "web.example.internal";

/// `serve` arguments for a plain-HTTP listener on `port`, named by IP
/// (nginx resolves no hostname without a `resolver`).
fn http_args(port: u16) -> Vec<String> {
    vec![
        "--http-listen".into(),
        format!("127.0.0.1:{port}"),
        "--http-public-url".into(),
        format!("http://127.0.0.1:{port}"),
    ]
}

/// A raw HTTP/1.1 exchange on 127.0.0.1:`port` (Connection: close):
/// (status, headers lowercased, body).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body.
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// The OCSPResponseStatus of a DER response.
fn response_status(der: &[u8]) -> u8 {
    let outer = der::single(der, der::SEQUENCE).expect("an OCSPResponse");
    der::Reader::new(outer.content)
        .expect(der::ENUMERATED)
        .unwrap()
        .content[0]
}

/// `openssl ocsp` for the host's certificate against `url`; its output.
fn openssl_ocsp(host: &Host, issuer: &Path, url: &str) -> String {
    let out = run(Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(issuer)
        .arg("-cert")
        .arg(host.dir.join("cert.pem"))
        .args(["-url", url, "-CAfile"])
        .arg(host.dir.join("ca.pem"))
        .args(["-timeout", "20"]));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ocsp_says(output: &str, status: &str) -> bool {
    output.contains("Response verify OK") && output.contains(&format!("cert.pem: {status}"))
}

/// The leaf's AIA OCSP URL and CRL distribution point.
fn leaf_urls(host: &Host) -> (String, String) {
    let cert = pem::parse(read(&host.dir.join("cert.pem")))
        .unwrap()
        .into_contents();
    let ocsp = ca_client::ocsp::ocsp_url(&cert)
        .unwrap()
        .expect("an OCSP URL in the leaf");
    let (_, c) = x509_parser::parse_x509_certificate(&cert).unwrap();
    let mut cdp = None;
    for ext in c.extensions() {
        if let x509_parser::extensions::ParsedExtension::CRLDistributionPoints(points) =
            ext.parsed_extension()
        {
            for p in points.iter() {
                if let Some(x509_parser::extensions::DistributionPointName::FullName(names)) =
                    &p.distribution_point
                {
                    for n in names {
                        if let x509_parser::extensions::GeneralName::URI(u) = n {
                            cdp = Some((*u).to_owned());
                        }
                    }
                }
            }
        }
    }
    (ocsp, cdp.expect("a CRL distribution point in the leaf"))
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn openssl_ocsp_says_good_then_revoked_on_both_replicas_over_postgres() {
    if !require_tool("openssl") || !require_postgres() {
        return;
    }
    let pg = PgCluster::start();
    let (p1, p2) = (free_port(), free_port());
    let mut opts = pg.server_options("ca");
    opts.args.extend(http_args(p1));
    let mut first = CaServer::start_with(opts);
    let second = first.replica_with_args(http_args(p2));
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut first, WEB, work.path(), "web");
    let (ocsp_url, cdp) = leaf_urls(&web);
    assert_eq!(ocsp_url, format!("http://127.0.0.1:{p1}/ocsp"));
    assert_eq!(cdp, format!("http://127.0.0.1:{p1}/crl/intermediate.crl"));
    let issuer = first.intermediate_pem();
    let urls = [ocsp_url.clone(), format!("http://127.0.0.1:{p2}/ocsp")];
    for url in &urls {
        let out = openssl_ocsp(&web, &issuer, url);
        assert!(ocsp_says(&out, "good"), "{url}:\n{out}");
    }

    // The CRL from the leaf's distribution point, over plain HTTP, verifies.
    let (status, head, crl) = http(port_of(&cdp), "GET", "/crl/intermediate.crl", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-type"), Some("application/pkix-crl"));
    let crl_file = write_file(work.path(), "int.crl", &crl);
    let bundle = write_file(
        work.path(),
        "cas.pem",
        [read(&issuer), read(&first.root_pem())].concat(),
    );
    let out = run_ok(
        Command::new("openssl")
            .args(["crl", "-inform", "DER", "-noout", "-in"])
            .arg(&crl_file)
            .arg("-CAfile")
            .arg(&bundle),
    );
    let _ = out;

    run_ok(
        first
            .cli()
            .args(["revoke", &web.raw_serial, "--reason", "keyCompromise"]),
    );
    let revoked_at = Instant::now();
    for url in &urls {
        let out = wait_for(Duration::from_secs(30), "OCSP to say revoked", || {
            let out = openssl_ocsp(&web, &issuer, url);
            ocsp_says(&out, "revoked").then_some(out)
        });
        assert!(out.contains("Reason: keyCompromise"), "{out}");
    }
    // Informational: the bound is the CRL poller's 2 s (docs/revocation.md).
    eprintln!(
        "both replicas answered revoked {:.1} s after `ca-server revoke` returned",
        revoked_at.elapsed().as_secs_f64()
    );
    drop(second);
    drop(first);
}

#[test]
fn hostile_ocsp_input_gets_ocsp_error_statuses_and_the_server_stays_healthy() {
    let port = free_port();
    let mut ca = CaServer::start_with(ServerOptions {
        args: http_args(port),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let int = pem::parse(read(&ca.intermediate_pem()))
        .unwrap()
        .into_contents();
    let issuer = IssuerKeys::from_cert(&int).unwrap();
    let leaf = pem::parse(read(&web.dir.join("cert.pem")))
        .unwrap()
        .into_contents();
    let serial = ca_client::ocsp::cert_serial(&leaf).unwrap();
    let good = encode_request(&CertId::new(CertIdHash::Sha1, &issuer, &serial), None);
    let post = |body: &[u8]| {
        http(
            port,
            "POST",
            "/ocsp",
            &[("Content-Type", "application/ocsp-request")],
            body,
        )
    };
    const MALFORMED: u8 = 1;
    const UNAUTHORIZED: u8 = 6;

    // Garbage.
    let (status, _, body) = post(b"this is not DER");
    assert_eq!((status, response_status(&body)), (200, MALFORMED));
    // Over 64 KiB.
    let (status, _, body) = post(&vec![0x30; 64 * 1024 + 1]);
    assert_eq!(status, 413);
    assert_eq!(response_status(&body), MALFORMED);
    // Bad base64 in a GET.
    let (status, _, body) = http(port, "GET", "/ocsp/!!not*base64!!", &[], b"");
    assert_eq!((status, response_status(&body)), (200, MALFORMED));
    // An issuer that is not ours.
    let other = IssuerKeys {
        name_der: der::seq(&[]),
        public_key: vec![4; 65],
    };
    let (_, _, body) = post(&encode_request(
        &CertId::new(CertIdHash::Sha1, &other, &serial),
        None,
    ));
    assert_eq!(response_status(&body), UNAUTHORIZED);
    // A request for 100 serials.
    let one = der::seq(&[&CertId::new(CertIdHash::Sha1, &issuer, &serial).to_der()]);
    let many: Vec<&[u8]> = std::iter::repeat_n(one.as_slice(), 100).collect();
    let hundred = der::seq(&[&der::seq(&[&der::seq(&many)])]);
    let (status, _, body) = post(&hundred);
    assert_eq!((status, response_status(&body)), (200, MALFORMED));
    // A truncated request, and a GET with no request.
    let (_, _, body) = post(&good[..good.len() - 3]);
    assert_eq!(response_status(&body), MALFORMED);
    let (_, _, body) = http(port, "GET", "/ocsp/", &[], b"");
    assert_eq!(response_status(&body), MALFORMED);

    // Nothing but public material here: no signing, admin, renewal or metrics route.
    for (method, path) in [
        ("POST", "/v1/sign"),
        ("GET", "/v1/ca"),
        ("POST", "/v1/renew"),
        ("GET", "/v1/admin/psks"),
        ("GET", "/metrics"),
        ("GET", "/healthz"),
    ] {
        let (status, _, _) = http(port, method, path, &[], b"");
        assert_eq!(status, 404, "{method} {path}");
    }
    let (status, _, _) = http(port, "PUT", "/ocsp", &[], b"");
    assert_eq!(status, 405);
    let (status, _, _) = http(port, "DELETE", "/crl/intermediate.crl", &[], b"");
    assert_eq!(status, 405);

    // Still healthy: a real request by GET (URL-encoded base64) is good,
    // cacheable, and a second GET with its ETag is 304.
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&good);
    let path = format!(
        "/ocsp/{}",
        b64.replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    );
    let (status, head, body) = http(port, "GET", &path, &[], b"");
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("application/ocsp-response")
    );
    let v = ca_client::ocsp::verify_response(
        &body,
        &CertId::new(CertIdHash::Sha1, &issuer, &serial),
        &int,
        ca_client::timefmt::unix_now(),
        60,
    )
    .unwrap();
    assert_eq!(v.single.status, ca_client::ocsp::CertStatus::Good);
    let cc = header(&head, "cache-control").unwrap();
    let max_age: i64 = cc
        .split(',')
        .find_map(|p| p.trim().strip_prefix("max-age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(max_age > 0 && max_age <= 4 * 3600, "{cc}");
    let etag = header(&head, "etag").unwrap().to_owned();
    let (status, _, again) = http(port, "GET", &path, &[("If-None-Match", &etag)], b"");
    assert_eq!(status, 304);
    assert!(again.is_empty());
    // CA certificates and the root CRL over plain HTTP.
    for (p, ct) in [
        ("/ca/intermediate.crt", "application/pkix-cert"),
        ("/ca/root.crt", "application/pkix-cert"),
        ("/crl/root.crl", "application/pkix-crl"),
    ] {
        let (status, head, _) = http(port, "GET", p, &[], b"");
        assert_eq!(
            (status, header(&head, "content-type")),
            (200, Some(ct)),
            "{p}"
        );
    }
    let (status, _, body) = http(port, "GET", "/ca/intermediate.crt", &[], b"");
    assert_eq!((status, body), (200, int.clone()));

    let health =
        block_on(
            ca.client()
                .send(http::Method::GET, "/healthz", None, bytes::Bytes::new()),
        )
        .unwrap();
    assert_eq!(health.status, http::StatusCode::OK);
    let metrics =
        block_on(
            ca.client()
                .send(http::Method::GET, "/metrics", None, bytes::Bytes::new()),
        )
        .unwrap();
    // Two good answers (the GET and its 304), one refused issuer.
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("ca_ocsp_requests_total{status=\"good\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("ca_ocsp_requests_total{status=\"unauthorized\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ca_ocsp_oldest_response_age_seconds"),
        "{text}"
    );
    assert!(!ca.logs().contains("panicked"), "{}", ca.logs());
}

/// An nginx server block on `port` including the installed snippet.
fn nginx_server(port: u16, dest: &Path) -> String {
    format!(
        "server {{ listen 127.0.0.1:{port} ssl; server_name {WEB}; include {}/current/nginx-ssl.conf;\n  location / {{ return 200 \"ok\\n\"; }} }}",
        dest.display()
    )
}

/// `openssl s_client -status` to 127.0.0.1:`port`: its output.
fn s_client_status(port: u16, ca_file: &Path) -> String {
    let out = run(Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", WEB, "-status", "-CAfile"])
        .arg(ca_file)
        .stdin(std::process::Stdio::null()));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn nginx_staples_a_verified_good_response() {
    if !require_tool("nginx") || !require_tool("openssl") {
        return;
    }
    let http_port = free_port();
    let mut ca = CaServer::start_with(ServerOptions {
        args: http_args(http_port),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let port = free_port();
    let dest = work.path().join("nginx/tls");
    let mut nginx = Nginx::configure(&work.path().join("nginx"), &nginx_server(port, &dest));
    let args = vec![
        "--config".to_owned(),
        nginx.conf.display().to_string(),
        "--pid-file".into(),
        nginx.pid_file.display().to_string(),
        "--probe".into(),
        format!("127.0.0.1:{port}"),
    ];
    run_ok(&mut install("nginx", &web, &dest, &strs(&args)));
    let snippet = std::fs::read_to_string(dest.join("current/nginx-ssl.conf")).unwrap();
    assert!(snippet.contains("ssl_stapling            on;"), "{snippet}");
    assert!(snippet.contains("ssl_stapling_verify     on;"), "{snippet}");
    assert!(
        !snippet.contains("resolver"),
        "an IP URL needs no resolver:\n{snippet}"
    );
    nginx.start(&[port]);
    // nginx fetches the response on the first handshake and staples from then on.
    let ca_pem = web.dir.join("ca.pem");
    let out = wait_for(Duration::from_secs(30), "nginx to staple", || {
        let out = s_client_status(port, &ca_pem);
        out.contains("OCSP Response Status: successful")
            .then_some(out)
    });
    assert!(out.contains("Cert Status: good"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    // nginx verified it (ssl_stapling_verify on): no complaint in its log.
    let logs = nginx.logs();
    assert!(!logs.contains("OCSP_basic_verify() failed"), "{logs}");
}

#[test]
fn haproxy_staples_good_then_revoked_after_ca_client_ocsp() {
    if !require_tool("haproxy") || !require_tool("openssl") {
        return;
    }
    let http_port = free_port();
    let mut ca = CaServer::start_with(ServerOptions {
        args: http_args(http_port),
        ..Default::default()
    });
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let port = free_port();
    let hdir = work.path().join("haproxy");
    let dest = hdir.join("tls");
    let socket = hdir.join("admin.sock");
    let current = format!("{}/current", dest.display());
    let mut haproxy = Haproxy::configure(
        &hdir,
        &format!(
            "frontend fe\n  bind 127.0.0.1:{port} ssl crt {current}/haproxy.pem\n  \
             http-request return status 200 content-type text/plain string ok\n"
        ),
    );
    // The runtime socket goes in the global section.
    let conf = std::fs::read_to_string(&haproxy.conf).unwrap().replacen(
        "global\n",
        &format!(
            "global\n  stats socket {} mode 600 level admin\n",
            socket.display()
        ),
        1,
    );
    std::fs::write(&haproxy.conf, conf).unwrap();
    let args = vec![
        "--config".to_owned(),
        haproxy.conf.display().to_string(),
        "--pid-file".into(),
        haproxy.pid_file.display().to_string(),
        "--probe".into(),
        format!("127.0.0.1:{port}"),
        "--bind".into(),
        format!("127.0.0.1:{port}"),
    ];
    run_ok(&mut install("haproxy", &web, &dest, &strs(&args)));
    // Fetched before HAProxy starts: it loads haproxy.pem.ocsp at start.
    let out = run_ok(ca_client().args(["ocsp", "--dir"]).arg(&web.dir).args([
        "--install",
        "haproxy",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "good", "{out}");
    assert_eq!(v["nonce_echoed"], true, "{out}");
    assert!(
        v["signer"]
            .as_str()
            .unwrap()
            .starts_with("delegated responder"),
        "{out}"
    );
    assert!(dest.join("current/haproxy.pem.ocsp").exists());
    assert_eq!(
        read(&dest.join("current/haproxy.pem.ocsp")),
        read(&web.dir.join("cert.ocsp"))
    );
    haproxy.start(&[port]);
    let ca_pem = web.dir.join("ca.pem");
    let out = s_client_status(port, &ca_pem);
    assert!(
        out.contains("Cert Status: good"),
        "{out}\n{}",
        haproxy.logs()
    );

    run_ok(
        ca.cli()
            .args(["revoke", &web.raw_serial, "--reason", "keyCompromise"]),
    );
    // The responder answers revoked once its poller saw the revocation.
    let out = wait_for(Duration::from_secs(30), "OCSP to say revoked", || {
        let out = run(ca_client()
            .args(["ocsp", "--dir"])
            .arg(&web.dir)
            .args(["--install", "haproxy", "--haproxy-socket"])
            .arg(&socket));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.starts_with("revoked").then_some(text)
    });
    assert!(out.contains("pushed to HAProxy's runtime socket"), "{out}");
    let out = s_client_status(port, &ca_pem);
    assert!(
        out.contains("Cert Status: revoked"),
        "{out}\n{}",
        haproxy.logs()
    );
    assert!(out.contains("Revocation Reason: keyCompromise"), "{out}");
}

#[test]
fn without_the_listener_leaves_keep_the_https_distribution_point_and_no_aia() {
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, WEB, work.path(), "web");
    let cert = pem::parse(read(&web.dir.join("cert.pem")))
        .unwrap()
        .into_contents();
    assert_eq!(ca_client::ocsp::ocsp_url(&cert).unwrap(), None);
    let text = openssl_text(&web.dir.join("cert.pem"));
    assert!(
        text.contains(&format!("URI:https://localhost:{}/v1/crl", ca.port)),
        "{text}"
    );
    // ca-client ocsp says why it cannot help.
    let out = run(ca_client().args(["ocsp", "--dir"]).arg(&web.dir));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("names no OCSP responder"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ca-server init --http-public-url`: the intermediate names the root CRL
/// there; `intermediate rotate` keeps it or takes `--http-public-url`.
#[test]
fn init_with_the_http_url_gives_the_intermediate_the_root_crl_distribution_point() {
    let tmp = tempfile::tempdir().unwrap();
    let data: PathBuf = tmp.path().join("data");
    run_ok(
        Command::new(bin("ca-server"))
            .arg("--data-dir")
            .arg(&data)
            .args([
                "init",
                "--http-public-url",
                "http://ca.example.internal:8080",
            ]),
    );
    let text = openssl_text(&data.join("intermediate.crt"));
    assert!(
        text.contains("URI:http://ca.example.internal:8080/crl/root.crl"),
        "{text}"
    );
    // A rotation keeps it, or takes the one given.
    let rotate = |extra: &[&str]| {
        run_ok(
            Command::new(bin("ca-server"))
                .arg("--data-dir")
                .arg(&data)
                .args(["intermediate", "rotate"])
                .args(extra),
        );
        openssl_text(&data.join("intermediate.crt"))
    };
    let text = rotate(&[]);
    assert!(
        text.contains("URI:http://ca.example.internal:8080/crl/root.crl"),
        "{text}"
    );
    let text = rotate(&["--http-public-url", "http://crl.example.internal"]);
    assert!(
        text.contains("URI:http://crl.example.internal/crl/root.crl"),
        "{text}"
    );
    let out = run(Command::new(bin("ca-server"))
        .arg("--data-dir")
        .arg(tmp.path().join("other"))
        .args(["init", "--http-public-url", "https://ca.example.internal/"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must start with http://"));
}

/// The plain-HTTP listener has the HTTPS listener's timeouts: a silent
/// connection, a header that never ends and an idle keep-alive connection
/// are closed by the server, and another client is served meanwhile.
#[test]
fn plain_http_closes_silent_slow_and_idle_connections() {
    let port = free_port();
    let mut args = http_args(port);
    args.extend(["--header-timeout".into(), "2s".into()]);
    let _ca = CaServer::start_with(ServerOptions {
        args,
        ..Default::default()
    });
    // Returns once the server closed the connection (read gives EOF or a reset).
    let closed_by_server = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    };
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /ca/root.crt HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.write_all(b"GET /ca/root.crt HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Another client is served while those three hang on.
    let (status, _, _) = http(port, "GET", "/ca/root.crt", &[], b"");
    assert_eq!(status, 200);
    assert!(
        closed_by_server(&mut silent),
        "a silent connection stayed open"
    );
    assert!(
        closed_by_server(&mut slow),
        "an unfinished header stayed open"
    );
    assert!(
        closed_by_server(&mut idle),
        "an idle keep-alive connection stayed open"
    );
    let (status, _, _) = http(port, "GET", "/ca/root.crt", &[], b"");
    assert_eq!(status, 200);
}

/// The plain listener shares `--max-connections` with nothing else: held
/// connections beyond it are closed at accept, and a freed slot serves again.
#[test]
fn plain_http_closes_connections_beyond_the_limit() {
    let port = free_port();
    let mut args = http_args(port);
    args.extend(["--max-connections".into(), "3".into()]);
    let _ca = CaServer::start_with(ServerOptions {
        args,
        ..Default::default()
    });
    let held: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Wait until the three are accepted, then the fourth is closed unanswered.
    wait_for(
        Duration::from_secs(30),
        "a connection over the limit to be closed",
        || {
            let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            extra
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let _ = extra
                .write_all(b"GET /ca/root.crt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = Vec::new();
            match extra.read_to_end(&mut buf) {
                Ok(_) if buf.is_empty() => Some(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some(()),
                _ => None,
            }
        },
    );
    drop(held);
    // Served again once a slot is free (a try that still finds none is closed).
    let answer = wait_for(Duration::from_secs(30), "a freed slot to serve", || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /ca/root.crt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).ok()?;
        (!buf.is_empty()).then_some(buf)
    });
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
