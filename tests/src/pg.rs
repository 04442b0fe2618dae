//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory, listening on 127.0.0.1 and a free port, stopped (immediate
//! mode) and removed on drop. PostgreSQL refuses to run as root, so under
//! root the cluster runs as the `postgres` system user.

use crate::{in_ci, run, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The directory holding `initdb`, `postgres` and `pg_ctl`, if PostgreSQL is installed.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// `true` if PostgreSQL server binaries are installed; under CI a missing
/// server fails the test, elsewhere it skips with a message.
pub fn require_postgres() -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if in_ci() {
        panic!(
            "PostgreSQL server binaries are required under CI=true (scripts/test.sh installs postgresql)"
        );
    }
    eprintln!(
        "SKIP: PostgreSQL is not installed (run scripts/test.sh to install test dependencies)"
    );
    false
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A running cluster.
#[derive(Debug)]
pub struct PgCluster {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    run_as: Option<String>,
    running: bool,
}

impl PgCluster {
    /// Initialises and starts a cluster with a `postgres` superuser (trust
    /// authentication on the Unix socket and 127.0.0.1).
    pub fn start() -> PgCluster {
        let bin = bin_dir().expect("PostgreSQL is installed (check require_postgres first)");
        let tmp = tempfile::Builder::new()
            .prefix("ca-pg-")
            .tempdir()
            .expect("tempdir");
        let run_as = is_root().then(|| "postgres".to_string());
        let data = tmp.path().join("data");
        let socket_dir = tmp.path().join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        if let Some(user) = &run_as {
            // The postgres user must own everything the server touches.
            let uid = user_id(user);
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&socket_dir, Some(uid.0), Some(uid.1)).unwrap();
            std::os::unix::fs::chown(tmp.path(), Some(uid.0), Some(uid.1)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cluster = PgCluster {
            tmp,
            data,
            socket_dir,
            port,
            bin,
            run_as,
            running: false,
        };
        let out = run(cluster
            .command("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.append_conf(&[
            ("listen_addresses", "'127.0.0.1'"),
            ("port", &port.to_string()),
            (
                "unix_socket_directories",
                &format!("'{}'", cluster.socket_dir.display()),
            ),
            ("fsync", "off"),
            ("max_connections", "200"),
        ]);
        cluster.start_server();
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    /// Appends settings to postgresql.conf (applied on the next start or reload).
    pub fn append_conf(&self, settings: &[(&str, &str)]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .unwrap();
        for (k, v) in settings {
            writeln!(f, "{k} = {v}").unwrap();
        }
    }

    /// Replaces pg_hba.conf (applied on the next start or reload).
    pub fn write_hba(&self, contents: &str) {
        std::fs::write(self.data.join("pg_hba.conf"), contents).unwrap();
    }

    /// The OS user the server runs as (for file ownership of keys it reads).
    pub fn os_user(&self) -> Option<&str> {
        self.run_as.as_deref()
    }

    fn start_server(&mut self) {
        let log = self.tmp.path().join("postgres.log");
        let out = run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]));
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
        wait_for(
            Duration::from_secs(30),
            "PostgreSQL to accept connections",
            || self.try_psql("postgres", "SELECT 1").ok(),
        );
    }

    /// Stops the server (fast mode), keeping the data.
    pub fn stop(&mut self) {
        if self.running {
            let _ = run(self
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"]));
            self.running = false;
        }
    }

    /// Starts the server again after `stop`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_server();
    }

    /// Reloads the configuration (pg_hba.conf, postgresql.conf).
    pub fn reload(&self) {
        let out = run(self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("reload"));
        assert!(
            out.status.success(),
            "pg_ctl reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("postgres.log")).unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned output.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-c",
                sql,
            ]));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL that must succeed.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// Creates database `name` and returns server options that use it.
    pub fn server_options(&self, name: &str) -> crate::ServerOptions {
        crate::ServerOptions {
            database_url: Some(self.create_database(name)),
            ..Default::default()
        }
    }

    /// The data directory (for postgresql.conf paths).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

/// uid and gid of a system user, from /etc/passwd.
pub fn user_id(user: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == user {
            return (f[2].parse().unwrap(), f[3].parse().unwrap());
        }
    }
    panic!("no user {user} in /etc/passwd");
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = run(self.command("pg_ctl").arg("-D").arg(&self.data).args([
                "-m",
                "immediate",
                "-w",
                "stop",
            ]));
        }
    }
}
