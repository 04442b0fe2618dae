//! `ca-client install nginx|postgres|haproxy`: puts the material of a
//! bootstrap directory into a service's layout and makes the service use it.
//!
//! The steps, in order (docs/installers.md has the why):
//! 1. read and check the bootstrap directory ([`material`]);
//! 2. write a new generation beside the live one (each file fsynced, with
//!    its mode and owner) and check the written files again;
//! 3. switch `DEST/current` to it with one rename ([`generation`]);
//! 4. run the service's configuration check (`nginx -t`, `haproxy -c`);
//! 5. if the service runs: reload it and, where a probe address is known,
//!    wait until it serves the new certificate ([`probe`]); PostgreSQL's
//!    check is this reload-and-confirm;
//! 6. on any failure in 4–5, switch back to the previous generation, reload
//!    again if it had been reloaded, and fail with the service's message.

pub mod generation;
pub mod haproxy;
pub mod material;
pub mod nginx;
pub mod postgres;
pub mod probe;
pub mod record;
pub mod sys;

use crate::dirfd::DirFd;
use anyhow::{Context, Result, anyhow, bail};
use generation::{Dest, GenFile};
use material::{KeySet, LeafInfo, Material};
use probe::Probe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use sys::{Owner, RunningPid, Verified};
use zeroize::Zeroizing;

/// The services `install` knows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Nginx,
    Postgres,
    Haproxy,
}

impl ServiceKind {
    pub fn name(self) -> &'static str {
        service(self).name()
    }
}

/// Client-certificate verification written into the nginx and HAProxy snippets.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates (the snippet still names the CA file).
    None,
    /// Ask for one, verify it if sent.
    Optional,
    /// Refuse clients without a certificate from this CA.
    Required,
}

/// How to reload the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Signal the pid from the service's pid file (what `nginx -s reload`,
    /// `pg_ctl reload` and HAProxy's systemd unit do).
    Signal,
    /// Run this command through `sh -c`.
    Command(String),
    /// Never reload (nor, for PostgreSQL, confirm).
    Never,
}

impl Reload {
    /// From the `--reload CMD` and `--no-reload` flags.
    pub fn from_flags(command: Option<&str>, never: bool) -> Reload {
        match (command, never) {
            (_, true) => Reload::Never,
            (Some(cmd), false) => Reload::Command(cmd.to_owned()),
            (None, false) => Reload::Signal,
        }
    }
}

/// Inputs of an install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub service: ServiceKind,
    /// The bootstrap directory.
    pub dir: PathBuf,
    /// Where the service's files go (`DEST/current/...`).
    pub dest: PathBuf,
    pub owner: Option<Owner>,
    pub reload: Reload,
    /// Replaces the default configuration check (`sh -c`).
    pub check: Option<String>,
    /// nginx/HAProxy main configuration file for the default check.
    pub config: Option<PathBuf>,
    /// nginx/HAProxy pid file (running detection, reload signal).
    pub pid_file: Option<PathBuf>,
    /// PostgreSQL data directory (its `postmaster.pid`).
    pub pgdata: Option<PathBuf>,
    /// `host:port` to confirm the served certificate after a reload.
    pub probe: Option<String>,
    pub probe_timeout: Duration,
    pub client_auth: ClientAuth,
    /// HAProxy `bind` address in the snippet.
    pub bind: String,
    /// HAProxy: update through the runtime API on this socket instead of reloading.
    pub haproxy_socket: Option<PathBuf>,
}

/// What an install did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallOutcome {
    pub service: ServiceKind,
    #[serde(flatten)]
    pub leaf: LeafInfo,
    pub dest: PathBuf,
    pub generation: String,
    /// The snippet to include, under `DEST/current`.
    pub snippet: PathBuf,
    /// `reloaded`, `updated through the runtime API`, `not running`, or
    /// `reload disabled`.
    pub reload: String,
    /// The probe confirmed the new certificate is served.
    pub confirmed: bool,
}

/// A failure, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The material or the destination is unusable; nothing went live.
    #[error(transparent)]
    Refused(anyhow::Error),
    /// The service refused the new files; the previous ones are back.
    #[error("{0:#}\nthe previous files were put back")]
    RolledBack(anyhow::Error),
    /// The service refused the new files and putting the old ones back failed too.
    #[error("{0:#}\nROLLBACK FAILED: {1:#}")]
    RollbackFailed(anyhow::Error, anyhow::Error),
}

