//! Real nginx and HAProxy daemons for the installer tests, plus the openssl
//! probes that read which certificate a service serves. Daemons run in the
//! foreground in their own process group, listen on 127.0.0.1 free ports,
//! keep every file in the test's temporary directory, and are stopped
//! (the whole group) on drop.

use crate::{run, wait_for};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free TCP port on 127.0.0.1 (bound, then released for the daemon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A foreground daemon in its own process group.
#[derive(Debug)]
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path, ports: &[u16]) -> Daemon {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).unwrap();
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let mut d = Daemon {
            child,
            log: log.to_path_buf(),
        };
        for port in ports {
            wait_for(
                Duration::from_secs(30),
                &format!("{name} to listen on {port}"),
                || {
                    if let Some(status) = d.child.try_wait().ok().flatten() {
                        panic!("{name} exited early ({status}):\n{}", d.logs());
                    }
                    std::net::TcpStream::connect(("127.0.0.1", *port))
                        .ok()
                        .map(|_| ())
                },
            );
        }
        d
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The daemon leads its own group; signal the group so that workers
        // left by a reload go too.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-TERM", "--", &group])
            .stderr(Stdio::null())
            .status();
        let exited = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            self.child.try_wait().ok().flatten().is_some()
        });
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        if !exited {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// An nginx master (and workers) with its configuration in `dir`.
#[derive(Debug)]
pub struct Nginx {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub pid_file: PathBuf,
    daemon: Option<Daemon>,
}

impl Nginx {
    /// Writes `dir/nginx.conf` around `servers` (server blocks for the http
    /// context); call [`Nginx::start`] after the TLS files exist.
    pub fn configure(dir: &Path, servers: &str) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(dir.join(format!("{t}_temp"))).unwrap();
        }
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n\
                 client_body_temp_path {d}/client_body_temp;\n  proxy_temp_path {d}/proxy_temp;\n\
                 fastcgi_temp_path {d}/fastcgi_temp;\n  uwsgi_temp_path {d}/uwsgi_temp;\n\
                 scgi_temp_path {d}/scgi_temp;\n{servers}\n}}\n"
            ),
        )
        .unwrap();
        Nginx {
            dir: dir.to_path_buf(),
            pid_file: dir.join("nginx.pid"),
            conf,
            daemon: None,
        }
    }

    /// Starts nginx and waits until every port accepts connections.
    pub fn start(&mut self, ports: &[u16]) {
        let mut cmd = Command::new(program("nginx"));
        cmd.arg("-p").arg(&self.dir).arg("-c").arg(&self.conf);
        self.daemon = Some(Daemon::spawn(
            "nginx",
            &mut cmd,
            &self.dir.join("stderr.log"),
            ports,
        ));
    }

    /// nginx's error log and stderr.
    pub fn logs(&self) -> String {
        let err = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
        let stderr = self.daemon.as_ref().map(Daemon::logs).unwrap_or_default();
        format!("{err}{stderr}")
    }
}

/// A HAProxy master-worker process with its configuration in `dir`.
#[derive(Debug)]
pub struct Haproxy {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub pid_file: PathBuf,
    /// Environment for the process (`"${VAR}"` in the configuration).
    pub env: Vec<(String, String)>,
    daemon: Option<Daemon>,
}

impl Haproxy {
    /// Writes `dir/haproxy.cfg` with `sections` (frontends) after a minimal
    /// global and defaults section.
    pub fn configure(dir: &Path, sections: &str) -> Haproxy {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("haproxy.cfg");
        std::fs::write(
            &conf,
            format!(
                "global\n  log stderr local0 notice\n\
                 defaults\n  log global\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 {sections}\n"
            ),
        )
        .unwrap();
        Haproxy::with_config(dir, &conf)
    }

    /// Uses the configuration file `conf` as it is (logs and pid in `dir`).
    pub fn with_config(dir: &Path, conf: &Path) -> Haproxy {
        std::fs::create_dir_all(dir).unwrap();
        Haproxy {
            dir: dir.to_path_buf(),
            pid_file: dir.join("haproxy.pid"),
            conf: conf.to_path_buf(),
            env: Vec::new(),
            daemon: None,
        }
    }

