//! `ca-server intermediate rotate`: a new intermediate key and certificate
//! under the same root, so the fleet keeps its trust anchor (every host
//! trusts the root's fingerprint, not the intermediate) and the store keeps
//! its owner (it records the root's fingerprint, `store::ownership`).
//!
//! The old intermediate's certificate and key move to `retired/` in the data
//! dir (named by serial): certificates it signed stay valid until they expire
//! or are renewed. Servers pick the new intermediate up at their next start.

use crate::clock::Clock;
use crate::pki::ca::{self, BACKDATE, CaKey, CaPaths};
use anyhow::{Context, Result, anyhow, bail};
use proto::fsutil::{self, KEY_MODE, PUBLIC_MODE};
use rcgen::Issuer;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shortest intermediate lifetime accepted (drills and tests use short ones).
pub const MIN_VALIDITY: Duration = Duration::from_secs(3600);

/// What a rotation made.
#[derive(Debug, serde::Serialize)]
pub struct Rotated {
    pub serial: String,
    pub subject: String,
    pub not_after: String,
    pub root_fingerprint: String,
    pub retired_cert: PathBuf,
    pub retired_key: PathBuf,
}

/// Rotates the intermediate in `data_dir`, signing with `root_key` (default:
/// the data dir's `root.key`), and prints what it did.
pub fn run(
    data_dir: &Path,
    root_key: Option<&Path>,
    validity: Duration,
    json: bool,
    clock: &dyn Clock,
    root_crl_url: Option<&str>,
) -> Result<()> {
    let out = rotate_with(
        &CaPaths::new(data_dir),
        root_key,
        validity,
        clock.now(),
        root_crl_url,
    )?;
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "new intermediate serial={} subject={:?} not_after={} root={}",
            out.serial, out.subject, out.not_after, out.root_fingerprint
        );
        eprintln!(
            "the old intermediate is kept as {} and {}.\n\
             Next: copy intermediate.crt and intermediate.key to every replica's data dir and \
             restart each `ca-server serve` (docs/runbooks.md#rotate-the-intermediate).",
            out.retired_cert.display(),
            out.retired_key.display()
        );
    }
    Ok(())
}

/// The rotation itself.
pub fn rotate(
    paths: &CaPaths,
    root_key: Option<&Path>,
    validity: Duration,
    now: i64,
) -> Result<Rotated> {
    rotate_with(paths, root_key, validity, now, None)
}