impl InstallError {
    pub fn exit_code(&self) -> i32 {
        match self {
            InstallError::Refused(_) => crate::bootstrap::exit::ERROR,
            InstallError::RolledBack(_) | InstallError::RollbackFailed(..) => {
                crate::bootstrap::exit::SERVICE
            }
        }
    }
}

impl From<anyhow::Error> for InstallError {
    fn from(e: anyhow::Error) -> Self {
        InstallError::Refused(e)
    }
}

/// What differs between services.
pub trait Service {
    fn name(&self) -> &'static str;
    /// File name of the configuration snippet inside a generation.
    fn snippet_file(&self) -> &'static str;
    /// The snippet, for files under `current` (an absolute, checked path).
    fn snippet(&self, current: &str, m: &Material, opts: &InstallOptions) -> String;
    /// The files of one generation (the snippet included by the caller).
    fn files(&self, m: &Material) -> Vec<GenFile>;
    /// Key, chain and root read back from a written generation directory.
    fn reread(&self, dir: &DirFd) -> Result<KeySet>;
    /// The default configuration check, if the service has one.
    fn check_command(&self, opts: &InstallOptions) -> Option<Command>;
    /// The pid file used without `--pid-file`.
    fn default_pid_file(&self) -> &'static str;
    /// The running service's main pid, if it runs.
    fn running_pid(&self, opts: &InstallOptions) -> Result<Option<RunningPid>> {
        pid_from_file(
            opts.pid_file
                .as_deref()
                .unwrap_or(Path::new(self.default_pid_file())),
        )
    }
    /// The signal that makes the service re-read its files.
    fn reload_signal(&self) -> i32;
    /// Whether `exe` (a process's resolved executable) is the service's
    /// binary; a pid naming anything else is never signalled.
    fn exe_ok(&self, exe: &Path) -> bool {
        exe.file_name().is_some_and(|n| n == self.name())
    }
    /// Where to confirm the served certificate after a reload (`--probe`).
    fn probe(&self, opts: &InstallOptions) -> Result<Option<Probe>> {
        Ok(opts.probe.clone().map(|addr| Probe {
            addr,
            postgres: false,
        }))
    }
}

/// The CRL as a generation file, when the bootstrap directory has one.
fn crl_file(m: &Material, name: &'static str) -> Option<GenFile> {
    m.crl_pem
        .as_ref()
        .map(|crl| gen_file(name, crl.clone(), crate::fsutil::PUBLIC_MODE))
}

fn service(kind: ServiceKind) -> &'static dyn Service {
    match kind {
        ServiceKind::Nginx => &nginx::Nginx,
        ServiceKind::Postgres => &postgres::Postgres,
        ServiceKind::Haproxy => &haproxy::Haproxy,
    }
}

/// The snippet `install` would write, for `--print-config`.
pub fn print_config(opts: &InstallOptions) -> Result<String> {
    let m = Material::load(&opts.dir)?;
    let svc = service(opts.service);
    Ok(svc.snippet(&current_path(&opts.dest)?, &m, opts))
}

