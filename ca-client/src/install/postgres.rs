//! PostgreSQL layout: `server.crt` (leaf + intermediate), `server.key`
//! (0600, to be owned by the server's user: `--owner postgres`; PostgreSQL
//! refuses a key it owns that others can read), `root.crt` for `ssl_ca_file`,
//! `root.crl` for `ssl_crl_file` when there is one, the
//! `postgresql-ssl.conf` snippet for `include_if_exists`, and
//! `pg_hba-ssl.conf` with the `hostssl` rule for client certificates.
//!
//! PostgreSQL has no configuration test. Its check is the reload itself
//! (SIGHUP to the postmaster from `PGDATA/postmaster.pid`, as `pg_ctl
//! reload` does) followed by a TLS handshake on the address from the same
//! file: a postmaster that could not load the new files logs "SSL
//! configuration was not reloaded" and keeps serving the old certificate,
//! which the handshake sees.

use super::generation::GenFile;
use super::material::{KeySet, Material};
use super::probe::Probe;
use super::{InstallOptions, Reload, Service, crl_file, gen_file, pid_from_file, reread_split};
use crate::fsutil::{KEY_MODE, PUBLIC_MODE};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;

pub const CERT: &str = "server.crt";
pub const KEY: &str = "server.key";
pub const ROOT: &str = "root.crt";
pub const CRL: &str = "root.crl";
pub const SNIPPET: &str = "postgresql-ssl.conf";
pub const HBA: &str = "pg_hba-ssl.conf";
/// The `hostssl` rule: a certificate from this CA whose CN is the user name.
pub const HBA_LINE: &str = "hostssl all all all scram-sha-256 clientcert=verify-full";

#[derive(Debug)]
pub struct Postgres;

impl Service for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn snippet_file(&self) -> &'static str {
        SNIPPET
    }

    fn snippet(&self, current: &str, m: &Material, _opts: &InstallOptions) -> String {
        let crl = if m.crl_pem.is_some() {
            format!("ssl_crl_file = '{current}/{CRL}'\n")
        } else {
            String::new()
        };
        format!(
            "# Written by `ca-client install postgres` for {host}.\n\
             # In postgresql.conf:  include_if_exists = '{current}/{SNIPPET}'\n\
             ssl = on\n\
             ssl_cert_file = '{current}/{CERT}'\n\
             ssl_key_file = '{current}/{KEY}'\n\
             ssl_ca_file = '{current}/{ROOT}'\n\
             {crl}\
             # In pg_hba.conf (also in {current}/{HBA}), before other host rules:\n\
             # {HBA_LINE}\n",
            host = m.leaf.hostname
        )
    }

    fn files(&self, m: &Material) -> Vec<GenFile> {
        let mut files = vec![
            gen_file(CERT, m.chain_pem(), PUBLIC_MODE),
            gen_file(KEY, m.key_pem.as_bytes(), KEY_MODE),
            gen_file(ROOT, m.root_pem(), PUBLIC_MODE),
            gen_file(
                HBA,
                format!(
                    "# Client certificates from this CA whose CN equals the user name (PostgreSQL >= 12).\n{HBA_LINE}\n"
                ),
                PUBLIC_MODE,
            ),
        ];
        files.extend(crl_file(m, CRL));
        files
    }

    fn reread(&self, dir: &Path) -> Result<KeySet> {
        reread_split(dir, KEY, CERT, ROOT)
    }

    fn check_command(&self, _opts: &InstallOptions) -> Option<Command> {
        None
    }

    fn default_pid_file(&self) -> &'static str {
        "postmaster.pid"
    }

    fn running_pid(&self, opts: &InstallOptions) -> Result<Option<i32>> {
        pid_from_file(&postmaster_pid(opts)?)
    }

    fn reload_signal(&self) -> i32 {
        libc::SIGHUP
    }

    fn probe(&self, opts: &InstallOptions) -> Result<Option<Probe>> {
        if let Some(addr) = &opts.probe {
            return Ok(Some(Probe {
                addr: addr.clone(),
                postgres: true,
            }));
        }
        let path = postmaster_pid(opts)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(Probe {
            addr: probe_addr(&text).with_context(|| format!("reading {}", path.display()))?,
            postgres: true,
        }))
    }
}

fn postmaster_pid(opts: &InstallOptions) -> Result<std::path::PathBuf> {
    match (&opts.pgdata, &opts.reload) {
        (Some(d), _) => Ok(d.join("postmaster.pid")),
        (None, Reload::Never) => bail!("no --pgdata"),
        (None, _) => bail!(
            "postgres needs --pgdata (the data directory holding postmaster.pid) to reload and confirm; or pass --no-reload"
        ),
    }
}

/// `host:port` from postmaster.pid: line 4 is the port, line 6 the first
/// listen address (`*` and `0.0.0.0` mean every address: use loopback).
fn probe_addr(postmaster_pid: &str) -> Result<String> {
    let lines: Vec<&str> = postmaster_pid.lines().collect();
    let port: u16 = lines
        .get(3)
        .and_then(|l| l.trim().parse().ok())
        .context("no port on line 4")?;
    let listen = lines.get(5).map(|l| l.trim()).unwrap_or("");
    let host = match listen {
        "" => bail!(
            "PostgreSQL listens on no TCP address (listen_addresses is empty), so it serves no TLS; pass --probe HOST:PORT"
        ),
        "*" | "0.0.0.0" | "localhost" => "127.0.0.1".to_owned(),
        "::" => "[::1]".to_owned(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_owned(),
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_address_from_postmaster_pid() {
        let pid = "4242\n/var/lib/postgresql/15/main\n1700000000\n5433\n/var/run/postgresql\n*\n  1234  5678\nready   \n";
        assert_eq!(probe_addr(pid).unwrap(), "127.0.0.1:5433");
        let pid = pid.replace("\n*\n", "\n10.0.0.5\n");
        assert_eq!(probe_addr(&pid).unwrap(), "10.0.0.5:5433");
        let pid = pid.replace("\n10.0.0.5\n", "\n::1\n");
        assert_eq!(probe_addr(&pid).unwrap(), "[::1]:5433");
        let pid = pid.replace("\n::1\n", "\n\n");
        assert!(probe_addr(&pid).is_err());
    }
}