/// [`rotate`], with the root CRL's URL as the new intermediate's CRL
/// distribution point (`None`: the old intermediate's, if it had one).
pub fn rotate_with(
    paths: &CaPaths,
    root_key: Option<&Path>,
    validity: Duration,
    now: i64,
    root_crl_url: Option<&str>,
) -> Result<Rotated> {
    if validity < MIN_VALIDITY {
        bail!("--validity must be at least 1h");
    }
    let _lock = paths.lock()?;
    if !paths.is_initialised() {
        bail!(
            "{} holds no CA (root.crt, intermediate.crt, intermediate.key); run `ca-server init` first",
            paths.dir.display()
        );
    }
    let root_key_path = root_key.unwrap_or(&paths.root_key);
    if !root_key_path.exists() {
        bail!(
            "the root key is not at {} (kept offline?): mount it and pass --root-key FILE",
            root_key_path.display()
        );
    }
    let (root_der, root_key) = ca::load_ca_pair(&paths.root_cert, root_key_path)?;
    let old_der = ca::read_cert_der(&paths.intermediate_cert)?;
    let (_, old) = x509_parser::parse_x509_certificate(&old_der)
        .map_err(|e| anyhow!("parsing {}: {e}", paths.intermediate_cert.display()))?;
    let (_, root) = x509_parser::parse_x509_certificate(&root_der)
        .map_err(|e| anyhow!("parsing {}: {e}", paths.root_cert.display()))?;
    // Same subject as before, so logs and dashboards keep their name for it.
    let cn = old
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("Intermediate CA")
        .to_owned();
    let old_serial = hex::encode(old.raw_serial());
    let old_cdp: Vec<String> = old
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::CRLDistributionPoints(points) => {
                Some(points.iter().flat_map(|p| {
                    match &p.distribution_point {
                        Some(x509_parser::extensions::DistributionPointName::FullName(names)) => {
                            names
                                .iter()
                                .filter_map(|n| match n {
                                    x509_parser::extensions::GeneralName::URI(u) => {
                                        Some((*u).to_owned())
                                    }
                                    _ => None,
                                })
                                .collect::<Vec<_>>()
                        }
                        _ => Vec::new(),
                    }
                }))
            }
            _ => None,
        })
        .flatten()
        .collect();

    let not_before = now - BACKDATE.as_secs() as i64;
    let root_not_after = root.validity().not_after.timestamp();
    let not_after = (not_before + validity.as_secs() as i64).min(root_not_after);
    if not_after <= now + MIN_VALIDITY.as_secs() as i64 {
        bail!("the root expires too soon to sign a new intermediate: rotate the root instead");
    }
    let issuer = Issuer::from_ca_cert_der(&root_der.clone().into(), root_key)
        .context("reading the root as an issuer")?;
    let key = CaKey::generate()?;
    let mut params = ca::ca_params(
        &cn,
        not_before,
        Duration::from_secs((not_after - not_before) as u64),
        Some(0),
    )?;
    params.use_authority_key_identifier_extension = true;
    let cdp = match root_crl_url {
        Some(url) => vec![url.to_owned()],
        None => old_cdp,
    };
    if !cdp.is_empty() {
        params.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: cdp }];
    }
    let cert = params.signed_by(&key, &issuer)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.der())
        .map_err(|e| anyhow!("parsing the new intermediate: {e}"))?;
    let serial = hex::encode(parsed.raw_serial());

    // Keep the old pair first: a crash below leaves it retrievable.
    let retired = paths.dir.join("retired");
    fsutil::private_key_dir(&retired)?;
    let retired_cert = retired.join(format!("intermediate-{old_serial}.crt"));
    let retired_key = retired.join(format!("intermediate-{old_serial}.key"));
    let old_key = zeroize::Zeroizing::new(
        std::fs::read(&paths.intermediate_key)
            .with_context(|| format!("reading {}", paths.intermediate_key.display()))?,
    );
    fsutil::write_atomic(&retired_key, &old_key, KEY_MODE)?;
    fsutil::write_atomic(
        &retired_cert,
        &std::fs::read(&paths.intermediate_cert)?,
        PUBLIC_MODE,
    )?;
    // Key then certificate, as `init` does.
    fsutil::write_atomic(&paths.intermediate_key, key.pem().as_bytes(), KEY_MODE)?;
    fsutil::write_atomic(&paths.intermediate_cert, cert.pem().as_bytes(), PUBLIC_MODE)?;
    // Prove the result loads the way `serve` will load it.
    ca::Signer::load(paths, None).context("loading the new intermediate")?;
    Ok(Rotated {
        serial,
        subject: format!("CN={cn}"),
        not_after: proto::timefmt::rfc3339(not_after),
        root_fingerprint: ca::fingerprint(&root_der),
        retired_cert,
        retired_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_root_and_retires_the_old_pair() {
        let dir = tempfile::tempdir().unwrap();
        let paths = CaPaths::new(&dir.path().join("ca"));
        let now = 1_800_000_000;
        let fp = ca::init(&paths, "Test", now).unwrap().fingerprint;
        let before = ca::Signer::load(&paths, None).unwrap();
        let out = rotate(&paths, None, Duration::from_secs(10 * 86_400), now).unwrap();
        let after = ca::Signer::load(&paths, None).unwrap();
        assert_eq!(out.root_fingerprint, fp);
        assert_eq!(after.fingerprint, fp);
        assert_ne!(after.intermediate_der, before.intermediate_der);
        assert_eq!(after.intermediate_not_after(), now - 300 + 10 * 86_400);
        assert_eq!(
            ca::read_cert_der(&out.retired_cert).unwrap(),
            before.intermediate_der
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out.retired_key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Without the root key, nothing changes.
        std::fs::remove_file(&paths.root_key).unwrap();
        let err = rotate(&paths, None, Duration::from_secs(86_400), now).unwrap_err();
        assert!(err.to_string().contains("--root-key"), "{err}");
    }
}
