//! Harness for the end-to-end tests: builds and locates the real binaries,
//! boots `ca-server` on a free loopback port in a temporary data dir, and
//! wraps the CLIs and a pinned HTTPS client. Everything runs on 127.0.0.1
//! and is cleaned up on drop.

pub mod acme;
pub mod curl;
pub mod fleet;
pub mod forge;
pub mod pg;
pub mod puppet;
pub mod raw;
pub mod services;
pub mod trio;

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `true` under CI (`CI=true`): a missing tool or server is a failure there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Checks that `tool` is on PATH. Outside CI a missing tool skips the test
/// (returns false, with a message); under CI it fails the test.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if in_ci() {
            panic!(
                "{tool} is required under CI=true but is not installed (scripts/test.sh installs it)"
            );
        }
        eprintln!(
            "SKIP: {tool} is not installed (run scripts/test.sh to install test dependencies)"
        );
    }
    found
}

/// The workspace's target directory, from the test executable's location.
fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // .../target/<profile>/deps/e2e-xxxx -> .../target
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(2).expect("profile dir").to_path_buf()
}

/// Path of a workspace binary, built once per test process so tests never run stale code.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "-p", "ca-server", "-p", "ca-client"]);
        if profile_dir().file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        // Drop what cargo set for this test process (CARGO_PKG_NAME and
        // friends): build scripts watch some of them, and inheriting them
        // would make every run rebuild ring.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "OUT_DIR" {
                cmd.env_remove(&key);
            }
        }
        let status = cmd
            .env("CARGO_TARGET_DIR", target_dir())
            .status()
            .expect("running cargo build");
        assert!(status.success(), "cargo build of the binaries failed");
    });
    let path = profile_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Runs a command and returns its output, with the command line in any panic.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Options for starting a server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra `serve` arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Log filter (default `info`).
    pub log: Option<String>,
    /// Use this database URL instead of the data dir's SQLite file.
    pub database_url: Option<String>,
}

/// A running `ca-server serve` in its own temporary data dir.
#[derive(Debug)]
pub struct CaServer {
    pub tmp: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub addr: String,
    pub port: u16,
    pub url: String,
    pub fingerprint: String,
    pub opts: ServerOptions,
    child: Option<Child>,
    psks: Vec<String>,
}

impl CaServer {
    /// Starts a server with default options.
    pub fn start() -> CaServer {
        CaServer::start_with(ServerOptions::default())
    }

    pub fn start_with(opts: ServerOptions) -> CaServer {
        let mut server = CaServer::prepare(opts);
        server.spawn(0);
        server
    }

    /// `n` servers on one data dir and one store (`opts.database_url`),
    /// launched at the same moment (their migrations race), then each
    /// waited for. The first owns the data dir; drop the others first.
    pub fn start_replicas(opts: ServerOptions, n: usize) -> Vec<CaServer> {
        let first = CaServer::prepare(opts);
        let mut servers: Vec<CaServer> = (1..n).map(|_| first.unstarted_replica()).collect();
        servers.insert(0, first);
        let before: Vec<usize> = servers.iter_mut().map(|s| s.launch(0)).collect();
        for (s, before) in servers.iter_mut().zip(before) {
            s.wait_listening(before);
        }
        servers
    }

    /// Another server on this one's data dir (the same CA keys) and store,
    /// on its own port, with its own log. It must not outlive `self`.
    pub fn replica(&self) -> CaServer {
        let mut server = self.unstarted_replica();
        server.spawn(0);
        server
    }

    /// [`CaServer::replica`] with other `serve` arguments in place of this one's.
    pub fn replica_with_args(&self, args: Vec<String>) -> CaServer {
        let mut server = self.unstarted_replica();
        server.opts.args = args;
        server.spawn(0);
        server
    }

    fn unstarted_replica(&self) -> CaServer {
        let tmp = tempfile::Builder::new()
            .prefix("ca-e2e-replica-")
            .tempdir()
            .expect("tempdir");
        CaServer {
            log_path: tmp.path().join("server.log"),
            tmp,
            data_dir: self.data_dir.clone(),
            addr: String::new(),
            port: 0,
            url: String::new(),
            fingerprint: self.fingerprint.clone(),
            opts: self.opts.clone(),
            child: None,
            psks: Vec::new(),
        }
    }

