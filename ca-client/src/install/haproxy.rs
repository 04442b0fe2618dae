//! HAProxy layout: one combined `haproxy.pem` (leaf, intermediate, key;
//! 0600) for `crt`, `ca.pem` (the root) for `ca-file`, `crl.pem` for
//! `crl-file` when there is one, and `haproxy-bind.cfg` holding the `bind`
//! line to put in a frontend (HAProxy has no include). Check:
//! `haproxy -c -f CONFIG`; reload: SIGUSR2 to the master-worker master from
//! the pid file (what Debian's systemd unit sends), or with
//! `--haproxy-socket PATH` and an unchanged CRL no reload at all: the
//! running process takes the new certificate through its runtime API
//! ([`runtime_update`]), so established connections and their workers stay
//! as they are.

use super::generation::GenFile;
use super::material::{self, KeySet, Material};
use super::{ClientAuth, InstallOptions, Service, crl_file, gen_file, read_text};
use crate::fsutil::{KEY_MODE, PUBLIC_MODE};
use anyhow::Result;
use std::path::Path;
use std::process::Command;
use zeroize::Zeroizing;

pub const COMBINED: &str = "haproxy.pem";
pub const CA: &str = "ca.pem";
pub const CRL: &str = "crl.pem";
pub const SNIPPET: &str = "haproxy-bind.cfg";
/// Debian's configuration and pid file for the packaged HAProxy.
pub const DEFAULT_CONFIG: &str = "/etc/haproxy/haproxy.cfg";
pub const DEFAULT_PID_FILE: &str = "/run/haproxy.pid";

#[derive(Debug)]
pub struct Haproxy;

impl Service for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn snippet_file(&self) -> &'static str {
        SNIPPET
    }

    fn snippet(&self, current: &str, m: &Material, opts: &InstallOptions) -> String {
        let verify = match opts.client_auth {
            ClientAuth::None => "none",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        };
        let crl = if m.crl_pem.is_some() {
            format!(" crl-file {current}/{CRL}")
        } else {
            String::new()
        };
        format!(
            "# Written by `ca-client install haproxy` for {host}.\n\
             # Put this line in a frontend section (HAProxy has no include):\n\
             bind {bind} ssl crt {current}/{COMBINED} ca-file {current}/{CA} verify {verify}{crl}\n",
            host = m.leaf.hostname,
            bind = opts.bind,
        )
    }

    fn files(&self, m: &Material) -> Vec<GenFile> {
        let mut combined = Zeroizing::new(m.chain_pem().into_bytes());
        combined.extend_from_slice(m.key_pem.as_bytes());
        let mut files = vec![
            gen_file(COMBINED, combined.to_vec(), KEY_MODE),
            gen_file(CA, m.root_pem(), PUBLIC_MODE),
        ];
        files.extend(crl_file(m, CRL));
        files
    }

    fn reread(&self, dir: &crate::dirfd::DirFd) -> Result<KeySet> {
        let combined = read_text(dir, COMBINED)?;
        let key = material::key_from_pem(&combined)?;
        let chain = material::certs_from_pem(combined.as_bytes())?;
        let root = material::certs_from_pem(read_text(dir, CA)?.as_bytes())?.remove(0);
        Ok(KeySet {
            key_pem: key,
            chain,
            root,
        })
    }

    fn check_command(&self, opts: &InstallOptions) -> Option<Command> {
        let mut cmd = Command::new(super::find_program("haproxy"));
        cmd.arg("-c")
            .arg("-f")
            .arg(opts.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)));
        Some(cmd)
    }

    fn default_pid_file(&self) -> &'static str {
        DEFAULT_PID_FILE
    }

    fn reload_signal(&self) -> i32 {
        libc::SIGUSR2
    }
}

/// What the runtime API did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeUpdate {
    /// The running process took the files now under `current`.
    Updated,
    /// Nothing listens on the socket: HAProxy is not running.
    NotRunning,
}

/// Hands the certificate now under `current` (the path HAProxy's
/// configuration names, `DEST/current/haproxy.pem`) to the running HAProxy
/// through its runtime API on the `stats socket` at `socket` (`level
/// admin`): `set ssl cert` + `commit ssl cert`. New handshakes use it at
/// once; established connections are not touched (no reload, no new
/// workers). The private key travels only over this local socket, to the
/// process that would read the same bytes from the file.
///
/// Only the certificate: HAProxy 2.6.12 (Debian 12) dies on `commit ssl
/// crl-file` once a certificate was committed through the API (seen here),
/// so a changed CRL is left to a reload (see `install`).
///
/// The bytes sent are read through DEST's descriptor (`read_live_file`), never
/// by following `current` as a path: root must not read what a service
/// account planted.
pub fn runtime_update(socket: &Path, dest: &Path, current: &str) -> Result<RuntimeUpdate> {
    use anyhow::Context;
    let cert_path = format!("{current}/{COMBINED}");
    let pem = super::generation::read_live_file(dest, COMBINED).ok_or_else(|| {
        anyhow::anyhow!("{cert_path} is not a file of a generation the installer made")
    })?;
    match runtime_command(socket, b"show ssl cert\n") {
        Err(e) if socket_absent(&e) => return Ok(RuntimeUpdate::NotRunning),
        Err(e) => {
            return Err(anyhow::Error::new(e))
                .with_context(|| format!("HAProxy runtime API at {}", socket.display()));
        }
        Ok(_) => {}
    }
    set_and_commit(socket, "ssl cert", &cert_path, &pem)?;
    Ok(RuntimeUpdate::Updated)
}

/// `set <what> <path> <<` with `pem` as the payload, then `commit <what> <path>`;
/// on a refused `set`, the transaction is aborted.
fn set_and_commit(socket: &Path, what: &str, path: &str, pem: &[u8]) -> Result<()> {
    use anyhow::{Context, bail};
    // The payload ends at the first empty line: drop blank lines and CRs.
    let mut cmd = Zeroizing::new(format!("set {what} {path} <<\n").into_bytes());
    for line in pem.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.iter().all(u8::is_ascii_whitespace) {
            cmd.extend_from_slice(line);
            cmd.push(b'\n');
        }
    }
    cmd.push(b'\n');
    let api = || format!("HAProxy runtime API at {}", socket.display());
    let answer = runtime_command(socket, &cmd).with_context(api)?;
    drop(cmd);
    // HAProxy 2.6: "Transaction created for certificate ...!", "transaction
    // created for CRL ...!" (the case differs), "... updated ..." for a
    // transaction already open on that path.
    let lower = answer.to_ascii_lowercase();
    if !lower.contains("transaction created") && !lower.contains("transaction updated") {
        let _ = runtime_command(socket, format!("abort {what} {path}\n").as_bytes());
        bail!("HAProxy refused `set {what} {path}`: {}", answer.trim_end());
    }
    let answer =
        runtime_command(socket, format!("commit {what} {path}\n").as_bytes()).with_context(api)?;
    if !answer.to_ascii_lowercase().contains("success") {
        bail!(
            "HAProxy did not commit `{what} {path}`: {}",
            answer.trim_end()
        );
    }
    Ok(())
}

/// One command on a fresh connection (non-interactive mode: HAProxy answers
/// and closes).
fn runtime_command(socket: &Path, command: &[u8]) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(socket)?;
    let limit = Some(std::time::Duration::from_secs(10));
    conn.set_read_timeout(limit)?;
    conn.set_write_timeout(limit)?;
    conn.write_all(command)?;
    let mut answer = Vec::new();
    conn.take(1 << 20).read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// No socket, or nobody listening on it.
fn socket_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}
