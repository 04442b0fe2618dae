//! `ca-client bootstrap`: from a PSK file to an installed key and certificate.
//!
//! 1. The key is generated locally and saved (0600) as `pending-key.pem`
//!    before anything is sent, so a retry after a lost response, even from a
//!    new process, sends the same public key and gets the certificate the
//!    server already recorded (the idempotent retry).
//! 2. `/v1/ca` is fetched without trust and its root checked against the
//!    pinned fingerprint; from then on only that root is trusted.
//! 3. The CSR goes to `/v1/sign`, retried with backoff on transport errors,
//!    429 and 5xx until a deadline.
//! 4. The answer is verified (our key, chains to the pinned root, names the
//!    host) and `ca.pem`, `chain.pem`, `cert.pem`, `key.pem` are written
//!    atomically; the PSK file (or the spawner bundle it came in) is deleted last.

use crate::fsutil::{self, KEY_MODE, PUBLIC_MODE};
use crate::https::{HttpsClient, Reply, TransportError};
use crate::keys::{HostKey, KeyType};
use crate::trust::{self, PinnedCa};
use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http::{Method, StatusCode};
use policy::Psk;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Exit codes of `ca-client`, by cause.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    pub const USAGE: i32 = 2;
    /// The server's root does not match `--fingerprint`, or its TLS cannot be trusted.
    pub const TRUST: i32 = 3;
    /// The PSK was refused (unknown host, wrong, used or expired).
    pub const PSK_REJECTED: i32 = 4;
    /// The server could not be reached (or kept failing) until the deadline.
    pub const UNREACHABLE: i32 = 5;
    /// The server refused the request itself (4xx other than 403).
    pub const REFUSED: i32 = 6;
    /// `install`: the service refused the new files; the previous ones were put back.
    pub const SERVICE: i32 = 7;
    /// `crl`: the CRL was refused (not signed by the pinned CA, expired, or
    /// older than the installed one); the installed one stays.
    pub const CRL_REFUSED: i32 = 8;
}

/// A failure with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Trust(anyhow::Error),
    #[error(
        "the CA rejected the PSK (unknown host, wrong, already used or expired PSK): {0}. Ask the spawner for a new PSK."
    )]
    PskRejected(String),
    #[error("the CA could not be reached: {0}")]
    Unreachable(String),
    #[error("the CA refused the request: {code}: {message}")]
    Refused { code: String, message: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl BootstrapError {
    pub fn exit_code(&self) -> i32 {
        match self {
            BootstrapError::Trust(_) => exit::TRUST,
            BootstrapError::PskRejected(_) => exit::PSK_REJECTED,
            BootstrapError::Unreachable(_) => exit::UNREACHABLE,
            BootstrapError::Refused { .. } => exit::REFUSED,
            BootstrapError::Other(_) => exit::ERROR,
        }
    }
}

/// Inputs of a bootstrap.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub server: String,
    pub fingerprint: String,
    pub hostname: String,
    /// The PSK file, deleted after success.
    pub psk_file: PathBuf,
    /// `psk_file` is a spawner bundle (`--bundle`, [`crate::bundle`]): the
    /// PSK is its `psk` field. It is deleted after success all the same.
    pub psk_in_bundle: bool,
    pub dir: PathBuf,
    pub key_type: KeyType,
    /// Use this existing key instead of generating one.
    pub key_file: Option<PathBuf>,
    pub extra_sans: Vec<String>,
    /// Give up retrying after this long.
    pub deadline: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

/// What a successful bootstrap wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BootstrapOutcome {
    pub serial: String,
    pub hostname: String,
    pub not_after: String,
    pub dir: PathBuf,
    /// The server returned a certificate issued for an earlier attempt.
    pub recovered: bool,
}

/// File names inside the bootstrap directory.
pub use proto::files::{CA_FILE, CERT_FILE, CHAIN_FILE, KEY_FILE, PENDING_KEY_FILE};

