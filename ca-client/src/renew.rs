//! `ca-client renew`: replace the host's certificate before it expires,
//! authenticated by the current one (mTLS to `POST /v1/renew`), and
//! re-install it for the services.
//!
//! 1. Finish a renewal a crash interrupted (`cert.pem` already holds the key
//!    in `pending-key.pem`), then read the current set from `--dir`.
//! 2. Not due (more than `--when-remaining` of its lifetime left): say so,
//!    exit 0, change nothing. Due: wait a random `--jitter` first, so a
//!    fleet's timers do not arrive together ([`jitter_bound`]). Expired: try
//!    at once; the server renews it within its `--renew-grace` and refuses
//!    it past that (403 `renewal_expired`, exit 6, the remedy printed,
//!    nothing on disk changed).
//! 3. A new key (unless `--reuse-key`) is saved as `pending-key.pem` before
//!    anything is sent, so a retry after a lost answer sends the same key
//!    and gets the certificate already issued.
//! 4. The CSR goes to `/v1/renew` with leaf + intermediate and the current
//!    key as the client certificate, over TLS pinned to `ca.pem`; retried
//!    on transport errors, 429 and 5xx until `--retry-for`.
//! 5. The answer is verified like a bootstrap's and the set is written
//!    (`key.pem` last); then the recorded installs for `--install` are
//!    redone (check, reload, probe, rollback) and `--reload CMD` runs.

use crate::bootstrap::{
    self, BootstrapError, CERT_FILE, CHAIN_FILE, KEY_FILE, PENDING_KEY_FILE, exit,
};
use crate::crl::CaCerts;
use crate::failure::Failure;
use crate::fsutil::{self, KEY_MODE};
use crate::https::HttpsClient;
use crate::install::ServiceKind;
use crate::install::material::{certs_from_pem, subject_cn};
use crate::install::record::{self, Reinstalled};
use crate::keys::{HostKey, KeyType};
use crate::timefmt::{rfc3339, unix_now};
use crate::trust::{self, PinnedCa};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// When a certificate is due: `33%` of its lifetime left, or `10d` left.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Percent(u8),
    Left(Duration),
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Threshold, String> {
        match s.trim().strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Threshold::Percent(p)),
                _ => Err(format!("{s:?}: a percentage from 1% to 100%")),
            },
            None => humantime::parse_duration(s.trim())
                .map(Threshold::Left)
                .map_err(|e| format!("{s:?}: a percentage (33%) or a duration (10d): {e}")),
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Percent(p) => write!(f, "{p}%"),
            Threshold::Left(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

impl Threshold {
    /// Whether a certificate valid from `not_before` to `not_after` is due at `now`.
    pub fn due(&self, not_before: i64, not_after: i64, now: i64) -> bool {
        let left = not_after - now;
        match self {
            Threshold::Percent(p) => {
                let lifetime = (not_after - not_before).max(1);
                left * 100 <= lifetime * i64::from(*p)
            }
            Threshold::Left(d) => left <= d.as_secs() as i64,
        }
    }
}

/// Inputs of a renewal.
#[derive(Debug, Clone)]
pub struct RenewOptions {
    pub server: String,
    pub dir: PathBuf,
    pub when: Threshold,
    /// Renew even if not due.
    pub force: bool,
    /// Keep the current key instead of generating a new one.
    pub reuse_key: bool,
    pub key_type: KeyType,
    pub install: Vec<ServiceKind>,
    /// Run after a renewal (`sh -c`), e.g. for a service that reads `--dir` itself.
    pub reload: Option<String>,
    pub deadline: Duration,
    pub request_timeout: Duration,
    /// The random delay before a due renewal.
    pub jitter: Jitter,
    /// HAProxy: the runtime API socket for the re-install (overrides the recorded one).
    pub haproxy_socket: Option<PathBuf>,
}

/// `--jitter`: the bound of the random delay before a due renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// A tenth of the renewal window, at most [`DEFAULT_JITTER_CAP`].
    Default,
    /// At most this long (0: no delay).
    Max(Duration),
}

/// The default jitter never exceeds this: a timer run is not held for hours.
pub const DEFAULT_JITTER_CAP: Duration = Duration::from_secs(3600);

