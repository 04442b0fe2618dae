//! nginx layout: `fullchain.pem` (leaf + intermediate), `privkey.pem`
//! (0600), `ca.pem` (the root, for `ssl_client_certificate` and
//! `ssl_trusted_certificate`), `crl.pem` when there is one, and the
//! `nginx-ssl.conf` snippet to `include` in a `server { listen ... ssl; }`
//! block. Check: `nginx -t [-c CONFIG]`; reload: SIGHUP to the master from
//! the pid file (what `nginx -s reload` sends).

use super::generation::GenFile;
use super::material::{KeySet, Material};
use super::{ClientAuth, InstallOptions, Service, crl_file, gen_file, reread_split};
use crate::fsutil::{KEY_MODE, PUBLIC_MODE};
use anyhow::Result;
use std::fmt::Write as _;
use std::process::Command;

pub const CHAIN: &str = "fullchain.pem";
pub const KEY: &str = "privkey.pem";
pub const CA: &str = "ca.pem";
pub const CRL: &str = "crl.pem";
pub const SNIPPET: &str = "nginx-ssl.conf";
/// Debian's pid file for the packaged nginx.
pub const DEFAULT_PID_FILE: &str = "/run/nginx.pid";

#[derive(Debug)]
pub struct Nginx;

impl Service for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn snippet_file(&self) -> &'static str {
        SNIPPET
    }

    fn snippet(&self, current: &str, m: &Material, opts: &InstallOptions) -> String {
        let mut s = format!(
            "# Written by `ca-client install nginx` for {host}.\n\
             # Include it in a TLS server block:  include {current}/{SNIPPET};\n\
             ssl_certificate         {current}/{CHAIN};\n\
             ssl_certificate_key     {current}/{KEY};\n\
             ssl_trusted_certificate {current}/{CA};\n\
             # Client certificates are checked against the root; clients send leaf + intermediate.\n\
             ssl_client_certificate  {current}/{CA};\n\
             ssl_verify_depth        2;\n",
            host = m.leaf.hostname
        );
        if m.crl_pem.is_some() {
            let _ = writeln!(s, "ssl_crl                 {current}/{CRL};");
        }
        s.push_str(&stapling(m));
        match opts.client_auth {
            ClientAuth::None => s.push_str(
                "# Add `ssl_verify_client on;` (or optional) where client certificates are required.\n",
            ),
            ClientAuth::Optional => s.push_str("ssl_verify_client       optional;\n"),
            ClientAuth::Required => s.push_str("ssl_verify_client       on;\n"),
        }
        s
    }

    fn files(&self, m: &Material) -> Vec<GenFile> {
        let mut files = vec![
            gen_file(CHAIN, m.chain_pem(), PUBLIC_MODE),
            gen_file(KEY, m.key_pem.as_bytes(), KEY_MODE),
            gen_file(CA, m.root_pem(), PUBLIC_MODE),
        ];
        files.extend(crl_file(m, CRL));
        files
    }

    fn reread(&self, dir: &crate::dirfd::DirFd) -> Result<KeySet> {
        reread_split(dir, KEY, CHAIN, CA)
    }

    fn check_command(&self, opts: &InstallOptions) -> Option<Command> {
        let mut cmd = Command::new(super::find_program("nginx"));
        cmd.arg("-t");
        if let Some(conf) = &opts.config {
            cmd.arg("-c").arg(conf);
        }
        Some(cmd)
    }

    fn default_pid_file(&self) -> &'static str {
        DEFAULT_PID_FILE
    }

    fn reload_signal(&self) -> i32 {
        libc::SIGHUP
    }
}

/// OCSP stapling lines when the leaf names a responder (authorityInfoAccess):
/// nginx fetches the response itself from that URL and verifies it against
/// `ssl_trusted_certificate` (the root) and the chain.
fn stapling(m: &Material) -> String {
    let url = m
        .chain
        .first()
        .and_then(|leaf| crate::ocsp::ocsp_url(leaf).ok().flatten());
    let Some(url) = url else {
        return String::new();
    };
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', ':']).next().unwrap_or(""))
        .unwrap_or("");
    let mut s = format!(
        "# OCSP stapling: nginx fetches the status from {url} (the certificate's AIA).\n\
         ssl_stapling            on;\n\
         ssl_stapling_verify     on;\n"
    );
    if host.parse::<std::net::IpAddr>().is_err() {
        s.push_str("# The responder is named by hostname: nginx needs a `resolver` in this server or http block.\n");
    }
    s
}
