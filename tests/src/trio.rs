//! nginx, HAProxy and PostgreSQL together, each installed with `ca-client
//! install` from a bootstrapped host directory and requiring client
//! certificates from the CA (PostgreSQL: the `cert` method, the
//! certificate's CN is the role). For the revocation and renewal tests: can
//! a client certificate get in, and which certificate does each serve?

use crate::fleet::{Host, client_cert_args, install, strs};
use crate::pg::PgCluster;
use crate::services::{Haproxy, Nginx, curl, free_port, served_serial};
use crate::{run, run_ok};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The three running services.
#[derive(Debug)]
pub struct Trio {
    pub nginx: Nginx,
    pub nginx_port: u16,
    pub haproxy: Haproxy,
    pub haproxy_port: u16,
    pub pg: PgCluster,
    /// The host nginx and HAProxy serve (its directory and name).
    pub web: Host,
    pub web_name: String,
    /// The host PostgreSQL serves.
    pub db: Host,
    pub db_name: String,
}

impl Trio {
    /// Whether every tool the trio needs is installed (see `require_tool`).
    pub fn tools_present() -> bool {
        ["nginx", "haproxy", "curl", "openssl", "psql"]
            .iter()
            .all(|t| crate::require_tool(t))
            && crate::pg::require_postgres()
    }

    /// Installs `web`'s material for nginx and HAProxy and `db`'s for
    /// PostgreSQL (each records its install in the host directory, for
    /// `--install` later), starts them, and creates a login role per name
    /// in `roles` (client certificates whose CN is that name get in).
    pub fn start(
        work: &Path,
        (web, web_name): (&Host, &str),
        (db, db_name): (&Host, &str),
        roles: &[&str],
    ) -> Trio {
        let nginx_port = free_port();
        let ndest = work.join("nginx/tls");
        let mut nginx = Nginx::configure(
            &work.join("nginx"),
            &format!(
                "server {{ listen 127.0.0.1:{nginx_port} ssl; server_name {web_name};\n  include {}/current/nginx-ssl.conf;\n  location / {{ return 200 \"ok\\n\"; }} }}",
                ndest.display()
            ),
        );
        let nargs = [
            "--config".to_owned(),
            nginx.conf.display().to_string(),
            "--pid-file".into(),
            nginx.pid_file.display().to_string(),
            "--probe".into(),
            format!("127.0.0.1:{nginx_port}"),
            "--client-auth".into(),
            "required".into(),
        ];
        run_ok(&mut install("nginx", web, &ndest, &strs(&nargs)));
        nginx.start(&[nginx_port]);

        let haproxy_port = free_port();
        let hdir = work.join("haproxy");
        let hdest = hdir.join("tls");
        let hargs = |h: &Haproxy| {
            vec![
                "--config".to_owned(),
                h.conf.display().to_string(),
                "--pid-file".into(),
                h.pid_file.display().to_string(),
                "--probe".into(),
                format!("127.0.0.1:{haproxy_port}"),
                "--bind".into(),
                format!("127.0.0.1:{haproxy_port}"),
                "--client-auth".into(),
                "required".into(),
            ]
        };
        // HAProxy has no include: the frontend takes the installer's bind line.
        let placeholder = Haproxy::configure(&hdir, "");
        let snippet = run_ok(
            install("haproxy", web, &hdest, &strs(&hargs(&placeholder))).arg("--print-config"),
        );
        let bind = snippet
            .lines()
            .find(|l| l.starts_with("bind "))
            .unwrap_or_else(|| panic!("no bind line in:\n{snippet}"))
            .to_owned();
        let mut haproxy = Haproxy::configure(
            &hdir,
            &format!(
                "frontend fe\n  {bind}\n  http-request return status 200 content-type text/plain string ok\n"
            ),
        );
        run_ok(&mut install(
            "haproxy",
            web,
            &hdest,
            &strs(&hargs(&haproxy)),
        ));
        haproxy.start(&[haproxy_port]);

        let pg = PgCluster::start();
        let pdest = pg.tmp.path().join("tls");
        pg.append_conf(&[(
            "include_if_exists",
            &format!("'{}/current/postgresql-ssl.conf'", pdest.display()),
        )]);
        let mut pargs = vec!["--pgdata".to_owned(), pg.data_dir().display().to_string()];
        if let Some(user) = pg.os_user() {
            pargs.extend(["--owner".to_owned(), user.to_owned()]);
        }
        run_ok(&mut install("postgres", db, &pdest, &strs(&pargs)));
        pg.write_hba("local all all trust\nhostssl all all 127.0.0.1/32 cert\n");
        pg.reload();
        for role in roles {
            pg.psql("postgres", &format!("CREATE ROLE \"{role}\" LOGIN"));
        }
        Trio {
            nginx,
            nginx_port,
            haproxy,
            haproxy_port,
            pg,
            web: web.clone(),
            web_name: web_name.to_owned(),
            db: db.clone(),
            db_name: db_name.to_owned(),
        }
    }

