//! The installs made from a bootstrap directory, remembered in
//! `DIR/installs.json` by every successful `ca-client install`, so that
//! `ca-client renew --install nginx,...` and `ca-client crl --install ...`
//! can redo them later with the same destination and flags, through the
//! same `install()` (check, reload, probe, rollback).
//!
//! The record holds commands (`--reload`, `--check`) that later runs
//! execute, so it is written 0600 and read only if it belongs to the
//! running user and nobody else can write it.

use super::{ClientAuth, InstallOptions, Reload, ServiceKind, haproxy, install, nginx, postgres};
use crate::bootstrap::exit;
use crate::failure::Failure;
use crate::fsutil::{self, KEY_MODE};
use crate::install::material::CRL_FILE;
use anyhow::{Context, Result, anyhow, bail};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The record's file name in the bootstrap directory.
pub const RECORD_FILE: &str = "installs.json";

/// One install, as its flags were given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallRecord {
    pub service: ServiceKind,
    /// Absolute.
    pub dest: PathBuf,
    /// `uid:gid`, resolved when the install ran.
    pub owner: Option<String>,
    /// `--reload CMD`.
    pub reload: Option<String>,
    pub no_reload: bool,
    pub check: Option<String>,
    pub config: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    pub probe: Option<String>,
    pub probe_timeout_secs: u64,
    pub client_auth: ClientAuth,
    pub bind: String,
}

impl InstallRecord {
    fn of(opts: &InstallOptions) -> Result<InstallRecord> {
        let (reload, no_reload) = match &opts.reload {
            Reload::Signal => (None, false),
            Reload::Command(cmd) => (Some(cmd.clone()), false),
            Reload::Never => (None, true),
        };
        Ok(InstallRecord {
            service: opts.service,
            dest: std::path::absolute(&opts.dest)?,
            owner: opts.owner.map(|o| format!("{}:{}", o.uid, o.gid)),
            reload,
            no_reload,
            check: opts.check.clone(),
            config: opts.config.clone(),
            pid_file: opts.pid_file.clone(),
            pgdata: opts.pgdata.clone(),
            probe: opts.probe.clone(),
            probe_timeout_secs: opts.probe_timeout.as_secs().max(1),
            client_auth: opts.client_auth,
            bind: opts.bind.clone(),
        })
    }

    /// The install options to redo this install from `dir`.
    pub fn options(&self, dir: &Path) -> Result<InstallOptions> {
        Ok(InstallOptions {
            service: self.service,
            dir: dir.to_path_buf(),
            dest: self.dest.clone(),
            owner: self
                .owner
                .as_deref()
                .map(super::sys::Owner::parse)
                .transpose()?,
            reload: match (&self.reload, self.no_reload) {
                (_, true) => Reload::Never,
                (Some(cmd), false) => Reload::Command(cmd.clone()),
                (None, false) => Reload::Signal,
            },
            check: self.check.clone(),
            config: self.config.clone(),
            pid_file: self.pid_file.clone(),
            pgdata: self.pgdata.clone(),
            probe: self.probe.clone(),
            probe_timeout: Duration::from_secs(self.probe_timeout_secs),
            client_auth: self.client_auth,
            bind: self.bind.clone(),
        })
    }

    /// The CRL file as the service reads it (under `DEST/current`).
    fn installed_crl(&self) -> PathBuf {
        let name = match self.service {
            ServiceKind::Nginx => nginx::CRL,
            ServiceKind::Haproxy => haproxy::CRL,
            ServiceKind::Postgres => postgres::CRL,
        };
        self.dest.join(super::generation::CURRENT).join(name)
    }
}

/// Adds (or replaces, for the same service and destination) the record of
/// a successful install.
pub fn remember(opts: &InstallOptions) -> Result<()> {
    let record = InstallRecord::of(opts)?;
    let mut records = recorded(&opts.dir)?;
    records.retain(|r| !(r.service == record.service && r.dest == record.dest));
    records.push(record);
    let json = serde_json::to_vec_pretty(&records).expect("records serialise");
    fsutil::write_atomic(&opts.dir.join(RECORD_FILE), &json, KEY_MODE)
}

/// The recorded installs of `dir` (none if there is no record).
pub fn recorded(dir: &Path) -> Result<Vec<InstallRecord>> {
    let path = dir.join(RECORD_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.uid() != super::sys::effective_uid() || meta.mode() & 0o022 != 0 {
        bail!(
            "{} must belong to this user and be writable by nobody else (it holds commands to run)",
            path.display()
        );
    }
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Which recorded installs to redo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// All of them (a new certificate).
    All,
    /// Those whose installed CRL differs from the directory's.
    CrlChanged,
}

/// One redone (or skipped) install.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reinstalled {
    pub service: ServiceKind,
    pub dest: PathBuf,
    /// What happened, as a line for the operator.
    pub outcome: String,
}