/// The most a due renewal is delayed. The renewal window is the span in
/// which the certificate is due (`--when-remaining`: that share of the
/// lifetime, or that duration); the default is a tenth of it, capped at
/// [`DEFAULT_JITTER_CAP`]. Either bound is also held to a tenth of the life
/// left, so the delay cannot carry a certificate to its expiry; an expired
/// certificate is not delayed at all (the grace is the server's, and it
/// runs out).
pub fn jitter_bound(
    jitter: Jitter,
    when: Threshold,
    not_before: i64,
    not_after: i64,
    now: i64,
) -> Duration {
    let left = not_after - now;
    if left <= 0 {
        return Duration::ZERO;
    }
    let bound = match jitter {
        Jitter::Max(d) => d,
        Jitter::Default => {
            let lifetime = (not_after - not_before).max(1) as u64;
            let window = match when {
                Threshold::Percent(p) => Duration::from_secs(lifetime * u64::from(p) / 100),
                Threshold::Left(d) => d.min(Duration::from_secs(lifetime)),
            };
            (window / 10).min(DEFAULT_JITTER_CAP)
        }
    };
    bound.min(Duration::from_secs(left as u64 / 10))
}

/// A uniformly random delay in `[0, bound]` (whole seconds).
fn random_delay(bound: Duration) -> Duration {
    let secs = bound.as_secs();
    if secs == 0 {
        return Duration::ZERO;
    }
    let mut bytes = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        return Duration::ZERO;
    }
    Duration::from_secs(u64::from_le_bytes(bytes) % (secs + 1))
}

/// The delay before this run renews: zero unless the certificate in `dir`
/// is due and unexpired (and the run is not `--force`). Read without the
/// directory lock (read-only); the locked run decides again afterwards.
fn jitter_delay(opts: &RenewOptions) -> Duration {
    if opts.force || opts.jitter == Jitter::Max(Duration::ZERO) {
        return Duration::ZERO;
    }
    let Ok(current) = load_current(&opts.dir) else {
        return Duration::ZERO;
    };
    let now = unix_now();
    if !opts.when.due(current.not_before, current.not_after, now) {
        return Duration::ZERO;
    }
    random_delay(jitter_bound(
        opts.jitter,
        opts.when,
        current.not_before,
        current.not_after,
        now,
    ))
}

/// What a renewal did.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RenewOutcome {
    NotDue {
        hostname: String,
        serial: String,
        not_after: String,
        /// Percentage of the lifetime left.
        left_percent: i64,
        threshold: String,
    },
    Renewed {
        hostname: String,
        old_serial: String,
        serial: String,
        not_after: String,
        /// The server returned the certificate of an earlier attempt.
        recovered: bool,
        services: Vec<Reinstalled>,
        reloaded: bool,
    },
}

/// The certificate set in the directory.
struct Current {
    key: HostKey,
    chain: Vec<Vec<u8>>,
    ca: CaCerts,
    hostname: String,
    serial: String,
    not_before: i64,
    not_after: i64,
}