    /// A data dir initialised by `ca-server init`; no process yet.
    fn prepare(opts: ServerOptions) -> CaServer {
        let tmp = tempfile::Builder::new()
            .prefix("ca-e2e-")
            .tempdir()
            .expect("tempdir");
        let data_dir = tmp.path().join("data");
        // `init` sees the server's environment too (a PKCS#11 token's settings).
        let fingerprint = run_ok(
            Command::new(bin("ca-server"))
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["init", "--name", "E2E"])
                .envs(opts.env.iter().map(|(k, v)| (k, v))),
        )
        .trim()
        .to_owned();
        CaServer {
            log_path: tmp.path().join("server.log"),
            tmp,
            data_dir,
            addr: String::new(),
            port: 0,
            url: String::new(),
            fingerprint,
            opts,
            child: None,
            psks: Vec::new(),
        }
    }

    /// The server's stdout/stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The log once it contains `needle`: the server writes its lines from
    /// a thread of its own, a few milliseconds after the event.
    pub fn wait_log(&self, needle: &str) -> String {
        wait_for(Duration::from_secs(10), needle, || {
            let logs = self.logs();
            logs.contains(needle).then_some(logs)
        })
    }

    fn spawn(&mut self, port: u16) {
        let before = self.launch(port);
        self.wait_listening(before);
    }

    /// Starts the process; returns how many `listening` lines its log had before.
    fn launch(&mut self, port: u16) -> usize {
        let mut cmd = Command::new(bin("ca-server"));
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.opts.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(["--log", self.opts.log.as_deref().unwrap_or("info")])
            .arg("serve")
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--hostname",
                "localhost",
            ])
            .args(&self.opts.args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let before = listening_lines(&self.logs()).len();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning ca-server");
        self.child = Some(child);
        before
    }

    /// Waits for the `before`+1-th `listening` line and reads the bound address.
    fn wait_listening(&mut self, before: usize) {
        let addr = wait_for(Duration::from_secs(30), "ca-server to listen", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("ca-server exited early ({status}):\n{}", self.logs());
            }
            let logs = self.logs();
            let line = *listening_lines(&logs).get(before)?;
            let addr = match line.split_once("addr=") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                // --log-format json
                None => line.split_once("\"addr\":\"")?.1.split('"').next()?,
            };
            Some(addr.to_owned())
        });
        self.port = addr.rsplit(':').next().unwrap().parse().unwrap();
        self.addr = addr;
        self.url = format!("https://localhost:{}", self.port);
    }

    /// `kill -9` the server process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM and waits for it. A server that does not
    /// shut down cleanly on SIGTERM (systemd's stop) fails the test.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Some(status) = c.try_wait().ok().flatten() {
                    assert!(
                        status.success(),
                        "ca-server exited with {status} on SIGTERM"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
            panic!("ca-server did not stop within 30 s of SIGTERM");
        }
    }

    /// Starts the server again on the same port after `stop` or `kill9`.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(port);
    }

    /// A `ca-server` command against this server's data dir and store.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(bin("ca-server"));
        cmd.arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.opts.database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd
    }

    /// `psk add HOST [args]`; returns the PSK and remembers it for leak checks.
    pub fn psk_add(&mut self, host: &str, args: &[&str]) -> String {
        let psk = run_ok(self.cli().args(["psk", "add", host]).args(args))
            .trim()
            .to_owned();
        assert_eq!(psk.len(), 43, "a generated PSK is 43 base64url characters");
        self.psks.push(psk.clone());
        psk
    }

    /// Remembers a secret (e.g. a wrong PSK a test sent) for the leak check.
    pub fn remember_secret(&mut self, secret: &str) {
        self.psks.push(secret.to_owned());
    }

    /// Every certificate row of `host` as JSON values (`cert list --json`).
    pub fn certs_of(&self, host: &str) -> Vec<serde_json::Value> {
        run_ok(self.cli().args(["cert", "list", "--json", "--host", host]))
            .lines()
            .map(|l| serde_json::from_str(l).expect("cert list --json line"))
            .collect()
    }

    /// `ca-client bootstrap` against this server for `host`, reading the PSK
    /// from `psk_file` and writing into `dir`; add flags and run it.
    pub fn bootstrap_cmd(&self, host: &str, psk_file: &Path, dir: &Path) -> Command {
        let mut cmd = ca_client();
        cmd.args([
            "bootstrap",
            "--server",
            &self.url,
            "--fingerprint",
            &self.fingerprint,
        ])
        .args(["--hostname", host, "--psk-file"])
        .arg(psk_file)
        .arg("--dir")
        .arg(dir);
        cmd
    }

    /// Runs `bootstrap --key KEY --json` for `host` (the retry of a request
    /// whose response was lost) and asserts it recovers certificate `serial`.
    pub fn assert_retry_recovers(&self, host: &str, psk: &str, key: &Path, serial: &str) {
        let work = tempfile::tempdir().unwrap();
        let psk_file = write_file(work.path(), "psk", psk);
        let out = run_ok(
            self.bootstrap_cmd(host, &psk_file, &work.path().join("tls"))
                .arg("--key")
                .arg(key)
                .arg("--json"),
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["serial"], serial, "the recorded certificate comes back");
        assert_eq!(v["recovered"], true);
    }

    /// The root certificate PEM path.
    pub fn root_pem(&self) -> PathBuf {
        self.data_dir.join("root.crt")
    }

    /// The intermediate certificate PEM path.
    pub fn intermediate_pem(&self) -> PathBuf {
        self.data_dir.join("intermediate.crt")
    }

    /// A pinned HTTPS client for this server.
    pub fn client(&self) -> ca_client::https::HttpsClient {
        let root = pem::parse(std::fs::read(self.root_pem()).unwrap())
            .unwrap()
            .into_contents();
        let config = ca_client::trust::pinned_client_config(&root, None).unwrap();
        ca_client::https::HttpsClient::new(&self.url, config).unwrap()
    }

    /// Asserts that no remembered PSK appears, raw, hex or base64, in the
    /// server's logs, the raw bytes of its store files, the audit log or
    /// (while it runs) its /metrics.
    pub fn assert_no_secret_leaks(&self) {
        let mut haystacks: Vec<(String, Vec<u8>)> =
            vec![("server log".into(), self.logs().into_bytes())];
        for entry in std::fs::read_dir(&self.data_dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("ca.db") {
                haystacks.push((name, std::fs::read(entry.path()).unwrap_or_default()));
            }
        }
        let audit = run_ok(self.cli().args(["audit", "--since", "3650d", "--json"]));
        haystacks.push(("audit --json".into(), audit.into_bytes()));
        // While the server runs, what anyone may read at /metrics too.
        if self.child.is_some()
            && let Ok(reply) = block_on(self.client().send(
                http::Method::GET,
                "/metrics",
                None,
                bytes::Bytes::new(),
            ))
        {
            haystacks.push(("/metrics".into(), reply.body.to_vec()));
        }
        for psk in &self.psks {
            for form in secret_forms(psk) {
                for (name, hay) in &haystacks {
                    assert!(
                        !contains(hay, form.as_bytes()),
                        "a PSK (in the form {form:?}) appears in {name}"
                    );
                }
            }
        }
    }
}

