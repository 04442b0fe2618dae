//! The spawner bundle: one small JSON file with everything a new host needs
//! to bootstrap (`ca-client bootstrap --bundle FILE`), written by
//! `ca-server psk add HOST --bundle FILE` (locally or remotely):
//!
//! ```json
//! {"version":1,"server":"https://ca.example.internal:8443",
//!  "fingerprint":"sha256:...","hostname":"web1.example.internal",
//!  "psk":"...","sans":["10.0.0.5"],"expires_at":"2026-11-23T03:28:27Z"}
//! ```
//!
//! It holds the PSK, so it is written 0600 (atomically) and deleted by
//! `bootstrap` once the certificate is installed. `sans` are the extra
//! names the spawner allowed; bootstrap requests them. Reading checks every
//! field before anything is sent: a version this client knows, an https
//! URL, a SHA-256 fingerprint, a valid hostname and a PSK.

use crate::fsutil::{self, KEY_MODE};
use anyhow::{Context, Result, bail};
use policy::Psk;
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// Room for a bundle's JSON: every field is bounded (hostname, names, a
/// PSK of at most a few hundred bytes), far below this.
const BUNDLE_CAPACITY: usize = 64 * 1024;

/// A spawner bundle. `Debug` shows the PSK as `Psk(<redacted>)`.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The CA's URL, as hosts reach it.
    pub server: String,
    /// The root's fingerprint, `sha256:<hex>`.
    pub fingerprint: String,
    pub hostname: String,
    pub psk: Psk,
    /// Extra names the PSK allows, requested by bootstrap.
    pub sans: Vec<String>,
    /// When the PSK expires (RFC 3339), for the operator.
    pub expires_at: String,
}

/// The file's shape (no `Debug`: it holds the PSK as a plain string).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleFile {
    version: u32,
    server: String,
    fingerprint: String,
    hostname: String,
    psk: String,
    #[serde(default)]
    sans: Vec<String>,
    expires_at: String,
}

impl Drop for BundleFile {
    fn drop(&mut self) {
        self.psk.zeroize();
    }
}

impl Bundle {
    /// Writes the bundle to `path`, mode 0600, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let file = BundleFile {
            version: VERSION,
            server: self.server.clone(),
            fingerprint: self.fingerprint.clone(),
            hostname: self.hostname.clone(),
            psk: self.psk.expose().to_owned(),
            sans: self.sans.clone(),
            expires_at: self.expires_at.clone(),
        };
        // Sized up front so the JSON holding the PSK is never reallocated
        // (a reallocation would leave an unwiped copy behind).
        let mut text = Zeroizing::new(Vec::with_capacity(BUNDLE_CAPACITY));
        serde_json::to_writer(&mut *text, &file)?;
        if text.len() >= BUNDLE_CAPACITY {
            bail!("the bundle would be larger than {BUNDLE_CAPACITY} bytes");
        }
        text.push(b'\n');
        fsutil::write_atomic(path, &text, KEY_MODE)
            .with_context(|| format!("writing the bundle {}", path.display()))
    }

    /// Reads and checks a bundle.
    pub fn read(path: &Path) -> Result<Bundle> {
        let text = Zeroizing::new(
            std::fs::read(path)
                .with_context(|| format!("reading the bundle {}", path.display()))?,
        );
        // serde's messages can quote a value; the PSK is one, so say only where.
        let mut file: BundleFile = serde_json::from_slice(&text).map_err(|e| {
            anyhow::anyhow!(
                "the bundle {} is not a bundle (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            )
        })?;
        let shown = path.display();
        if file.version != VERSION {
            bail!(
                "the bundle {shown} has version {}; this ca-client reads version {VERSION}",
                file.version
            );
        }
        if !file.server.starts_with("https://") {
            bail!("the bundle {shown}: the server URL must start with https://");
        }
        crate::trust::parse_fingerprint(&file.fingerprint)
            .with_context(|| format!("the bundle {shown}: fingerprint"))?;
        policy::hostname::validate(&file.hostname)
            .with_context(|| format!("the bundle {shown}: hostname"))?;
        let psk = Psk::new(std::mem::take(&mut file.psk))
            .map_err(|e| anyhow::anyhow!("the bundle {shown}: the PSK: {e}"))?;
        Ok(Bundle {
            server: std::mem::take(&mut file.server),
            fingerprint: std::mem::take(&mut file.fingerprint),
            hostname: std::mem::take(&mut file.hostname),
            psk,
            sans: std::mem::take(&mut file.sans),
            expires_at: std::mem::take(&mut file.expires_at),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> Bundle {
        Bundle {
            server: "https://ca.example.internal:8443".into(),
            fingerprint: format!("sha256:{}", "ab".repeat(32)),
            hostname: "web1.example.internal".into(),
            psk: Psk::from_random(&[7; 32]),
            sans: vec!["10.0.0.5".into()],
            expires_at: "2026-11-23T03:28:27Z".into(),
        }
    }

    #[test]
    fn debug_output_never_shows_the_psk() {
        let b = sample();
        let secret = b.psk.expose().to_owned();
        for shown in [format!("{b:?}"), format!("{b:#?}"), format!("{:?}", b.psk)] {
            assert!(!shown.contains(&secret), "{shown}");
            assert!(shown.contains("Psk(<redacted>)"), "{shown}");
        }
    }

    #[test]
    fn a_bundle_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        sample().write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let back = Bundle::read(&path).unwrap();
        assert_eq!(back.server, "https://ca.example.internal:8443");
        assert_eq!(back.psk, sample().psk);
        assert_eq!(back.sans, vec!["10.0.0.5".to_string()]);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["hostname"], "web1.example.internal");
    }

    #[test]
    fn broken_bundles_are_refused_without_quoting_the_psk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.json");
        let good = serde_json::json!({
            "version": 1, "server": "https://ca:8443", "fingerprint": format!("sha256:{}", "00".repeat(32)),
            "hostname": "h.example", "psk": "s3cret-psk-value-0123456789", "sans": [], "expires_at": "x",
        });
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"version": 2}), "not a bundle"),
            (
                {
                    let mut v = good.clone();
                    v["version"] = 2.into();
                    v
                },
                "version 2",
            ),
            (
                {
                    let mut v = good.clone();
                    v["server"] = "http://ca".into();
                    v
                },
                "https://",
            ),
            (
                {
                    let mut v = good.clone();
                    v["fingerprint"] = "md5:00".into();
                    v
                },
                "fingerprint",
            ),
            (
                {
                    let mut v = good.clone();
                    v["hostname"] = "Bad Host".into();
                    v
                },
                "hostname",
            ),
            (
                {
                    let mut v = good.clone();
                    v["psk"] = "".into();
                    v
                },
                "PSK",
            ),
            (
                {
                    let mut v = good.clone();
                    v["psk"] = 12.into();
                    v
                },
                "not a bundle",
            ),
            (
                {
                    let mut v = good.clone();
                    v["extra"] = 1.into();
                    v
                },
                "not a bundle",
            ),
        ];
        for (value, expected) in cases {
            std::fs::write(&path, value.to_string()).unwrap();
            let err = format!("{:#}", Bundle::read(&path).unwrap_err());
            assert!(err.contains(expected), "{value}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        std::fs::write(&path, good.to_string()).unwrap();
        Bundle::read(&path).unwrap();
    }
}
