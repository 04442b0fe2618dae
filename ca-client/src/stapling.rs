//! `ca-client ocsp`: fetch this host's OCSP response from the responder its
//! certificate names (authorityInfoAccess), verify it against the pinned CA,
//! keep it as `DIR/cert.ocsp`, and with `--install haproxy` put it next to
//! HAProxy's certificate (`haproxy.pem.ocsp`, read at start) and push it
//! into a running HAProxy through its runtime socket.
//!
//! Verification: the response is signed by the intermediate of
//! `DIR/chain.pem` (itself checked against the pinned `DIR/ca.pem`) or by a
//! responder certificate that intermediate issued with the OCSPSigning
//! extended key usage; it answers for this certificate's CertID;
//! thisUpdate is not in the future and nextUpdate has not passed. A nonce
//! is sent; the responder may answer a pre-signed response without it
//! (RFC 8954 allows that), which is accepted.

use crate::bootstrap::exit;
use crate::crl::CaCerts;
use crate::failure::Failure;
use crate::fsutil::{self, PUBLIC_MODE};
use crate::install::ServiceKind;
use crate::install::material::certs_from_pem;
use crate::ocsp::{CertId, CertIdHash, CertStatus, IssuerKeys};
use crate::timefmt::{rfc3339, unix_now};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The response's file name in the bootstrap directory.
pub const OCSP_FILE: &str = "cert.ocsp";
/// Largest response accepted.
const MAX_RESPONSE: usize = 64 * 1024;
/// Clock skew tolerated on thisUpdate and nextUpdate.
const SKEW: i64 = 300;

/// What `ca-client ocsp` does.
#[derive(Debug, Clone)]
pub struct OcspOptions {
    pub dir: PathBuf,
    /// The responder URL [default: the certificate's AIA].
    pub url: Option<String>,
    pub install: Vec<ServiceKind>,
    /// HAProxy install directory [default: those recorded for DIR].
    pub dest: Option<PathBuf>,
    /// HAProxy runtime (stats) socket with admin level.
    pub haproxy_socket: Option<PathBuf>,
    pub timeout: Duration,
}

/// What it did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OcspOutcome {
    pub serial: String,
    pub url: String,
    /// good, revoked or unknown.
    pub status: String,
    pub revoked_at: Option<String>,
    pub this_update: String,
    pub next_update: Option<String>,
    pub signer: String,
    pub nonce_echoed: bool,
    pub file: PathBuf,
    /// Files written for HAProxy.
    pub installed: Vec<PathBuf>,
    /// Whether the runtime socket took the response.
    pub pushed: bool,
}

