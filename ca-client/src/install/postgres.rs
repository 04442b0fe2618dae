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
use super::sys::RunningPid;
use super::{InstallOptions, PID_FILE_LIMIT, Reload, Service, crl_file, gen_file, reread_split};
use crate::dirfd::DirFd;
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

    fn reread(&self, dir: &DirFd) -> Result<KeySet> {
        reread_split(dir, KEY, CERT, ROOT)
    }

    fn check_command(&self, _opts: &InstallOptions) -> Option<Command> {
        None
    }

    fn default_pid_file(&self) -> &'static str {
        "postmaster.pid"
    }

    fn running_pid(&self, opts: &InstallOptions) -> Result<Option<RunningPid>> {
        let Some((text, uid)) = read_postmaster_pid(opts)? else {
            return Ok(None);
        };
        let path = postmaster_pid(opts)?;
        let first = String::from_utf8_lossy(&text)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        if first.is_empty() {
            return Ok(None);
        }
        let pid: i32 = first
            .parse()
            .with_context(|| format!("{} does not start with a pid", path.display()))?;
        Ok(super::sys::process_alive(pid).then_some(RunningPid {
            pid,
            uid,
            source: path,
        }))
    }

    /// The postmaster: `/usr/lib/postgresql/VERSION/bin/postgres`.
    fn exe_ok(&self, exe: &Path) -> bool {
        let bin = exe.parent();
        exe.file_name().is_some_and(|n| n == "postgres")
            && bin.and_then(Path::file_name).is_some_and(|n| n == "bin")
            && bin
                .and_then(Path::parent)
                .and_then(Path::parent)
                .is_some_and(|p| p == Path::new("/usr/lib/postgresql"))
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
        let (text, _) = read_postmaster_pid(opts)?
            .with_context(|| format!("{} disappeared", path.display()))?;
        // Written by the postgres account: the address is only used if it
        // is one of this host's own.
        let addr = probe_addr(&String::from_utf8_lossy(&text))
            .and_then(|a| local_only(&a))
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(Probe {
            addr,
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

/// `PGDATA/postmaster.pid` (never through a symlink) and the uid the
/// postmaster must run as: the owner of both PGDATA and the file.
fn read_postmaster_pid(
    opts: &InstallOptions,
) -> Result<Option<(zeroize::Zeroizing<Vec<u8>>, u32)>> {
    let path = postmaster_pid(opts)?;
    let pgdata = path.parent().unwrap_or(Path::new("."));
    let dir = DirFd::open_follow(pgdata)?;
    if dir.entry("postmaster.pid")?.is_none() {
        return Ok(None);
    }
    let data_uid = dir.meta()?.uid;
    let (text, meta) = dir.read_file_meta("postmaster.pid", PID_FILE_LIMIT)?;
    if meta.uid != data_uid {
        bail!(
            "{} belongs to uid {}, but the data directory to uid {data_uid}; refusing to trust it",
            path.display(),
            meta.uid
        );
    }
    Ok(Some((text, data_uid)))
}

/// Accepts `host:port` only when the host is an IP address of this machine
/// (loopback, or one a local socket can bind): a planted postmaster.pid
/// must not make root connect elsewhere.
fn local_only(addr: &str) -> Result<String> {
    let (host, _) = addr
        .rsplit_once(':')
        .with_context(|| format!("{addr:?} is not host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        anyhow::anyhow!(
            "the listen address {host:?} in postmaster.pid is not an IP address; pass --probe HOST:PORT"
        )
    })?;
    if !ip.is_loopback() && std::net::UdpSocket::bind((ip, 0)).is_err() {
        bail!(
            "the listen address {ip} in postmaster.pid is not an address of this host; refusing to probe it (pass --probe HOST:PORT)"
        );
    }
    Ok(addr.to_owned())
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

    #[test]
    fn probes_only_addresses_of_this_host() {
        assert_eq!(local_only("127.0.0.1:5432").unwrap(), "127.0.0.1:5432");
        assert_eq!(local_only("[::1]:5432").unwrap(), "[::1]:5432");
        // TEST-NET-3: never an address of this host.
        let err = local_only("203.0.113.9:5432").unwrap_err();
        assert!(
            format!("{err:#}").contains("not an address of this host"),
            "{err:#}"
        );
        let err = local_only("db.example.com:5432").unwrap_err();
        assert!(format!("{err:#}").contains("not an IP address"), "{err:#}");
    }

    #[test]
    fn only_the_packaged_postmaster_is_signalled() {
        let pg = Postgres;
        assert!(pg.exe_ok(Path::new("/usr/lib/postgresql/15/bin/postgres")));
        for bad in [
            "/usr/bin/sleep",
            "/tmp/postgres",
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "/usr/lib/postgresql/15/lib/postgres",
            "/home/x/usr/lib/postgresql/15/bin/postgres",
        ] {
            assert!(!pg.exe_ok(Path::new(bad)), "{bad}");
        }
    }
}
