//! A real Puppet agent (Debian's `puppet-agent`, `puppet ssl bootstrap`)
//! pointed at a test `ca-server`: its own confdir, ssldir, vardir, logdir
//! and rundir in a temporary directory, `ca_server = localhost` on the
//! server's free port, and `pp_preshared_key` in `csr_attributes.yaml`.

use crate::{CaServer, require_tool};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// `true` if the `puppet` command is installed (a failure under CI=true).
pub fn require_puppet() -> bool {
    require_tool("puppet")
}

/// One agent identity with its own directories.
#[derive(Debug)]
pub struct PuppetAgent {
    pub tmp: tempfile::TempDir,
    pub certname: String,
}

impl PuppetAgent {
    /// An agent named `certname` for `server`, with `psk` (if any) as its
    /// `pp_preshared_key`.
    pub fn new(server: &CaServer, certname: &str, psk: Option<&str>) -> PuppetAgent {
        let tmp = tempfile::Builder::new()
            .prefix("ca-puppet-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path();
        let conf = format!(
            "[main]\n\
             certname = {certname}\n\
             server = localhost\n\
             ca_server = localhost\n\
             ca_port = {port}\n\
             certificate_revocation = chain\n\
             ssldir = {d}/ssl\n\
             vardir = {d}/var\n\
             logdir = {d}/log\n\
             rundir = {d}/run\n\
             codedir = {d}/code\n\
             publicdir = {d}/public\n",
            port = server.port,
            d = dir.display(),
        );
        std::fs::write(dir.join("puppet.conf"), conf).unwrap();
        let agent = PuppetAgent {
            tmp,
            certname: certname.to_owned(),
        };
        agent.set_psk(psk);
        agent
    }

    pub fn confdir(&self) -> &Path {
        self.tmp.path()
    }

    /// Rewrites `csr_attributes.yaml` (atomically: a waiting agent re-reads
    /// it before each new CSR).
    pub fn set_psk(&self, psk: Option<&str>) {
        let yaml = match psk {
            Some(psk) => format!("extension_requests:\n  pp_preshared_key: \"{psk}\"\n"),
            None => "extension_requests: {}\n".to_owned(),
        };
        let tmp = self.confdir().join(".csr_attributes.yaml.new");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.confdir().join("csr_attributes.yaml")).unwrap();
    }

    /// `puppet ssl bootstrap --confdir DIR` plus `args`, stdin closed.
    pub fn bootstrap_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("puppet");
        cmd.args(["ssl", "bootstrap", "--confdir"])
            .arg(self.confdir())
            .args(["--color", "false"])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `puppet ssl bootstrap --waitforcert 0` plus `args`.
    pub fn bootstrap(&self, args: &[&str]) -> Output {
        let mut cmd = self.bootstrap_cmd(&["--waitforcert", "0"]);
        cmd.args(args);
        let shown = format!("{cmd:?}");
        cmd.output()
            .unwrap_or_else(|e| panic!("running {shown}: {e}"))
    }

    /// Starts `puppet ssl bootstrap` plus `args` in the background, output
    /// into `agent.log` in the agent's directory.
    pub fn spawn_bootstrap(&self, args: &[&str]) -> Child {
        let log = std::fs::File::create(self.log_path()).unwrap();
        self.bootstrap_cmd(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning puppet")
    }

    pub fn log_path(&self) -> PathBuf {
        self.confdir().join("agent.log")
    }

    pub fn ssldir(&self) -> PathBuf {
        self.confdir().join("ssl")
    }

    /// Where the agent saves its signed certificate.
    pub fn cert_path(&self) -> PathBuf {
        self.ssldir()
            .join("certs")
            .join(format!("{}.pem", self.certname))
    }

    pub fn key_path(&self) -> PathBuf {
        self.ssldir()
            .join("private_keys")
            .join(format!("{}.pem", self.certname))
    }

    /// The CA bundle and the CRL chain the agent downloaded.
    pub fn ca_path(&self) -> PathBuf {
        self.ssldir().join("certs").join("ca.pem")
    }

    pub fn crl_path(&self) -> PathBuf {
        self.ssldir().join("crl.pem")
    }
}

/// stdout and stderr of a run, without the container's Facter noise
/// ("Permission denied ... /proc/1/environ").
pub fn agent_output(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    without_noise(&text)
}

/// Drops Facter's sandbox noise from agent output.
pub fn without_noise(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains("/proc/1/environ"))
        .collect::<Vec<_>>()
        .join("\n")
}