    /// `haproxy -c`: the configuration is valid (with [`Haproxy::env`]).
    pub fn check(&self) -> std::process::Output {
        run(Command::new(program("haproxy"))
            .arg("-c")
            .arg("-f")
            .arg(&self.conf)
            .envs(self.env.iter().cloned()))
    }

    /// Starts HAProxy in master-worker mode (as Debian's unit does) in the
    /// foreground and waits until every port accepts connections.
    pub fn start(&mut self, ports: &[u16]) {
        let mut cmd = Command::new(program("haproxy"));
        cmd.args(["-W", "-db", "-f"])
            .arg(&self.conf)
            .arg("-p")
            .arg(&self.pid_file)
            .envs(self.env.iter().cloned());
        self.daemon = Some(Daemon::spawn(
            "haproxy",
            &mut cmd,
            &self.dir.join("haproxy.log"),
            ports,
        ));
    }

    pub fn logs(&self) -> String {
        self.daemon.as_ref().map(Daemon::logs).unwrap_or_default()
    }
}

/// A daemon binary from PATH or the sbin directories.
pub fn program(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A serial as lowercase hex without leading zeros (openssl prints
/// uppercase without the DER sign byte; ca-client lowercase with it).
pub fn norm_serial(s: &str) -> String {
    let s = s.trim().trim_start_matches("serial=").to_ascii_lowercase();
    let t = s.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

/// The serial of the certificate served on 127.0.0.1:`port` for `sni`, by
/// `openssl s_client -verify_return_error` against `ca_file` (so the chain
/// must verify for the name), with `extra` arguments (e.g. `-starttls
/// postgres`, or `-cert`/`-key` for a client certificate).
pub fn served_serial(
    port: u16,
    sni: &str,
    ca_file: &Path,
    extra: &[&str],
) -> Result<String, String> {
    let out = run(Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-servername",
            sni,
            "-verify_hostname",
            sni,
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(ca_file)
        .args(extra));
    if !out.status.success() {
        return Err(format!(
            "openssl s_client failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    x509.stdin
        .take()
        .unwrap()
        .write_all(&out.stdout)
        .map_err(|e| e.to_string())?;
    let parsed = x509.wait_with_output().map_err(|e| e.to_string())?;
    if !parsed.status.success() {
        return Err(format!(
            "no certificate in the s_client output: {}",
            String::from_utf8_lossy(&parsed.stderr)
        ));
    }
    Ok(norm_serial(&String::from_utf8_lossy(&parsed.stdout)))
}

/// `curl` over HTTPS to `https://host:port/` resolved to 127.0.0.1 with
/// certificate verification against `ca_file`; returns (curl exit code,
/// HTTP status as curl printed it, stderr).
pub fn curl(host: &str, port: u16, ca_file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = run(Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1"), "--cacert"])
        .arg(ca_file)
        .args(extra)
        .arg(format!("https://{host}:{port}/")));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Prometheus server (Debian's `prometheus`) scraping one HTTPS target
/// every second, its storage and configuration in `dir`.
#[derive(Debug)]
pub struct Prometheus {
    pub port: u16,
    _daemon: Daemon,
}

impl Prometheus {
    /// Scrapes `https://<target>/metrics`, trusting `ca_file` and checking
    /// the certificate for `server_name`.
    pub fn start(dir: &Path, target: &str, ca_file: &Path, server_name: &str) -> Prometheus {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: ca\n    scheme: https\n\
                 \x20   tls_config:\n      ca_file: {}\n      server_name: {server_name}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n",
                ca_file.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let daemon = Daemon::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", conf.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}")),
            &dir.join("prometheus.log"),
            &[port],
        );
        Prometheus {
            port,
            _daemon: daemon,
        }
    }

    /// The samples of an instant query, as (labels, value) pairs.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let out = run(Command::new("curl").args([
            "-sS",
            "--fail",
            "--get",
            "--data-urlencode",
            &format!("query={expr}"),
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
        ]));
        if !out.status.success() {
            return Vec::new();
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| {
                let value = r["value"][1].as_str()?.parse().ok()?;
                Some((r["metric"].clone(), value))
            })
            .collect()
    }
}