/// Runs the whole bootstrap.
pub async fn bootstrap(opts: &BootstrapOptions) -> Result<BootstrapOutcome, BootstrapError> {
    policy::hostname::validate(&opts.hostname).map_err(|e| {
        anyhow!(
            "--hostname {}: {e}",
            policy::hostname::escape_for_display(&opts.hostname)
        )
    })?;
    let expected =
        trust::parse_fingerprint(&opts.fingerprint).map_err(|e| anyhow!("--fingerprint: {e:#}"))?;
    let psk = if opts.psk_in_bundle {
        crate::bundle::Bundle::read(&opts.psk_file)?.psk
    } else {
        read_psk(&opts.psk_file)?
    };
    fsutil::private_key_dir(&opts.dir)?;

    let key = load_or_create_key(opts)?;
    let csr = key.csr_pem(&opts.hostname, &opts.extra_sans, Some(&psk))?;
    drop(psk);

    let deadline = Instant::now() + opts.deadline;
    let pinned = fetch_pinned_ca(opts, &expected, deadline).await?;
    let mut client = HttpsClient::new(
        &opts.server,
        trust::pinned_client_config(&pinned.root_der, None).map_err(BootstrapError::Trust)?,
    )?;
    client.timeout = opts.request_timeout;

    // The CSR carries the PSK: one buffer, moved (not copied) out of the
    // PEM string, shared by every retry and wiped when the last one drops.
    let mut csr = csr;
    let body = Bytes::from_owner(Zeroizing::new(std::mem::take(&mut *csr).into_bytes()));
    let reply = send_with_retries(&client, deadline, || {
        (
            Method::POST,
            "/v1/sign",
            Some("application/pkcs10"),
            body.clone(),
        )
    })
    .await?;
    drop(body);
    let recovered = match reply.status {
        StatusCode::CREATED => false,
        StatusCode::OK => true,
        StatusCode::FORBIDDEN => {
            let msg = reply.api_error().map(|(_, m)| m).unwrap_or_default();
            return Err(BootstrapError::PskRejected(msg));
        }
        s => {
            let (code, message) = reply
                .api_error()
                .unwrap_or_else(|| (s.as_u16().to_string(), String::new()));
            return Err(BootstrapError::Refused { code, message });
        }
    };

    let issued = verify_issued(&reply.body, &key, &pinned, &opts.hostname)?;
    write_material(&opts.dir, &key, &pinned, &reply.body, &issued.leaf_pem)?;
    // The PSK is spent; remove it so it cannot leak later. The pending key has become key.pem.
    match std::fs::remove_file(&opts.psk_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "could not delete the PSK file"),
    }
    Ok(BootstrapOutcome {
        serial: issued.serial,
        hostname: opts.hostname.clone(),
        not_after: issued.not_after,
        dir: opts.dir.clone(),
        recovered,
    })
}

/// The PSK file's text is read into one buffer (std sizes it from the
/// file's length) that is wiped; the trimmed copy moves into the `Psk`.
fn read_psk(path: &Path) -> Result<Psk, BootstrapError> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the PSK file {}", path.display()))?,
    );
    Psk::new(text.trim().to_owned())
        .map_err(|e| anyhow!("the PSK file {}: {e}", path.display()).into())
}

/// The key to send: `--key`, else the pending key of an earlier attempt, else
/// a new one saved as pending before anything is sent.
fn load_or_create_key(opts: &BootstrapOptions) -> Result<HostKey> {
    let pending = opts.dir.join(PENDING_KEY_FILE);
    if let Some(path) = &opts.key_file {
        let key = HostKey::load(path)?;
        fsutil::write_atomic(&pending, key.pem().as_bytes(), KEY_MODE)?;
        return Ok(key);
    }
    if pending.exists() {
        tracing::info!("reusing the key of an earlier bootstrap attempt");
        return HostKey::load(&pending);
    }
    let key = HostKey::generate(opts.key_type)?;
    fsutil::write_atomic(&pending, key.pem().as_bytes(), KEY_MODE)?;
    Ok(key)
}

async fn fetch_pinned_ca(
    opts: &BootstrapOptions,
    expected: &[u8; 32],
    deadline: Instant,
) -> Result<PinnedCa, BootstrapError> {
    let mut client = HttpsClient::new(&opts.server, trust::unverified_client_config()?)?;
    client.timeout = opts.request_timeout;
    let reply = send_with_retries(&client, deadline, || {
        (Method::GET, "/v1/ca", None, Bytes::new())
    })
    .await?;
    if reply.status != StatusCode::OK {
        return Err(BootstrapError::Unreachable(format!(
            "GET /v1/ca answered {}",
            reply.status
        )));
    }
    PinnedCa::from_bundle(&reply.body, expected).map_err(BootstrapError::Trust)
}