    fn ca_file(host: &Host) -> PathBuf {
        host.dir.join("ca.pem")
    }

    /// `Ok` if nginx answers 200 to `client`'s certificate (it answers 400
    /// to a refused certificate), else what it did.
    pub fn nginx_lets_in(&self, client: &Host) -> Result<(), String> {
        self.curl_lets_in(self.nginx_port, client)
    }

    /// `Ok` if HAProxy answers 200 to `client`'s certificate (it fails the
    /// handshake for a refused one).
    pub fn haproxy_lets_in(&self, client: &Host) -> Result<(), String> {
        self.curl_lets_in(self.haproxy_port, client)
    }

    fn curl_lets_in(&self, port: u16, client: &Host) -> Result<(), String> {
        let (code, status, err) = curl(
            &self.web_name,
            port,
            &Trio::ca_file(&self.web),
            &strs(&client_cert_args(client)),
        );
        match (code, status.as_str()) {
            (0, "200") => Ok(()),
            _ => Err(format!("curl exit {code}, HTTP {status}: {err}")),
        }
    }

    /// `Ok` if PostgreSQL lets `client` log in as `role` with its certificate
    /// (`sslmode=verify-full` against the CA, too).
    pub fn postgres_lets_in(&self, client: &Host, role: &str) -> Result<(), String> {
        let conninfo = format!(
            "sslmode=verify-full sslrootcert={} host={} hostaddr=127.0.0.1 port={} dbname=postgres user={role} sslcert={} sslkey={}",
            Trio::ca_file(&self.db).display(),
            self.db_name,
            self.pg.port,
            client.dir.join("chain.pem").display(),
            client.dir.join("key.pem").display()
        );
        let out = run(Command::new("psql")
            .env("PGCONNECT_TIMEOUT", "20")
            .args(["-X", "-A", "-t", "-w", "-c", "SELECT current_user"])
            .arg(conninfo));
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && stdout == role {
            Ok(())
        } else {
            Err(format!(
                "psql {}: {stdout} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Every service lets `client` (role `role`) in, or the first refusal.
    pub fn all_let_in(&self, client: &Host, role: &str) -> Result<(), String> {
        self.nginx_lets_in(client)
            .map_err(|e| format!("nginx: {e}"))?;
        self.haproxy_lets_in(client)
            .map_err(|e| format!("haproxy: {e}"))?;
        self.postgres_lets_in(client, role)
            .map_err(|e| format!("postgres: {e}"))
    }

    /// The serials nginx, HAProxy and PostgreSQL serve (verified with
    /// `openssl s_client -verify_return_error`; HAProxy and nginx are asked
    /// with `client`'s certificate, which they require).
    pub fn served(&self, client: &Host) -> [Result<String, String>; 3] {
        let cert = [
            "-cert".to_owned(),
            client.dir.join("cert.pem").display().to_string(),
            "-cert_chain".into(),
            client.dir.join("chain.pem").display().to_string(),
            "-key".into(),
            client.dir.join("key.pem").display().to_string(),
        ];
        [
            served_serial(
                self.nginx_port,
                &self.web_name,
                &Trio::ca_file(&self.web),
                &strs(&cert),
            ),
            served_serial(
                self.haproxy_port,
                &self.web_name,
                &Trio::ca_file(&self.web),
                &strs(&cert),
            ),
            served_serial(
                self.pg.port,
                &self.db_name,
                &Trio::ca_file(&self.db),
                &["-starttls", "postgres"],
            ),
        ]
    }

    /// The services' logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- nginx\n{}\n--- haproxy\n{}\n--- postgres\n{}",
            self.nginx.logs(),
            self.haproxy.logs(),
            self.pg.log()
        )
    }
}