/// Runs `ca-client renew`.
pub async fn renew(opts: &RenewOptions) -> Result<RenewOutcome, Failure> {
    fsutil::tighten_key_dir(&opts.dir)?;
    let delay = jitter_delay(opts);
    if !delay.is_zero() {
        tracing::info!(
            delay = %humantime::format_duration(delay),
            "due: waiting a random delay before renewing (--jitter)"
        );
        tokio::time::sleep(delay).await;
    }
    let _lock = fsutil::lock_dir(&opts.dir)?;
    finish_interrupted(&opts.dir)?;
    let current = load_current(&opts.dir)?;
    let now = unix_now();
    if now >= current.not_after {
        // The client cannot know the CA's renewal grace: it asks, and the
        // CA renews or answers renewal_expired.
        tracing::warn!(
            serial = %current.serial,
            not_after = %rfc3339(current.not_after),
            "the certificate has expired; asking the CA to renew it within its renewal grace"
        );
    }
    if !opts.force && !opts.when.due(current.not_before, current.not_after, now) {
        let lifetime = (current.not_after - current.not_before).max(1);
        return Ok(RenewOutcome::NotDue {
            left_percent: (current.not_after - now) * 100 / lifetime,
            hostname: current.hostname,
            serial: current.serial,
            not_after: rfc3339(current.not_after),
            threshold: opts.when.to_string(),
        });
    }

    let (key, fresh_pending) = if opts.reuse_key {
        (HostKey::from_pem(&current.key.pem())?, false)
    } else {
        pending_key(&opts.dir, opts.key_type, &current)?
    };
    let csr = key.csr_pem(&current.hostname, &[], None)?;
    let pinned = PinnedCa {
        root_der: current.ca.root.clone(),
        intermediate_der: current.ca.intermediate.clone(),
    };
    let client_auth = (
        current
            .chain
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(current.key.pkcs8_der().to_vec())),
    );
    let config = trust::pinned_client_config(&pinned.root_der, Some(client_auth))
        .map_err(BootstrapError::Trust)?;
    let mut client = HttpsClient::new(&opts.server, config)?;
    client.timeout = opts.request_timeout;
    let reply = bootstrap::send_with_retries(&client, Instant::now() + opts.deadline, || {
        (
            Method::POST,
            "/v1/renew",
            Some("application/pkcs10"),
            Bytes::copy_from_slice(csr.as_bytes()),
        )
    })
    .await?;
    let recovered = match reply.status {
        StatusCode::CREATED => false,
        StatusCode::OK => true,
        s => {
            // A refusal (4xx) is final: nothing was issued for a key made
            // by this run, so it goes and the directory is as it was. After
            // a 5xx the request may still have been recorded: the key stays
            // for the retry.
            if fresh_pending && s.is_client_error() {
                let _ = std::fs::remove_file(opts.dir.join(PENDING_KEY_FILE));
            }
            let (code, message) = reply
                .api_error()
                .unwrap_or_else(|| (s.as_u16().to_string(), String::new()));
            let hint = match (s, code.as_str()) {
                (StatusCode::FORBIDDEN, "renewal_expired") => format!(
                    "\n{host} cannot renew any more: on the spawner, `ca-server psk add {host}`, \
                     then `ca-client bootstrap --hostname {host} --dir {dir} ...` with the new PSK",
                    host = current.hostname,
                    dir = opts.dir.display()
                ),
                (StatusCode::FORBIDDEN, _) => " (a revoked, expired or replaced certificate cannot renew: bootstrap again with a new PSK from the spawner)".into(),
                _ => String::new(),
            };
            return Err(Failure::new(
                exit::REFUSED,
                anyhow!("the CA refused the renewal: {code}: {message}{hint}"),
            ));
        }
    };
    let issued = bootstrap::verify_issued(&reply.body, &key, &pinned, &current.hostname)?;
    bootstrap::write_material(&opts.dir, &key, &pinned, &reply.body, &issued.leaf_pem)?;
    tracing::info!(old = %current.serial, new = %issued.serial, "renewed");

    let services = record::reinstall_with(
        &opts.dir,
        &opts.install,
        record::Only::All,
        opts.haproxy_socket.as_deref(),
    )
    .await?;
    let reloaded = match &opts.reload {
        Some(cmd) => {
            run_reload(cmd)?;
            true
        }
        None => false,
    };
    Ok(RenewOutcome::Renewed {
        hostname: current.hostname,
        old_serial: current.serial,
        serial: issued.serial,
        not_after: issued.not_after,
        recovered,
        services,
        reloaded,
    })
}

/// A crash between writing `cert.pem` and `key.pem` leaves the new
/// certificate with the old key and the new key pending: finish the write.
fn finish_interrupted(dir: &Path) -> Result<()> {
    let pending = dir.join(PENDING_KEY_FILE);
    if !pending.exists() {
        return Ok(());
    }
    let key = HostKey::load(&pending)?;
    let cert = std::fs::read(dir.join(CERT_FILE)).unwrap_or_default();
    let leaf = certs_from_pem(&cert)
        .ok()
        .and_then(|c| c.into_iter().next());
    let matches = leaf.is_some_and(|der| {
        x509_parser::parse_x509_certificate(&der)
            .is_ok_and(|(_, c)| c.public_key().raw == key.spki_der().as_slice())
    });
    if matches {
        tracing::warn!("finishing a renewal that was interrupted after writing cert.pem");
        fsutil::write_atomic(&dir.join(KEY_FILE), key.pem().as_bytes(), KEY_MODE)?;
        std::fs::remove_file(&pending)?;
        fsutil::sync_dir(dir)?;
    }
    Ok(())
}

/// The key to renew with: the pending key of an attempt whose answer was
/// lost (the server returns what it issued for it), or a new one saved as
/// pending before it is used (then `true`: this run made it).
fn pending_key(dir: &Path, kind: KeyType, current: &Current) -> Result<(HostKey, bool)> {
    let pending = dir.join(PENDING_KEY_FILE);
    if pending.exists() {
        let key = HostKey::load(&pending)?;
        if key.spki_der() != current.key.spki_der() {
            tracing::info!("reusing the key of an earlier renewal attempt");
            return Ok((key, false));
        }
    }
    let key = HostKey::generate(kind)?;
    fsutil::write_atomic(&pending, key.pem().as_bytes(), KEY_MODE)?;
    Ok((key, true))
}