/// The server's `listening` log lines, human or JSON (`--log-format json`).
fn listening_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains(" listening ") || l.contains("\"message\":\"listening\""))
        .collect()
}

/// The raw, hex and base64 spellings of a secret.
pub fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    vec![
        secret.to_owned(),
        hex::encode(secret),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Drop for CaServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `ca-client` command.
pub fn ca_client() -> Command {
    Command::new(bin("ca-client"))
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Generates a key with the openssl CLI: `spec` is `ec:P-256`, `ec:P-384`,
/// `ed25519`, `rsa:2048`, ...
pub fn openssl_key(dir: &Path, name: &str, spec: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    let mut cmd = Command::new("openssl");
    cmd.args(["genpkey", "-out"]).arg(&path);
    match spec.split_once(':') {
        Some(("ec", curve)) => cmd.args([
            "-algorithm",
            "EC",
            "-pkeyopt",
            &format!("ec_paramgen_curve:{curve}"),
        ]),
        Some(("rsa", bits)) => cmd.args([
            "-algorithm",
            "RSA",
            "-pkeyopt",
            &format!("rsa_keygen_bits:{bits}"),
        ]),
        None if spec == "ed25519" => cmd.args(["-algorithm", "ED25519"]),
        _ => bail!("unknown key spec {spec}"),
    };
    let out = run(&mut cmd);
    if !out.status.success() {
        bail!(
            "openssl genpkey {spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(path)
}

/// A PEM CSR made by `openssl req` for CN=`cn`, with `psk` in
/// `pp_preshared_key` (as `-addext ...=ASN1:UTF8String:<psk>`) and extra `-addext` values.
pub fn openssl_csr(key: &Path, cn: &str, psk: Option<&str>, addext: &[&str]) -> Result<Vec<u8>> {
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-new", "-key"])
        .arg(key)
        .args(["-subj", &format!("/CN={cn}")]);
    if let Some(psk) = psk {
        cmd.args([
            "-addext",
            &format!("1.3.6.1.4.1.34380.1.1.4=ASN1:UTF8String:{psk}"),
        ]);
    }
    for ext in addext {
        cmd.args(["-addext", ext]);
    }
    let out = run(&mut cmd);
    if !out.status.success() {
        bail!("openssl req: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Text form of a certificate as `openssl x509 -text` prints it.
pub fn openssl_text(cert: &Path) -> String {
    run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(cert),
    )
}

/// Reads a JSON error body's `error` code.
pub fn error_code(reply: &ca_client::https::Reply) -> String {
    reply
        .api_error()
        .map(|(c, _)| c)
        .unwrap_or_else(|| format!("<no JSON error: {}>", String::from_utf8_lossy(&reply.body)))
}

/// `POST /v1/sign` with `body` as `application/pkcs10` on a fresh connection.
pub async fn sign_csr(
    client: &ca_client::https::HttpsClient,
    body: impl Into<bytes::Bytes>,
) -> Result<ca_client::https::Reply, ca_client::https::TransportError> {
    client
        .send(
            http::Method::POST,
            "/v1/sign",
            Some("application/pkcs10"),
            body.into(),
        )
        .await
}

/// Runs a future on a fresh multi-threaded runtime (tests are sync).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Context helper for reading files in tests.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))
        .unwrap()
}
