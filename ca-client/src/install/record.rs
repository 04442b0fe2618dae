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

/// The record's file name in the bootstrap directory.
pub const RECORD_FILE: &str = "installs.json";

/// The flags of `ca-client install` besides the service and `--dir`: what
/// is recorded, and turned into [`InstallOptions`] now or on a later redo.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, serde::Serialize, serde::Deserialize)]
pub struct InstallFlags {
    /// Directory for the service's files; they live under DEST/current/.
    #[arg(long)]
    pub dest: PathBuf,
    /// Owner of the installed files, USER[:GROUP] (e.g. postgres).
    #[arg(long)]
    pub owner: Option<String>,
    /// Reload with this command (sh -c) instead of signalling the pid from the pid file.
    #[arg(long, value_name = "CMD", conflicts_with = "no_reload")]
    pub reload: Option<String>,
    /// Do not reload the service (for PostgreSQL: nor confirm).
    #[arg(long)]
    pub no_reload: bool,
    /// Run this configuration check (sh -c) instead of `nginx -t` / `haproxy -c -f CONFIG`.
    #[arg(long, value_name = "CMD")]
    pub check: Option<String>,
    /// Main configuration file for the default check: nginx.conf (default:
    /// nginx's own), haproxy.cfg (default /etc/haproxy/haproxy.cfg).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// nginx/HAProxy pid file: the service is running if it names a live
    /// process, which gets the reload signal (default /run/nginx.pid, /run/haproxy.pid).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// PostgreSQL data directory (its postmaster.pid gives the pid, port and address).
    #[arg(long, value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// After reloading, connect here (HOST:PORT) until the new certificate is
    /// served; roll back if it is not. PostgreSQL: default from postmaster.pid.
    #[arg(long, value_name = "HOST:PORT")]
    pub probe: Option<String>,
    /// How long to wait for the service to serve the new certificate.
    #[arg(long, default_value = "30s")]
    #[serde(with = "as_text")]
    pub probe_timeout: humantime::Duration,
    /// Client-certificate verification in the nginx/HAProxy snippet.
    #[arg(long, value_enum, default_value = "none")]
    pub client_auth: ClientAuth,
    /// HAProxy: the bind address in the snippet.
    #[arg(long, default_value = ":443")]
    pub bind: String,
    /// HAProxy: hand a new certificate to the running process through its
    /// runtime API on this `stats socket` (`level admin`) instead of
    /// reloading it; a changed CRL still reloads.
    #[arg(long, value_name = "PATH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy_socket: Option<PathBuf>,
}

impl InstallFlags {
    /// The options of an install of `service` from `dir`.
    pub fn options(&self, service: ServiceKind, dir: &Path) -> Result<InstallOptions> {
        Ok(InstallOptions {
            service,
            dir: dir.to_path_buf(),
            dest: self.dest.clone(),
            owner: self
                .owner
                .as_deref()
                .map(super::sys::Owner::parse)
                .transpose()?,
            reload: Reload::from_flags(self.reload.as_deref(), self.no_reload),
            check: self.check.clone(),
            config: self.config.clone(),
            pid_file: self.pid_file.clone(),
            pgdata: self.pgdata.clone(),
            probe: self.probe.clone(),
            probe_timeout: self.probe_timeout.into(),
            client_auth: self.client_auth,
            bind: self.bind.clone(),
            haproxy_socket: self.haproxy_socket.clone(),
        })
    }
}

/// A duration as humantime text in the record ("30s").
mod as_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &humantime::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<humantime::Duration, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One install, as its flags were given.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InstallRecord {
    pub service: ServiceKind,
    #[serde(flatten)]
    pub flags: InstallFlags,
}

impl InstallRecord {
    /// The CRL file as the service reads it (under `DEST/current`), read
    /// through DEST's descriptor, never following a planted link.
    fn installed_crl(&self) -> Option<Vec<u8>> {
        let name = match self.service {
            ServiceKind::Nginx => nginx::CRL,
            ServiceKind::Haproxy => haproxy::CRL,
            ServiceKind::Postgres => postgres::CRL,
        };
        super::generation::read_live_file(&self.flags.dest, name).map(|b| b.to_vec())
    }
}

