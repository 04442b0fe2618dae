//! HAProxy layout: one combined `haproxy.pem` (leaf, intermediate, key;
//! 0600) for `crt`, `ca.pem` (the root) for `ca-file`, `crl.pem` for
//! `crl-file` when there is one, and `haproxy-bind.cfg` holding the `bind`
//! line to put in a frontend (HAProxy has no include). Check:
//! `haproxy -c -f CONFIG`; reload: SIGUSR2 to the master-worker master from
//! the pid file (what Debian's systemd unit sends).

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