/// Sends until an answer that is not worth retrying, or the deadline.
pub async fn send_with_retries(
    client: &HttpsClient,
    deadline: Instant,
    request: impl Fn() -> (Method, &'static str, Option<&'static str>, Bytes),
) -> Result<Reply, BootstrapError> {
    let mut delay = Duration::from_millis(500);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let (method, path, ct, body) = request();
        let wait = match client.send(method, path, ct, body).await {
            Ok(reply)
                if reply.status == StatusCode::TOO_MANY_REQUESTS
                    || reply.status.is_server_error() =>
            {
                let hint = reply.retry_after().map(|s| Duration::from_secs(s.min(60)));
                tracing::warn!(status = %reply.status, attempt, "the CA is busy or failing; retrying");
                if Instant::now() + hint.unwrap_or(delay) >= deadline {
                    let detail = reply
                        .api_error()
                        .map(|(c, m)| format!("{c}: {m}"))
                        .unwrap_or_default();
                    return Err(BootstrapError::Unreachable(format!(
                        "{} {detail}",
                        reply.status
                    )));
                }
                hint.unwrap_or(delay)
            }
            Ok(reply) => return Ok(reply),
            Err(e) if e.is_tls() => {
                return Err(BootstrapError::Trust(anyhow!(e).context(
                    "TLS with the CA failed (is --server the CA that --fingerprint names?)",
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "request failed; retrying");
                if Instant::now() + delay >= deadline {
                    return Err(BootstrapError::Unreachable(match e {
                        TransportError::Timeout(..)
                        | TransportError::Connect(..)
                        | TransportError::Http(..) => e.to_string(),
                        TransportError::Tls(..) => unreachable!("handled above"),
                    }));
                }
                delay
            }
        };
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

pub(crate) struct IssuedLeaf {
    pub serial: String,
    pub not_after: String,
    pub leaf_pem: String,
}

/// Checks the chain the CA answered: leaf holds our public key, chains to
/// the pinned root, is valid now for `hostname` as a TLS server.
pub(crate) fn verify_issued(
    chain_pem: &[u8],
    key: &HostKey,
    pinned: &PinnedCa,
    hostname: &str,
) -> Result<IssuedLeaf> {
    let blocks = pem::parse_many(chain_pem).context("the CA's answer is not PEM")?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .collect();
    let leaf = certs
        .first()
        .context("the CA's answer holds no certificate")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow!("the issued certificate does not parse: {e}"))?;
    if parsed.public_key().raw != key.spki_der().as_slice() {
        anyhow::bail!("the issued certificate is not for this host's key");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pinned.root_der.clone()))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.into(),
        trust::provider(),
    )
    .build()?;
    let intermediates = vec![CertificateDer::from(pinned.intermediate_der.clone())];
    let name = ServerName::try_from(hostname.to_owned())?;
    verifier
        .verify_server_cert(
            &CertificateDer::from(leaf.clone()),
            &intermediates,
            &name,
            &[],
            UnixTime::now(),
        )
        .map_err(|e| {
            anyhow!("the issued certificate does not verify against the pinned root: {e}")
        })?;
    let not_after = parsed
        .validity()
        .not_after
        .to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Ok(IssuedLeaf {
        serial: hex::encode(parsed.raw_serial()),
        not_after,
        leaf_pem: pem::encode(&pem::Pem::new("CERTIFICATE", leaf.clone())),
    })
}

/// Writes the set; the key last, by renaming the pending key into place.
pub(crate) fn write_material(
    dir: &Path,
    key: &HostKey,
    pinned: &PinnedCa,
    chain_pem: &[u8],
    leaf_pem: &str,
) -> Result<()> {
    fsutil::write_atomic(
        &dir.join(CA_FILE),
        pinned.root_pem().as_bytes(),
        PUBLIC_MODE,
    )?;
    fsutil::write_atomic(&dir.join(CHAIN_FILE), chain_pem, PUBLIC_MODE)?;
    fsutil::write_atomic(&dir.join(CERT_FILE), leaf_pem.as_bytes(), PUBLIC_MODE)?;
    fsutil::write_atomic(&dir.join(KEY_FILE), key.pem().as_bytes(), KEY_MODE)?;
    let _ = std::fs::remove_file(dir.join(PENDING_KEY_FILE));
    fsutil::sync_dir(dir)
}