/// Adds (or replaces, for the same service and destination) the record of
/// a successful install of `service` from `dir` with `flags`.
pub fn remember(service: ServiceKind, dir: &Path, flags: &InstallFlags) -> Result<()> {
    let mut flags = flags.clone();
    flags.dest = std::path::absolute(&flags.dest)?;
    let record = InstallRecord { service, flags };
    let mut records = recorded(dir)?;
    records.retain(|r| !(r.service == record.service && r.flags.dest == record.flags.dest));
    records.push(record);
    let json = serde_json::to_vec_pretty(&records).expect("records serialise");
    fsutil::write_atomic(&dir.join(RECORD_FILE), &json, KEY_MODE)
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

impl std::fmt::Display for Reinstalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.service.name(),
            self.dest.display(),
            self.outcome
        )
    }
}

/// Redoes the recorded installs of `dir` for `services`. Every service is
/// tried; if any fails, the failure (exit 7 when a service refused the new
/// files and was rolled back) lists what happened to each.
pub async fn reinstall(
    dir: &Path,
    services: &[ServiceKind],
    only: Only,
) -> Result<Vec<Reinstalled>, Failure> {
    reinstall_with(dir, services, only, None).await
}

/// [`reinstall`], with `haproxy_socket` (when given) in place of the
/// recorded `--haproxy-socket` of HAProxy installs (`renew --haproxy-socket`).
pub async fn reinstall_with(
    dir: &Path,
    services: &[ServiceKind],
    only: Only,
    haproxy_socket: Option<&Path>,
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
        if only == Only::CrlChanged && record.installed_crl() == crl {
            done.push(Reinstalled {
                service: record.service,
                dest: record.flags.dest.clone(),
                outcome: "CRL already installed".into(),
            });
            continue;
        }
        let result = match record.flags.options(record.service, dir) {
            Ok(mut opts) => {
                if let (ServiceKind::Haproxy, Some(socket)) = (record.service, haproxy_socket) {
                    opts.haproxy_socket = Some(socket.to_path_buf());
                }
                install(&opts).await.map_err(Failure::from)
            }
            Err(e) => Err(Failure::new(exit::ERROR, e)),
        };
        match result {
            Ok(out) => done.push(Reinstalled {
                service: record.service,
                dest: record.flags.dest.clone(),
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
                    record.flags.dest.display(),
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
            let ok: String = done.iter().map(|d| format!("\n{d}")).collect();
            Err(Failure::new(f.code, anyhow!("{:#}{ok}", f.error)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn flags(dir: &Path, dest: &str, reload: Option<&str>, no_reload: bool) -> InstallFlags {
        InstallFlags {
            dest: dir.join(dest),
            owner: Some("0:0".into()),
            reload: reload.map(str::to_owned),
            no_reload,
            check: Some("true".into()),
            config: Some(dir.join("nginx.conf")),
            pid_file: None,
            pgdata: None,
            probe: Some("127.0.0.1:8443".into()),
            probe_timeout: "7s".parse().unwrap(),
            client_auth: ClientAuth::Required,
            bind: ":443".into(),
            haproxy_socket: None,
        }
    }

    #[test]
    fn installs_are_remembered_per_service_and_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(recorded(dir).unwrap().is_empty());
        let a = flags(dir, "a", None, false);
        let b = flags(dir, "b", Some("reload-it"), false);
        remember(ServiceKind::Nginx, dir, &a).unwrap();
        remember(ServiceKind::Haproxy, dir, &b).unwrap();
        // The same service and destination again replaces the record.
        let a2 = flags(dir, "a", None, true);
        remember(ServiceKind::Nginx, dir, &a2).unwrap();
        let got = recorded(dir).unwrap();
        assert_eq!(
            got,
            vec![
                InstallRecord {
                    service: ServiceKind::Haproxy,
                    flags: b.clone()
                },
                InstallRecord {
                    service: ServiceKind::Nginx,
                    flags: a2.clone()
                },
            ]
        );
        let opts = got[0].flags.options(got[0].service, dir).unwrap();
        assert_eq!(opts.reload, Reload::Command("reload-it".into()));
        assert_eq!(opts.probe_timeout, std::time::Duration::from_secs(7));
        assert_eq!(
            got[1]
                .flags
                .options(ServiceKind::Nginx, dir)
                .unwrap()
                .reload,
            Reload::Never
        );
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
