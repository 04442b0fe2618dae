//! `ca-client install` with the real nginx, PostgreSQL and HAProxy on
//! 127.0.0.1: what they serve is checked with curl, openssl s_client and
//! psql (sslmode=verify-full); re-installs switch the served serial while a
//! handshake loop runs; failed installs leave the previous certificate served.

use ca_tests::fleet::{
    HandshakeLoop, Host, assert_switched, bootstrap, client_cert_args, install, strs,
};
use ca_tests::pg::{self, PgCluster};
use ca_tests::services::{Haproxy, Nginx, curl, free_port, served_serial};
use ca_tests::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const WEB: &str = "web.example.internal";
const CLIENT: &str = "client1.example.internal";

/// A CA with a server host and a client host bootstrapped, and a second
/// CA that issued a certificate for the same client name (the intruder).
struct Fleet {
    ca: CaServer,
    work: tempfile::TempDir,
    server: Host,
    client: Host,
    intruder: Host,
}

impl Fleet {
    fn new(server_name: &str, client_name: &str) -> Fleet {
        let mut ca = CaServer::start();
        // Only its certificate is needed; the second CA stops after this.
        let mut other_ca = CaServer::start();
        let work = tempfile::tempdir().unwrap();
        let server = bootstrap(&mut ca, server_name, work.path(), "server");
        let client = bootstrap(&mut ca, client_name, work.path(), "client");
        let intruder = bootstrap(&mut other_ca, client_name, work.path(), "intruder");
        Fleet {
            ca,
            work,
            server,
            client,
            intruder,
        }
    }
}