/// Reads key, certificate, chain and CA; the key must be the certificate's.
fn load_current(dir: &Path) -> Result<Current> {
    let read = |name: &str| -> Result<Vec<u8>> {
        std::fs::read(dir.join(name))
            .with_context(|| format!("reading {} (bootstrap first)", dir.join(name).display()))
    };
    let key_text = zeroize::Zeroizing::new(
        String::from_utf8(read(KEY_FILE)?).map_err(|_| anyhow!("{KEY_FILE} is not text"))?,
    );
    let key = HostKey::from_pem(&key_text)?;
    let chain =
        certs_from_pem(&read(CHAIN_FILE)?).with_context(|| format!("reading {CHAIN_FILE}"))?;
    let ca = CaCerts::load(dir)?;
    let (hostname, serial, not_before, not_after) = {
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0])
            .map_err(|e| anyhow!("{CHAIN_FILE}: the certificate does not parse: {e}"))?;
        if leaf.public_key().raw != key.spki_der().as_slice() {
            bail!("{KEY_FILE} is not the key of the certificate in {CHAIN_FILE}");
        }
        let hostname = subject_cn(&leaf)?;
        (
            hostname,
            hex::encode(leaf.raw_serial()),
            leaf.validity().not_before.timestamp(),
            leaf.validity().not_after.timestamp(),
        )
    };
    Ok(Current {
        key,
        chain,
        ca,
        hostname,
        serial,
        not_before,
        not_after,
    })
}

fn run_reload(cmd: &str) -> Result<(), Failure> {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Failure::new(exit::ERROR, anyhow!("--reload: cannot run sh: {e}")))?;
    if !out.status.success() {
        return Err(Failure::new(
            exit::ERROR,
            anyhow!(
                "the certificate was renewed, but --reload {cmd:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_parse_and_decide() {
        let day = 86_400;
        let pct: Threshold = "33%".parse().unwrap();
        assert_eq!(pct, Threshold::Percent(33));
        // 30-day certificate: due with 9.9 days left, not with 10.1.
        assert!(pct.due(0, 30 * day, 20 * day + day / 10));
        assert!(!pct.due(0, 30 * day, 19 * day));
        let left: Threshold = "10d".parse().unwrap();
        assert_eq!(left, Threshold::Left(Duration::from_secs(10 * day as u64)));
        assert!(left.due(0, 30 * day, 20 * day));
        assert!(!left.due(0, 30 * day, 20 * day - 1));
        assert!("100%".parse::<Threshold>().unwrap().due(0, 30 * day, 0));
        for bad in ["0%", "101%", "x%", "soon", ""] {
            assert!(bad.parse::<Threshold>().is_err(), "{bad}");
        }
        assert_eq!(pct.to_string(), "33%");
    }

    #[test]
    fn jitter_stays_inside_the_window_and_never_delays_an_expired_certificate() {
        let day = 86_400;
        let pct = Threshold::Percent(33);
        let secs = Duration::from_secs;
        // 30-day certificate at 33%: a 9.9-day window; a tenth is capped at an hour.
        assert_eq!(
            jitter_bound(Jitter::Default, pct, 0, 30 * day, 21 * day),
            DEFAULT_JITTER_CAP
        );
        // A 2-hour certificate at 50%: window 1 h, a tenth is 6 min.
        assert_eq!(
            jitter_bound(Jitter::Default, Threshold::Percent(50), 0, 7_200, 3_600),
            secs(360)
        );
        // A duration threshold is the window itself (capped by the lifetime).
        assert_eq!(
            jitter_bound(
                Jitter::Default,
                Threshold::Left(secs(1_000)),
                0,
                7_200,
                6_500
            ),
            secs(70),
            "a tenth of the 700 s left wins over a tenth of the window"
        );
        // Whatever the bound, never more than a tenth of the life left...
        assert_eq!(
            jitter_bound(
                Jitter::Max(secs(day as u64)),
                pct,
                0,
                30 * day,
                30 * day - 600
            ),
            secs(60)
        );
        assert_eq!(
            jitter_bound(Jitter::Max(secs(30)), pct, 0, 30 * day, 25 * day),
            secs(30)
        );
        // ...and nothing once expired, default or explicit.
        for j in [Jitter::Default, Jitter::Max(secs(3_600))] {
            assert_eq!(jitter_bound(j, pct, 0, 30 * day, 30 * day), Duration::ZERO);
            assert_eq!(jitter_bound(j, pct, 0, 30 * day, 31 * day), Duration::ZERO);
        }
        for _ in 0..100 {
            assert!(random_delay(secs(5)) <= secs(5));
        }
        assert_eq!(random_delay(Duration::ZERO), Duration::ZERO);
    }
}