/// Runs the whole install.
pub async fn install(opts: &InstallOptions) -> Result<InstallOutcome, InstallError> {
    let svc = service(opts.service);
    let m = Material::load(&opts.dir)
        .with_context(|| format!("the material in {} is not usable", opts.dir.display()))?;
    let current = current_path(&opts.dest)?;
    // Pre-flight: a missing --pgdata or an unreadable pid file is a usage
    // problem, found before anything is written.
    svc.running_pid(opts)?;
    let dest = Dest::open_for(&opts.dest, opts.owner)?;
    let previous = dest.current()?;
    // HAProxy takes only a certificate through its runtime API: a CRL that
    // differs from the live generation's needs the reload.
    // Read through the DEST handle, like every other file of a generation.
    let crl_changed = opts.service == ServiceKind::Haproxy
        && match previous.as_deref() {
            Some(p) => {
                let live = dest
                    .open_generation(p)?
                    .read_file(haproxy::CRL, GEN_FILE_LIMIT);
                live.ok().map(|b| b.to_vec()) != m.crl_pem
            }
            None => false,
        };

    let mut files = svc.files(&m);
    files.push(GenFile {
        name: svc.snippet_file(),
        contents: Zeroizing::new(svc.snippet(&current, &m, opts).into_bytes()),
        mode: crate::fsutil::PUBLIC_MODE,
    });
    let generation = dest.write_generation(&m.leaf.serial, &files, opts.owner)?;
    drop(files);
    // The files as written, not just their source, must form one set.
    let reread = dest
        .open_generation(&generation)
        .and_then(|dir| svc.reread(&dir))
        .and_then(|set| material::check_set(&set.key_pem, &set.chain, &set.root));
    match reread {
        Ok(leaf) if leaf == m.leaf => {}
        Ok(_) => {
            let _ = dest.remove(&generation);
            return Err(anyhow!("the written files do not hold the certificate read").into());
        }
        Err(e) => {
            let _ = dest.remove(&generation);
            return Err(e.context("the written files do not form one set").into());
        }
    }

    dest.switch_to(Some(&generation))?;
    let mut step = Steps {
        svc,
        opts,
        current: current.clone(),
        crl_changed,
        reloaded: false,
    };
    match step.activate(&m).await {
        Ok((reload, confirmed)) => {
            if let Err(e) = dest.prune(&generation) {
                tracing::warn!(error = %format!("{e:#}"), "could not remove old generations");
            }
            Ok(InstallOutcome {
                service: opts.service,
                leaf: m.leaf,
                snippet: PathBuf::from(&current).join(svc.snippet_file()),
                dest: dest.path.clone(),
                generation,
                reload,
                confirmed,
            })
        }
        Err(e) => {
            let back = step
                .roll_back(&dest, previous.as_deref(), &generation)
                .await;
            Err(match back {
                Ok(()) => InstallError::RolledBack(e),
                Err(b) => InstallError::RollbackFailed(e, b),
            })
        }
    }
}

/// `DEST/current` as an absolute path that every service's configuration
/// syntax can carry unquoted: names are data, never syntax.
fn current_path(dest: &Path) -> Result<String> {
    let abs = if dest.is_absolute() {
        dest.to_path_buf()
    } else {
        std::env::current_dir()?.join(dest)
    };
    let s = abs.join(generation::CURRENT).to_string_lossy().into_owned();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+@,=:".contains(c);
    if !s.chars().all(safe) {
        bail!(
            "--dest {}: use a path of letters, digits and / . _ - + @ , = : only (it is written into service configuration)",
            abs.display()
        );
    }
    Ok(s)
}

/// Steps 4–6, remembering what must be undone.
struct Steps<'a> {
    svc: &'static dyn Service,
    opts: &'a InstallOptions,
    /// `DEST/current` as the service's configuration names it.
    current: String,
    /// The new generation's CRL differs from the one it replaces.
    crl_changed: bool,
    reloaded: bool,
}