/// Fetches, verifies and writes (and installs) the response.
pub async fn run(opts: &OcspOptions) -> Result<OcspOutcome, Failure> {
    let fail = |e: anyhow::Error| Failure::new(exit::ERROR, e);
    let ca = CaCerts::load(&opts.dir).map_err(fail)?;
    let cert_path = opts.dir.join(crate::bootstrap::CERT_FILE);
    let leaf = std::fs::read(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))
        .and_then(|b| {
            certs_from_pem(&b)?
                .into_iter()
                .next()
                .context("cert.pem holds no certificate")
        })
        .map_err(fail)?;
    let url = match &opts.url {
        Some(u) => u.clone(),
        None => crate::ocsp::ocsp_url(&leaf).map_err(fail)?.ok_or_else(|| {
            Failure::new(
                exit::ERROR,
                anyhow!(
                    "the certificate names no OCSP responder (authorityInfoAccess); \
                         the CA serves OCSP only with `serve --http-listen`"
                ),
            )
        })?,
    };
    let serial = crate::ocsp::cert_serial(&leaf).map_err(fail)?;
    let issuer = IssuerKeys::from_cert(&ca.intermediate).map_err(fail)?;
    let id = CertId::new(CertIdHash::Sha1, &issuer, &serial);
    let mut nonce = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| fail(anyhow!("CSPRNG failure")))?;
    let request = crate::ocsp::encode_request(&id, Some(&nonce));
    let body = tokio::time::timeout(opts.timeout, post(&url, request))
        .await
        .map_err(|_| {
            Failure::new(
                exit::UNREACHABLE,
                anyhow!("the OCSP responder at {url} did not answer in time"),
            )
        })?
        .map_err(|e| Failure::new(exit::UNREACHABLE, e))?;
    let now = unix_now();
    let verified = crate::ocsp::verify_response(&body, &id, &ca.intermediate, now, SKEW)
        .map_err(|e| fail(e.context(format!("the OCSP response from {url}"))))?;
    let (_, basic) = crate::ocsp::decode_response(&body).map_err(fail)?;
    let echoed = basic
        .and_then(|b| b.nonce)
        .map(|n| {
            if n == nonce {
                Ok(true)
            } else {
                Err(fail(anyhow!(
                    "the OCSP response carries another nonce than ours"
                )))
            }
        })
        .transpose()?
        .unwrap_or(false);

    let file = opts.dir.join(OCSP_FILE);
    fsutil::write_atomic(&file, &body, PUBLIC_MODE).map_err(fail)?;
    let mut installed = Vec::new();
    let mut pushed = false;
    if opts.install.contains(&ServiceKind::Haproxy) {
        let dests = match &opts.dest {
            Some(d) => vec![d.clone()],
            None => crate::install::record::recorded(&opts.dir)
                .map_err(fail)?
                .into_iter()
                .filter(|r| r.service == ServiceKind::Haproxy)
                .map(|r| r.flags.dest)
                .collect(),
        };
        if dests.is_empty() {
            return Err(Failure::new(
                exit::USAGE,
                anyhow!(
                    "--install haproxy: no --dest given and no HAProxy install recorded for --dir"
                ),
            ));
        }
        for dest in dests {
            let path = haproxy_ocsp_path(&dest);
            fsutil::write_atomic(&path, &body, PUBLIC_MODE).map_err(fail)?;
            installed.push(path);
        }
        if let Some(socket) = &opts.haproxy_socket {
            push_to_haproxy(socket, &body, opts.timeout)
                .await
                .map_err(|e| Failure::new(exit::ERROR, e))?;
            pushed = true;
        }
    }
    let (status, revoked_at) = match &verified.single.status {
        CertStatus::Good => ("good", None),
        CertStatus::Revoked { at, .. } => ("revoked", Some(rfc3339(*at))),
        CertStatus::Unknown => ("unknown", None),
    };
    Ok(OcspOutcome {
        serial: hex::encode(&serial),
        url,
        status: status.to_owned(),
        revoked_at,
        this_update: rfc3339(verified.single.this_update),
        next_update: verified.single.next_update.map(rfc3339),
        signer: verified.signer,
        nonce_echoed: echoed,
        file,
        installed,
        pushed,
    })
}

/// Where HAProxy 2.x looks for the stapled response of `DEST/current/haproxy.pem`.
pub fn haproxy_ocsp_path(dest: &Path) -> PathBuf {
    dest.join(crate::install::generation::CURRENT)
        .join(format!("{}.ocsp", crate::install::haproxy::COMBINED))
}

/// POSTs an OCSP request over plain HTTP/1.1 and returns the body.
async fn post(url: &str, request: Vec<u8>) -> Result<Vec<u8>> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad OCSP URL {url}"))?;
    if uri.scheme_str() != Some("http") {
        bail!("the OCSP URL {url} is not http:// (OCSP is fetched over plain HTTP)");
    }
    let host = uri.host().context("the OCSP URL has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .context("HTTP handshake with the OCSP responder")?;
    tokio::spawn(conn);
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let req = http::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/ocsp-request")
        .body(Full::new(Bytes::from(request)))?;
    let resp = sender
        .send_request(req)
        .await
        .context("sending the OCSP request")?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the OCSP response: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("the OCSP responder answered HTTP {status}");
    }
    Ok(body.to_vec())
}

/// `set ssl ocsp-response <base64>` on HAProxy's runtime socket.
async fn push_to_haproxy(socket: &Path, der: &[u8], timeout: Duration) -> Result<()> {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let line = format!(
        "set ssl ocsp-response {}\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    );
    let work = async {
        let mut s = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to the HAProxy socket {}", socket.display()))?;
        s.write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await?;
        anyhow::Ok(reply)
    };
    let reply = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| anyhow!("the HAProxy socket did not answer in time"))??;
    if !reply.contains("updated") {
        bail!(
            "HAProxy refused the OCSP response: {}",
            reply.trim().chars().take(300).collect::<String>()
        );
    }
    Ok(())
}