/// Redoes the recorded installs of `dir` for `services`. Every service is
/// tried; if any fails, the failure (exit 7 when a service refused the new
/// files and was rolled back) lists what happened to each.
pub async fn reinstall(
    dir: &Path,
    services: &[ServiceKind],
    only: Only,
) -> Result<Vec<Reinstalled>, Failure> {
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let records = recorded(dir)?;
    for service in services {
        if !records.iter().any(|r| r.service == *service) {
            return Err(Failure::new(
                exit::USAGE,
                anyhow!(
                    "no {} install is recorded for {}; run `ca-client install {} --dir {} --dest DEST ...` once",
                    service.name(),
                    dir.display(),
                    service.name(),
                    dir.display()
                ),
            ));
        }
    }
    let crl = std::fs::read(dir.join(CRL_FILE)).ok();
    let mut done = Vec::new();
    let mut failed: Option<Failure> = None;
    for record in records.iter().filter(|r| services.contains(&r.service)) {
        if only == Only::CrlChanged && std::fs::read(record.installed_crl()).ok() == crl {
            done.push(Reinstalled {
                service: record.service,
                dest: record.dest.clone(),
                outcome: "CRL already installed".into(),
            });
            continue;
        }
        let result = match record.options(dir) {
            Ok(opts) => install(&opts).await.map_err(Failure::from),
            Err(e) => Err(Failure::new(exit::ERROR, e)),
        };
        match result {
            Ok(out) => done.push(Reinstalled {
                service: record.service,
                dest: record.dest.clone(),
                outcome: format!(
                    "installed serial={} ({}{})",
                    out.leaf.serial,
                    out.reload,
                    if out.confirmed {
                        ", new certificate served"
                    } else {
                        ""
                    }
                ),
            }),
            Err(e) => {
                let line = format!(
                    "{} at {}: {:#}",
                    record.service.name(),
                    record.dest.display(),
                    e.error
                );
                failed = Some(match failed {
                    // A rollback (7) outranks a plain error (1).
                    Some(prev) => {
                        Failure::new(prev.code.max(e.code), anyhow!("{:#}\n{line}", prev.error))
                    }
                    None => Failure::new(e.code, anyhow!("{line}")),
                });
            }
        }
    }
    match failed {
        None => Ok(done),
        Some(f) => {
            let ok: String = done
                .iter()
                .map(|d| {
                    format!(
                        "\n{} at {}: {}",
                        d.service.name(),
                        d.dest.display(),
                        d.outcome
                    )
                })
                .collect();
            Err(Failure::new(f.code, anyhow!("{:#}{ok}", f.error)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn options(dir: &Path, service: ServiceKind, dest: &str, reload: Reload) -> InstallOptions {
        InstallOptions {
            service,
            dir: dir.to_path_buf(),
            dest: dir.join(dest),
            owner: Some(super::super::sys::Owner { uid: 0, gid: 0 }),
            reload,
            check: Some("true".into()),
            config: Some(dir.join("nginx.conf")),
            pid_file: None,
            pgdata: None,
            probe: Some("127.0.0.1:8443".into()),
            probe_timeout: Duration::from_secs(7),
            client_auth: ClientAuth::Required,
            bind: ":443".into(),
        }
    }

    #[test]
    fn installs_are_remembered_per_service_and_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(recorded(dir).unwrap().is_empty());
        let a = options(dir, ServiceKind::Nginx, "a", Reload::Signal);
        let b = options(
            dir,
            ServiceKind::Haproxy,
            "b",
            Reload::Command("reload-it".into()),
        );
        remember(&a).unwrap();
        remember(&b).unwrap();
        // The same service and destination again replaces the record.
        let a2 = options(dir, ServiceKind::Nginx, "a", Reload::Never);
        remember(&a2).unwrap();
        let got = recorded(dir).unwrap();
        assert_eq!(got.len(), 2);
        for (record, want) in got.iter().zip([&b, &a2]) {
            let back = record.options(dir).unwrap();
            assert_eq!(back.service, want.service);
            assert_eq!(back.dest, want.dest);
            assert_eq!(back.reload, want.reload);
            assert_eq!(back.owner, want.owner);
            assert_eq!(back.probe_timeout, want.probe_timeout);
            assert_eq!(back.client_auth, want.client_auth);
        }
        let path = dir.join(RECORD_FILE);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Writable by others: its commands are not run.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        let err = recorded(dir).unwrap_err();
        assert!(
            format!("{err:#}").contains("writable by nobody else"),
            "{err:#}"
        );
    }
}