impl Steps<'_> {
    /// Check, reload if running, confirm. Returns the reload outcome and
    /// whether the new certificate was seen served.
    async fn activate(&mut self, m: &Material) -> Result<(String, bool)> {
        let check = match &self.opts.check {
            Some(cmd) => Some(shell(cmd)),
            None => self.svc.check_command(self.opts),
        };
        if let Some(mut cmd) = check {
            run_command(
                &mut cmd,
                &format!("{} configuration check", self.svc.name()),
            )?;
        }
        if self.opts.reload == Reload::Never {
            return Ok(("reload disabled".into(), false));
        }
        let done = if let Some(socket) = self.runtime_socket().map(Path::to_path_buf) {
            // HAProxy's runtime API instead of a reload: running means
            // something answers on the socket.
            self.reloaded = true;
            match haproxy::runtime_update(&socket, &self.opts.dest, &self.current)? {
                haproxy::RuntimeUpdate::Updated => "updated through the runtime API",
                haproxy::RuntimeUpdate::NotRunning => {
                    self.reloaded = false;
                    return Ok(("not running".into(), false));
                }
            }
        } else {
            let Some(running) = self.svc.running_pid(self.opts)? else {
                return Ok(("not running".into(), false));
            };
            // A refused target means nothing was signalled: not yet reloaded.
            let target = self.target(&running)?;
            self.reloaded = true;
            self.reload(target)?;
            "reloaded"
        };
        let Some(probe) = self.svc.probe(self.opts)? else {
            return Ok((done.into(), false));
        };
        probe
            .wait_for_leaf(&m.leaf.hostname, &m.chain[0], self.opts.probe_timeout)
            .await
            .with_context(|| format!("{} did not take the new certificate", self.svc.name()))?;
        Ok((done.into(), true))
    }

    /// The HAProxy runtime API socket, when it replaces the reload: for a
    /// new certificate with the same CRL (a changed CRL is reloaded).
    fn runtime_socket(&self) -> Option<&Path> {
        match self.opts.service {
            ServiceKind::Haproxy if !self.crl_changed => self.opts.haproxy_socket.as_deref(),
            _ => None,
        }
    }

    /// For a signal reload, the checked process behind the pid file
    /// (`None` when a `--reload` command does the reloading).
    fn target(&self, running: &RunningPid) -> Result<Option<Verified>> {
        match &self.opts.reload {
            Reload::Command(_) => Ok(None),
            _ => sys::verify_process(running, self.svc.name(), &|exe| self.svc.exe_ok(exe))
                .map(Some)
                .with_context(|| format!("not reloading {}", self.svc.name())),
        }
    }

    fn reload(&self, target: Option<Verified>) -> Result<()> {
        match (&self.opts.reload, target) {
            (Reload::Command(cmd), _) => {
                run_command(&mut shell(cmd), &format!("{} reload", self.svc.name()))
            }
            (_, Some(process)) => process
                .signal(self.svc.reload_signal())
                .with_context(|| format!("reloading {}", self.svc.name())),
            (_, None) => bail!("no process to signal"),
        }
    }

    /// Points `current` back at `previous`, removes the failed generation and
    /// reloads again if the service had been reloaded with the new files.
    async fn roll_back(&self, dest: &Dest, previous: Option<&str>, failed: &str) -> Result<()> {
        dest.switch_to(previous)?;
        dest.remove(failed)?;
        if self.reloaded
            && previous.is_some()
            && let Some(socket) = self.runtime_socket()
        {
            haproxy::runtime_update(socket, &self.opts.dest, &self.current)
                .context("handing the previous files back to HAProxy")?;
            return Ok(());
        }
        if self.reloaded
            && let Some(running) = self.svc.running_pid(self.opts)?
        {
            let target = self.target(&running)?;
            self.reload(target)
                .context("reloading with the previous files")?;
        }
        Ok(())
    }
}

fn shell(cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", cmd]);
    c
}

/// Runs a check or reload command; a failure carries the command's own output.
fn run_command(cmd: &mut Command, what: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {shown}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!(
            "{what} failed ({shown}, {}):\n{}",
            out.status,
            text.trim_end()
        );
    }
    tracing::debug!(output = %text.trim_end(), "{what} passed");
    Ok(())
}

/// The first of `names` found on PATH or in the sbin directories (which a
/// non-root PATH often lacks), else the bare name.
fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Largest pid file or `postmaster.pid` read.
const PID_FILE_LIMIT: u64 = 64 * 1024;

/// A pid file's text and owner, read without following a symlink (the
/// directory path is resolved once); `None` if it does not exist.
fn read_pid_file(path: &Path) -> Result<Option<(Zeroizing<Vec<u8>>, u32)>> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: no file name", path.display()))?;
    let dir = DirFd::open_follow(dir)?;
    if dir.entry(name)?.is_none() {
        return Ok(None);
    }
    let (text, meta) = dir.read_file_meta(name, PID_FILE_LIMIT)?;
    Ok(Some((text, meta.uid)))
}

/// The pid in the first line of a pid file, if the process is alive, with
/// the file's owner as the user the process must run as.
fn pid_from_file(path: &Path) -> Result<Option<RunningPid>> {
    let Some((text, uid)) = read_pid_file(path)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&text);
    // An empty pid file means not running (`nginx -t` leaves one behind).
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Ok(None);
    }
    let pid: i32 = first
        .parse()
        .with_context(|| format!("{} does not start with a pid", path.display()))?;
    Ok(sys::process_alive(pid).then(|| RunningPid {
        pid,
        uid,
        source: path.to_path_buf(),
    }))
}

/// A generation file.
fn gen_file(name: &'static str, contents: impl Into<Vec<u8>>, mode: u32) -> GenFile {
    GenFile {
        name,
        contents: Zeroizing::new(contents.into()),
        mode,
    }
}

/// Largest generation file read back.
const GEN_FILE_LIMIT: u64 = 1024 * 1024;

/// Reads a generation file as text, through the generation's descriptor
/// (key material is wiped after use).
fn read_text(dir: &DirFd, name: &str) -> Result<Zeroizing<String>> {
    let bytes = dir
        .read_file(name, GEN_FILE_LIMIT)
        .with_context(|| format!("reading {name}"))?;
    Ok(Zeroizing::new(
        std::str::from_utf8(&bytes)
            .map_err(|_| anyhow!("{name} is not text"))?
            .to_owned(),
    ))
}