/// Runs an install that must fail; returns (exit code, stderr).
fn install_fails(cmd: &mut Command) -> (i32, String) {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the install should have failed:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), stderr)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn euid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// The generation `DEST/current` points to.
fn live_generation(dest: &Path) -> String {
    std::fs::read_link(dest.join("current"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Names of the generation directories in DEST.
fn generations(dest: &Path) -> Vec<String> {
    let mut g: Vec<String> = std::fs::read_dir(dest)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    g.sort();
    g
}

fn nginx_servers(open_port: u16, mtls_port: u16, dest: &Path) -> String {
    let inc = format!("include {}/current/nginx-ssl.conf;", dest.display());
    format!(
        "server {{ listen 127.0.0.1:{open_port} ssl; server_name {WEB}; {inc}\n  location / {{ return 200 \"ok\\n\"; }} }}\n\
         server {{ listen 127.0.0.1:{mtls_port} ssl; server_name {WEB}; {inc}\n  ssl_verify_client on;\n  location / {{ return 200 \"ok\\n\"; }} }}"
    )
}

fn nginx_args(nginx: &Nginx, port: u16) -> Vec<String> {
    vec![
        "--config".into(),
        nginx.conf.display().to_string(),
        "--pid-file".into(),
        nginx.pid_file.display().to_string(),
        "--probe".into(),
        format!("127.0.0.1:{port}"),
    ]
}

#[test]
fn nginx_serves_the_installed_certificate_and_checks_client_certificates() {
    if !require_tool("nginx") || !require_tool("curl") || !require_tool("openssl") {
        return;
    }
    let Fleet {
        ca: _ca,
        work,
        server: web,
        client,
        intruder,
        ..
    } = Fleet::new(WEB, CLIENT);

    let (open_port, mtls_port) = (free_port(), free_port());
    let dest = work.path().join("nginx/tls");
    let mut nginx = Nginx::configure(
        &work.path().join("nginx"),
        &nginx_servers(open_port, mtls_port, &dest),
    );
    let args = nginx_args(&nginx, open_port);

    // --print-config shows the snippet and installs nothing.
    let printed = run_ok(install("nginx", &web, &dest, &strs(&args)).arg("--print-config"));
    assert!(!dest.exists(), "--print-config must not install");
    let current = format!("{}/current", dest.display());
    for line in [
        format!("ssl_certificate         {current}/fullchain.pem;"),
        format!("ssl_certificate_key     {current}/privkey.pem;"),
        format!("ssl_client_certificate  {current}/ca.pem;"),
        format!("ssl_trusted_certificate {current}/ca.pem;"),
    ] {
        assert!(printed.contains(&line), "{line} missing from:\n{printed}");
    }
    assert!(!printed.contains("ssl_crl "), "no CRL yet:\n{printed}");

    // nginx is not running: the files go in, `nginx -t` passes, no reload.
    let out = run_ok(&mut install("nginx", &web, &dest, &strs(&args)));
    assert!(out.contains("(not running)"), "{out}");
    assert!(out.contains(&format!("serial={}", web.raw_serial)), "{out}");
    assert_eq!(
        std::fs::read_to_string(dest.join("current/nginx-ssl.conf")).unwrap(),
        printed
    );
    // Layout, modes and owners (no --owner: the installing user).
    let cur = dest.join("current");
    assert_eq!(mode(&cur.join("privkey.pem")), 0o600);
    for f in ["fullchain.pem", "ca.pem", "nginx-ssl.conf"] {
        assert_eq!(mode(&cur.join(f)), 0o644, "{f}");
    }
    for f in ["privkey.pem", "fullchain.pem", "ca.pem"] {
        assert_eq!(owner(&cur.join(f)).0, euid(), "{f}");
    }
    let fullchain = String::from_utf8(read(&cur.join("fullchain.pem"))).unwrap();
    assert_eq!(fullchain.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(read(&cur.join("ca.pem")), read(&web.dir.join("ca.pem")));

    nginx.start(&[open_port, mtls_port]);
    let ca_pem = web.dir.join("ca.pem");
    // Server verification by curl (hostname checked via --resolve) and openssl.
    let (code, status, err) = curl(WEB, open_port, &ca_pem, &[]);
    assert_eq!(
        (code, status.as_str()),
        (0, "200"),
        "{err}\n{}",
        nginx.logs()
    );
    assert_eq!(
        served_serial(open_port, WEB, &ca_pem, &[]).unwrap(),
        web.serial
    );
    // A client that trusts another CA refuses the server.
    let (code, _, _) = curl(WEB, open_port, &intruder.dir.join("ca.pem"), &[]);
    assert_eq!(code, 60, "curl must refuse a server from another CA");

    // ssl_verify_client on: our client certificate in, none or another CA's out.
    let (code, status, err) = curl(WEB, mtls_port, &ca_pem, &strs(&client_cert_args(&client)));
    assert_eq!(
        (code, status.as_str()),
        (0, "200"),
        "{err}\n{}",
        nginx.logs()
    );
    let (_, status, _) = curl(WEB, mtls_port, &ca_pem, &[]);
    assert_eq!(status, "400", "no client certificate must be refused");
    let (_, status, _) = curl(WEB, mtls_port, &ca_pem, &strs(&client_cert_args(&intruder)));
    assert_eq!(
        status, "400",
        "another CA's client certificate must be refused"
    );
    assert!(
        nginx.logs().contains("client SSL certificate verify error"),
        "{}",
        nginx.logs()
    );
}

#[test]
fn nginx_reinstall_switches_without_dropping_and_failed_installs_keep_the_previous() {
    if !require_tool("nginx") || !require_tool("openssl") {
        return;
    }
    let mut ca = CaServer::start();
    let work = tempfile::tempdir().unwrap();
    let first = bootstrap(&mut ca, WEB, work.path(), "first");
    let (port, mtls_port) = (free_port(), free_port());
    let dest = work.path().join("nginx/tls");
    let mut nginx = Nginx::configure(
        &work.path().join("nginx"),
        &nginx_servers(port, mtls_port, &dest),
    );
    let args = nginx_args(&nginx, port);
    run_ok(&mut install("nginx", &first, &dest, &strs(&args)));
    nginx.start(&[port, mtls_port]);
    let ca_pem = first.dir.join("ca.pem");
    assert_eq!(
        served_serial(port, WEB, &ca_pem, &[]).unwrap(),
        first.serial
    );

    // A second bootstrap (new key, new certificate) re-installed while a
    // handshake loop runs: every handshake succeeds and the serial switches.
    let second = bootstrap(&mut ca, WEB, work.path(), "second");
    assert_ne!(second.serial, first.serial);
    let handshakes = HandshakeLoop::start(port, WEB, &ca_pem, &[]);
    let out = run_ok(&mut install("nginx", &second, &dest, &strs(&args)));
    assert!(out.contains("(reloaded, new certificate served)"), "{out}");
    assert_switched(
        &handshakes.finish(&second.serial),
        &first.serial,
        &second.serial,
    );
    assert_eq!(generations(&dest).len(), 1, "the old generation is removed");
    let live = live_generation(&dest);

    // A key that does not match: refused before anything goes live.
    let third = bootstrap(&mut ca, WEB, work.path(), "third");
    std::fs::copy(first.dir.join("key.pem"), third.dir.join("key.pem")).unwrap();
    let (code, err) = install_fails(&mut install("nginx", &third, &dest, &strs(&args)));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(live_generation(&dest), live);
    assert_eq!(generations(&dest), vec![live.clone()]);
    assert_eq!(
        served_serial(port, WEB, &ca_pem, &[]).unwrap(),
        second.serial
    );

    // A broken nginx configuration: `nginx -t` fails after the switch, the
    // previous files are put back, nginx's own message is shown, exit 7.
    let fourth = bootstrap(&mut ca, WEB, work.path(), "fourth");
    let conf = std::fs::read_to_string(&nginx.conf).unwrap();
    std::fs::write(
        &nginx.conf,
        format!("{conf}\nthis_is_not_a_directive on;\n"),
    )
    .unwrap();
    let (code, err) = install_fails(&mut install("nginx", &fourth, &dest, &strs(&args)));
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("[emerg]") && err.contains("test failed"),
        "nginx's message: {err}"
    );
    assert!(err.contains("this_is_not_a_directive"), "{err}");
    assert!(err.contains("previous files were put back"), "{err}");
    assert_eq!(live_generation(&dest), live);
    assert_eq!(generations(&dest), vec![live.clone()]);
    assert_eq!(
        served_serial(port, WEB, &ca_pem, &[]).unwrap(),
        second.serial
    );

    // Once the configuration is fixed, the same material installs; this
    // time reloaded by an operator's command (`nginx -s reload`) instead of
    // the signal, still confirmed by the probe.
    std::fs::write(&nginx.conf, conf).unwrap();
    let reload = format!(
        "{} -s reload -c {}",
        ca_tests::services::program("nginx").display(),
        nginx.conf.display()
    );
    let out = run_ok(install("nginx", &fourth, &dest, &strs(&args)).args(["--reload", &reload]));
    assert!(out.contains("(reloaded, new certificate served)"), "{out}");
    // The probe saw a new worker; an old one may take a handshake or two
    // more while it drains.
    wait_for(
        std::time::Duration::from_secs(30),
        "only the new certificate to be served",
        || (served_serial(port, WEB, &ca_pem, &[]).ok()? == fourth.serial).then_some(()),
    );
}

#[test]
fn haproxy_serves_the_combined_pem_and_requires_our_client_certificates() {
    if !require_tool("haproxy") || !require_tool("curl") || !require_tool("openssl") {
        return;
    }
    let Fleet {
        mut ca,
        work,
        server: web,
        client,
        intruder,
        ..
    } = Fleet::new(WEB, CLIENT);

    let port = free_port();
    let dest = work.path().join("haproxy/tls");
    let hdir = work.path().join("haproxy");
    let flags = |h: &Haproxy| -> Vec<String> {
        vec![
            "--config".into(),
            h.conf.display().to_string(),
            "--pid-file".into(),
            h.pid_file.display().to_string(),
            "--probe".into(),
            format!("127.0.0.1:{port}"),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
            "--client-auth".into(),
            "required".into(),
        ]
    };
    // The bind line comes from the installer's own snippet.
    let placeholder = Haproxy::configure(&hdir, "");
    let snippet =
        run_ok(install("haproxy", &web, &dest, &strs(&flags(&placeholder))).arg("--print-config"));
    let bind = snippet
        .lines()
        .find(|l| l.starts_with("bind "))
        .unwrap_or_else(|| panic!("no bind line in:\n{snippet}"));
    let current = format!("{}/current", dest.display());
    assert_eq!(
        bind,
        format!(
            "bind 127.0.0.1:{port} ssl crt {current}/haproxy.pem ca-file {current}/ca.pem verify required"
        )
    );
    let mut haproxy = Haproxy::configure(
        &hdir,
        &format!(
            "frontend fe\n  {bind}\n  http-request return status 200 content-type text/plain string ok\n"
        ),
    );
    let args = flags(&haproxy);
    let out = run_ok(&mut install("haproxy", &web, &dest, &strs(&args)));
    assert!(out.contains("(not running)"), "{out}");
    let cur = dest.join("current");
    assert_eq!(mode(&cur.join("haproxy.pem")), 0o600);
    assert_eq!(mode(&cur.join("ca.pem")), 0o644);
    assert_eq!(owner(&cur.join("haproxy.pem")).0, euid());
    let combined = String::from_utf8(read(&cur.join("haproxy.pem"))).unwrap();
    assert_eq!(combined.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(combined.matches("BEGIN PRIVATE KEY").count(), 1);
    assert!(
        combined.find("BEGIN CERTIFICATE") < combined.find("BEGIN PRIVATE KEY"),
        "leaf, intermediate, then key"
    );

    haproxy.start(&[port]);
    let ca_pem = web.dir.join("ca.pem");
    let client_s = [
        "-cert".to_owned(),
        client.dir.join("cert.pem").display().to_string(),
        "-cert_chain".to_owned(),
        client.dir.join("chain.pem").display().to_string(),
        "-key".to_owned(),
        client.dir.join("key.pem").display().to_string(),
    ];
    // openssl s_client -verify_return_error verifies the served chain.
    assert_eq!(
        served_serial(port, WEB, &ca_pem, &strs(&client_s)).unwrap(),
        web.serial,
        "{}",
        haproxy.logs()
    );
    // verify required: our client certificate in; none, or another CA's, out.
    let (code, status, err) = curl(WEB, port, &ca_pem, &strs(&client_cert_args(&client)));
    assert_eq!(
        (code, status.as_str()),
        (0, "200"),
        "{err}\n{}",
        haproxy.logs()
    );
    let (code, _, err) = curl(WEB, port, &ca_pem, &[]);
    assert_ne!(code, 0, "no client certificate must be refused: {err}");
    let (code, _, err) = curl(WEB, port, &ca_pem, &strs(&client_cert_args(&intruder)));
    assert_ne!(
        code, 0,
        "another CA's client certificate must be refused: {err}"
    );

    // Re-install under a handshake loop (SIGUSR2 to the master).
    let second = bootstrap(&mut ca, WEB, work.path(), "second");
    let handshakes = HandshakeLoop::start(port, WEB, &ca_pem, &strs(&client_s));
    let out = run_ok(&mut install("haproxy", &second, &dest, &strs(&args)));
    assert!(out.contains("(reloaded, new certificate served)"), "{out}");
    assert_switched(
        &handshakes.finish(&second.serial),
        &web.serial,
        &second.serial,
    );
    let live = live_generation(&dest);

    // A broken configuration: `haproxy -c` refuses, the previous files stay.
    let third = bootstrap(&mut ca, WEB, work.path(), "third");
    let conf = std::fs::read_to_string(&haproxy.conf).unwrap();
    std::fs::write(&haproxy.conf, format!("{conf}\n  bogus-keyword here\n")).unwrap();
    let (code, err) = install_fails(&mut install("haproxy", &third, &dest, &strs(&args)));
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("[ALERT]"), "HAProxy's message: {err}");
    assert!(err.contains("bogus-keyword"), "{err}");
    assert_eq!(live_generation(&dest), live);
    assert_eq!(generations(&dest), vec![live]);
    assert_eq!(
        served_serial(port, WEB, &ca_pem, &strs(&client_s)).unwrap(),
        second.serial
    );
}

#[test]
fn postgres_verify_full_client_certificates_reinstall_and_rollback() {
    if !pg::require_postgres() || !require_tool("openssl") || !require_tool("psql") {
        return;
    }
    const DB: &str = "db.example.internal";
    const APP: &str = "app.example.internal";
    let cluster = PgCluster::start();
    let Fleet {
        mut ca,
        work,
        server: db,
        client: app,
        intruder,
        ..
    } = Fleet::new(DB, APP);

    // DEST must be reachable by the server's user (the cluster's directory is).
    let dest = cluster.tmp.path().join("tls");
    let current = format!("{}/current", dest.display());
    cluster.append_conf(&[(
        "include_if_exists",
        &format!("'{current}/postgresql-ssl.conf'"),
    )]);
    let mut args = vec![
        "--pgdata".to_owned(),
        cluster.data_dir().display().to_string(),
    ];
    if let Some(user) = cluster.os_user() {
        args.extend(["--owner".to_owned(), user.to_owned()]);
    }
    // PostgreSQL runs with ssl off; the install's reload turns it on with our files.
    let out = run_ok(&mut install("postgres", &db, &dest, &strs(&args)));
    assert!(
        out.contains("(reloaded, new certificate served)"),
        "{out}\n{}",
        cluster.log()
    );
    let snippet = std::fs::read_to_string(dest.join("current/postgresql-ssl.conf")).unwrap();
    for line in [
        "ssl = on".to_owned(),
        format!("ssl_cert_file = '{current}/server.crt'"),
        format!("ssl_key_file = '{current}/server.key'"),
        format!("ssl_ca_file = '{current}/root.crt'"),
    ] {
        assert!(snippet.contains(&line), "{line} missing:\n{snippet}");
    }

    // Modes and owners: the key 0600 owned by the server's user.
    let cur = dest.join("current");
    let (uid, gid) = cluster
        .os_user()
        .map(pg::user_id)
        .unwrap_or((euid(), owner(&cur).1));
    assert_eq!(mode(&cur.join("server.key")), 0o600);
    assert_eq!(owner(&cur.join("server.key")), (uid, gid));
    for f in ["server.crt", "root.crt"] {
        assert_eq!(mode(&cur.join(f)), 0o644, "{f}");
        assert_eq!(owner(&cur.join(f)).0, uid, "{f}");
    }
    let starttls = ["-starttls", "postgres"];
    let ca_pem = db.dir.join("ca.pem");
    assert_eq!(
        served_serial(cluster.port, DB, &ca_pem, &starttls).unwrap(),
        db.serial
    );

    // pg_hba: the installer's hostssl rule for the app, trust for the superuser's checks.
    let hba_line = std::fs::read_to_string(cur.join("pg_hba-ssl.conf")).unwrap();
    assert!(hba_line.contains("hostssl all all all scram-sha-256 clientcert=verify-full"));
    cluster.write_hba(&format!(
        "local all all trust\nhostssl all postgres 127.0.0.1/32 trust\n{hba_line}"
    ));
    cluster.reload();
    cluster.psql(
        "postgres",
        &format!("CREATE ROLE \"{APP}\" LOGIN PASSWORD 'app-password'"),
    );

    let psql = |user: &str, cert: Option<&Host>| {
        let (sslcert, sslkey) = match cert {
            Some(h) => (h.dir.join("chain.pem"), h.dir.join("key.pem")),
            None => (work.path().join("none.crt"), work.path().join("none.key")),
        };
        let conninfo = format!(
            "sslmode=verify-full sslrootcert={} host={DB} hostaddr=127.0.0.1 port={} dbname=postgres user={user} sslcert={} sslkey={}",
            ca_pem.display(),
            cluster.port,
            sslcert.display(),
            sslkey.display()
        );
        run(Command::new("psql")
            .env("PGPASSWORD", "app-password")
            .env("PGCONNECT_TIMEOUT", "20")
            .args(["-X", "-A", "-t", "-w", "-c"])
            .arg("SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .arg(conninfo))
    };
    // verify-full against ca.pem with the host name.
    let out = psql("postgres", None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "postgres|t");
    // clientcert=verify-full: the CA's certificate for that user name is accepted...
    let out = psql(APP, Some(&app));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        cluster.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{APP}|t")
    );
    // ...none, another CA's, or one for another name is refused.
    for (what, cert) in [
        ("no certificate", None),
        ("another CA's", Some(&intruder)),
        ("another name's", Some(&db)),
    ] {
        let out = psql(APP, cert);
        assert!(!out.status.success(), "{what} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        // A wrong name fails after the password, with the method's message.
        assert!(
            err.contains("certificate")
                || err.contains("SSL")
                || err.contains("authentication failed"),
            "{what}: {err}"
        );
    }
    assert!(
        cluster.log().contains("CN mismatch"),
        "PostgreSQL names the refusal:\n{}",
        cluster.log()
    );

    // Re-install (a second bootstrap) while handshaking: the serial switches.
    let db2 = bootstrap(&mut ca, DB, work.path(), "db2");
    let handshakes = HandshakeLoop::start(cluster.port, DB, &ca_pem, &starttls);
    let out = run_ok(&mut install("postgres", &db2, &dest, &strs(&args)));
    assert!(out.contains("(reloaded, new certificate served)"), "{out}");
    assert_switched(&handshakes.finish(&db2.serial), &db.serial, &db2.serial);
    let out = psql(APP, Some(&app));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live = live_generation(&dest);

    // A key the server cannot read (installed without --owner under root):
    // PostgreSQL keeps its old SSL context, the probe sees the old serial,
    // the install rolls back and exits 7.
    if cluster.os_user().is_some() {
        let db3 = bootstrap(&mut ca, DB, work.path(), "db3");
        let args = [
            "--pgdata".to_owned(),
            cluster.data_dir().display().to_string(),
            "--probe-timeout".into(),
            "5s".into(),
        ];
        let (code, err) = install_fails(&mut install("postgres", &db3, &dest, &strs(&args)));
        assert_eq!(code, 7, "{err}");
        assert!(err.contains("still serves serial"), "{err}");
        assert!(err.contains("previous files were put back"), "{err}");
        assert_eq!(live_generation(&dest), live);
        assert_eq!(generations(&dest), vec![live]);
        assert_eq!(owner(&cur.join("server.key")), (uid, gid));
        assert!(
            cluster.log().contains("SSL configuration was not reloaded"),
            "{}",
            cluster.log()
        );
        assert_eq!(
            served_serial(cluster.port, DB, &ca_pem, &starttls).unwrap(),
            db2.serial
        );
        let out = psql(APP, Some(&app));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("NOTE: not root: the unreadable-key rollback case needs root and is not run");
    }
}