/// Rereads the common split layout: a key file, a chain file, a root file.
fn reread_split(dir: &DirFd, key: &str, chain: &str, root: &str) -> Result<KeySet> {
    let key_pem = read_text(dir, key)?;
    let chain = material::certs_from_pem(read_text(dir, chain)?.as_bytes())?;
    let root = material::certs_from_pem(read_text(dir, root)?.as_bytes())?.remove(0);
    Ok(KeySet {
        key_pem,
        chain,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(service: ServiceKind) -> InstallOptions {
        InstallOptions {
            service,
            dir: PathBuf::from("/nonexistent"),
            dest: PathBuf::from("/etc/tls"),
            owner: None,
            reload: Reload::Never,
            check: None,
            config: None,
            pid_file: None,
            pgdata: None,
            probe: None,
            probe_timeout: Duration::from_secs(1),
            client_auth: ClientAuth::Required,
            bind: "127.0.0.1:8443".into(),
            haproxy_socket: None,
        }
    }

    fn material(crl: bool) -> Material {
        Material {
            key_pem: Zeroizing::new("KEY".into()),
            chain: vec![b"leaf".to_vec(), b"intermediate".to_vec()],
            root: b"root".to_vec(),
            crl_pem: crl.then(|| b"CRL".to_vec()),
            leaf: LeafInfo {
                hostname: "web.example.internal".into(),
                serial: "01".into(),
                not_after: String::new(),
            },
        }
    }

    /// Each service's snippet names the CRL (and the generation holds it)
    /// exactly when the bootstrap directory has one.
    #[test]
    fn crl_directives_follow_the_crl_file() {
        let cur = "/etc/tls/current";
        for (kind, directive, file) in [
            (
                ServiceKind::Nginx,
                "ssl_crl                 /etc/tls/current/crl.pem;",
                "crl.pem",
            ),
            (
                ServiceKind::Postgres,
                "ssl_crl_file = '/etc/tls/current/root.crl'",
                "root.crl",
            ),
            (
                ServiceKind::Haproxy,
                " crl-file /etc/tls/current/crl.pem",
                "crl.pem",
            ),
        ] {
            let svc = service(kind);
            let opts = options(kind);
            for crl in [false, true] {
                let m = material(crl);
                let snippet = svc.snippet(cur, &m, &opts);
                assert_eq!(
                    snippet.contains(directive),
                    crl,
                    "{kind:?} crl={crl}:\n{snippet}"
                );
                let names: Vec<&str> = svc.files(&m).iter().map(|f| f.name).collect();
                assert_eq!(names.contains(&file), crl, "{kind:?} {names:?}");
            }
        }
    }

    #[test]
    fn client_auth_and_key_modes_per_service() {
        let m = material(false);
        let nginx = service(ServiceKind::Nginx).snippet("/d", &m, &options(ServiceKind::Nginx));
        assert!(nginx.contains("ssl_verify_client       on;"), "{nginx}");
        let haproxy =
            service(ServiceKind::Haproxy).snippet("/d", &m, &options(ServiceKind::Haproxy));
        assert!(
            haproxy.contains(
                "bind 127.0.0.1:8443 ssl crt /d/haproxy.pem ca-file /d/ca.pem verify required\n"
            ),
            "{haproxy}"
        );
        for kind in [
            ServiceKind::Nginx,
            ServiceKind::Postgres,
            ServiceKind::Haproxy,
        ] {
            for f in service(kind).files(&m) {
                let secret = f.contents.windows(3).any(|w| w == b"KEY");
                let want = if secret {
                    crate::fsutil::KEY_MODE
                } else {
                    crate::fsutil::PUBLIC_MODE
                };
                assert_eq!(f.mode, want, "{kind:?} {}", f.name);
            }
        }
    }

    #[test]
    fn dest_paths_that_would_need_quoting_are_refused() {
        assert_eq!(
            current_path(Path::new("/etc/nginx/tls")).unwrap(),
            "/etc/nginx/tls/current"
        );
        for bad in [
            "/etc/my tls",
            "/etc/a;b",
            "/etc/'x'",
            "/etc/a\"b",
            "/etc/$x",
            "/etc/a{b}",
        ] {
            assert!(current_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
