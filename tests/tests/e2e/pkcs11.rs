//! CA keys in a PKCS#11 token (issue 20) with SoftHSM2 and OpenSC's
//! `pkcs11-tool`: a token made by each test in its own directory; init in
//! the token, a bootstrap, a CRL and OCSP signed in it and checked by
//! openssl, every key sensitive and never extractable, no key file on disk,
//! start-up failures naming their cause, a lost token answered with 503
//! and recovered, and `intermediate rotate` in the token.

use bytes::Bytes;
use ca_tests::fleet::{Host, bootstrap};
use ca_tests::forge::{CsrSpec, forge, p256};
use ca_tests::services::free_port;
use ca_tests::*;
use http::{Method, StatusCode};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const LABEL: &str = "ca-e2e";
const PIN: &str = "e2e-user-pin-4711";
const SO_PIN: &str = "e2e-so-pin-0815";

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A SoftHSM2 token in a temporary directory, with its own configuration.
struct Hsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    tokens: PathBuf,
    pin_file: PathBuf,
}

impl Hsm {
    /// `None` (skip) when SoftHSM2 or OpenSC is missing outside CI; under
    /// CI=true that is a failure.
    fn new() -> Option<Hsm> {
        if !require_tool("softhsm2-util")
            || !require_tool("pkcs11-tool")
            || !require_tool("openssl")
        {
            return None;
        }
        if !Path::new(MODULE).exists() {
            assert!(
                !in_ci(),
                "{MODULE} is missing under CI=true (apt-get install softhsm2)"
            );
            eprintln!("SKIP: {MODULE} is missing");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ca-e2e-hsm-")
            .tempdir()
            .unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = write_file(
            dir.path(),
            "softhsm2.conf",
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        );
        let pin_file = write_file(dir.path(), "pin", format!("{PIN}\n"));
        set_mode(&pin_file, 0o600);
        let hsm = Hsm {
            dir,
            conf,
            tokens,
            pin_file,
        };
        run_ok(hsm.cmd("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            LABEL,
            "--pin",
            PIN,
            "--so-pin",
            SO_PIN,
        ]));
        Some(hsm)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SOFTHSM2_CONF", &self.conf);
        cmd
    }

    /// The environment `init`, `serve` and the CLI verbs get.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
            ("CA_PKCS11_MODULE".into(), MODULE.into()),
            ("CA_PKCS11_TOKEN".into(), LABEL.into()),
            (
                "CA_PKCS11_PIN_FILE".into(),
                self.pin_file.display().to_string(),
            ),
        ]
    }

    /// `pkcs11-tool --list-objects`, logged in.
    fn list_objects(&self) -> String {
        run_ok(self.cmd("pkcs11-tool").args([
            "--module",
            MODULE,
            "--token-label",
            LABEL,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
        ]))
    }

    /// Every private and secret key object's block in `--list-objects`.
    fn key_blocks(&self) -> Vec<String> {
        let listing = self.list_objects();
        let mut blocks: Vec<String> = Vec::new();
        for line in listing.lines() {
            if !line.starts_with(' ') {
                blocks.push(String::new());
            }
            if let Some(b) = blocks.last_mut() {
                b.push_str(line);
                b.push('\n');
            }
        }
        blocks
            .into_iter()
            .filter(|b| b.starts_with("Private Key Object") || b.starts_with("Secret Key Object"))
            .collect()
    }
}

fn server_options(hsm: &Hsm, args: Vec<String>) -> ServerOptions {
    ServerOptions {
        env: hsm.env(),
        args,
        ..Default::default()
    }
}

/// Every key in the token is sensitive and never extractable, per OpenSC.
fn assert_keys_kept_inside(hsm: &Hsm, expect_private: usize) {
    let blocks = hsm.key_blocks();
    let private = blocks
        .iter()
        .filter(|b| b.starts_with("Private Key Object"))
        .count();
    assert_eq!(private, expect_private, "{blocks:#?}");
    for b in &blocks {
        let access = b
            .lines()
            .find(|l| l.trim_start().starts_with("Access:"))
            .unwrap_or_else(|| panic!("no Access line in {b}"));
        for attr in ["sensitive", "always sensitive", "never extractable"] {
            assert!(access.contains(attr), "{attr} missing from {b}");
        }
    }
}

/// No private key anywhere in the data dir: no `*.key` but the PSK seal
/// key, and no PEM private key in any file.
fn assert_no_private_key_file(data_dir: &Path) {
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !name.ends_with(".key") || name == "psk-seal.key",
                "a key file in the data dir: {}",
                path.display()
            );
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
                "{} holds a private key",
                path.display()
            );
        }
    }
}

fn openssl(args: &[&str], files: &[&Path]) -> std::process::Output {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    for f in files {
        cmd.arg(f);
    }
    run(&mut cmd)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `openssl verify` of the host's leaf against the server's root and intermediate.
fn verify_leaf(ca: &CaServer, host: &Host) {
    let out = run(Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca.root_pem())
        .arg("-untrusted")
        .arg(ca.intermediate_pem())
        .arg(host.dir.join("cert.pem")));
    assert!(out.status.success(), "{}", text(&out));
}

fn get(ca: &CaServer, path: &str) -> ca_client::https::Reply {
    let client = ca.client();
    block_on(async {
        client
            .send(Method::GET, path, None, Bytes::new())
            .await
            .unwrap()
    })
}

#[test]
fn keys_in_the_token_sign_leaves_crls_and_ocsp_and_never_leave_it() {
    let Some(hsm) = Hsm::new() else { return };
    let http_port = free_port();
    let mut ca = CaServer::start_with(server_options(
        &hsm,
        vec![
            "--http-listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--http-public-url".into(),
            format!("http://127.0.0.1:{http_port}"),
        ],
    ));
    // Root, intermediate and the audit chain's checkpoint key in the token,
    // sensitive and never extractable; with the OCSP wrap secret, also never
    // extractable.
    assert_keys_kept_inside(&hsm, 3);
    assert_eq!(hsm.key_blocks().len(), 4, "{:#?}", hsm.key_blocks());
    assert_no_private_key_file(&ca.data_dir);

    // A host bootstraps: its leaf verifies under the token's intermediate.
    let work = tempfile::tempdir().unwrap();
    let web = bootstrap(&mut ca, "web.example.internal", work.path(), "web");
    verify_leaf(&ca, &web);

    // OCSP: a response signed by the responder certificate the token's
    // intermediate issued.
    let ocsp_url = format!("http://127.0.0.1:{http_port}/ocsp");
    let ocsp = |host: &Host| {
        text(&openssl(
            &["ocsp", "-url", &ocsp_url, "-timeout", "20", "-issuer"],
            &[
                &ca.intermediate_pem(),
                Path::new("-cert"),
                &host.dir.join("cert.pem"),
                Path::new("-CAfile"),
                &host.dir.join("ca.pem"),
            ],
        ))
    };
    let out = ocsp(&web);
    assert!(
        out.contains("Response verify OK") && out.contains("cert.pem: good"),
        "{out}"
    );

    // A revocation publishes a CRL signed in the token (the server signs it:
    // the CLI has no key to sign with).
    run_ok(
        ca.cli()
            .args(["revoke", &web.raw_serial, "--reason", "keyCompromise"]),
    );
    let crl_file = work.path().join("int.crl");
    wait_for(
        Duration::from_secs(30),
        "a CRL listing the revoked leaf",
        || {
            let reply = get(&ca, "/v1/crl");
            (reply.status == StatusCode::OK).then_some(())?;
            std::fs::write(&crl_file, &reply.body).unwrap();
            let out = openssl(&["crl", "-noout", "-text", "-in"], &[&crl_file]);
            let listing = text(&out).to_ascii_uppercase();
            listing
                .contains(&web.serial.to_ascii_uppercase())
                .then_some(())
        },
    );
    let out = openssl(
        &["crl", "-noout", "-in"],
        &[&crl_file, Path::new("-CAfile"), &ca.intermediate_pem()],
    );
    assert!(
        out.status.success() && text(&out).contains("verify OK"),
        "{}",
        text(&out)
    );
    let out = wait_for(Duration::from_secs(30), "OCSP to say revoked", || {
        let out = ocsp(&web);
        out.contains("cert.pem: revoked").then_some(out)
    });
    assert!(out.contains("Response verify OK"), "{out}");

    // doctor checks the token, the keys and their attributes.
    let out = run(ca.cli().envs(hsm.env()).args(["doctor", "--no-server"]));
    let report = text(&out);
    assert!(
        report.contains("pkcs11: token \"ca-e2e\"")
            && report.contains("the intermediate key is in token")
            && report.contains("the root key is in token")
            && report.contains("sensitive, never extractable"),
        "{report}"
    );
    assert!(
        !report.lines().any(|l| l.starts_with("FAIL  pkcs11")),
        "{report}"
    );
    assert!(!report.contains(PIN), "the PIN leaked into doctor's output");

    // The audit chain's checkpoints are signed by the key in the token, and
    // the trail verifies against its public half in the data dir.
    let out = run(ca.cli().envs(hsm.env()).args(["audit", "checkpoint"]));
    assert!(out.status.success(), "{}", text(&out));
    let out = run(ca.cli().args(["audit", "verify"]));
    assert!(out.status.success(), "{}", text(&out));
    // A PIN file others can read is a failure with its fix.
    set_mode(&hsm.pin_file, 0o644);
    let report = text(&run(ca
        .cli()
        .envs(hsm.env())
        .args(["doctor", "--no-server"])));
    assert!(
        report.contains("FAIL  pkcs11: the PIN file") && report.contains("world-readable"),
        "{report}"
    );
    set_mode(&hsm.pin_file, 0o600);

    // Nothing written anywhere names the PIN.
    assert!(!ca.logs().contains(PIN), "the PIN leaked into the log");
    ca.assert_no_secret_leaks();
    ca.stop();
}

#[test]
fn start_fails_naming_a_wrong_pin_a_missing_module_or_an_absent_token() {
    let Some(hsm) = Hsm::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ca = |env: &[(String, String)], verb: &[&str]| {
        let out = run(Command::new(bin("ca-server"))
            .arg("--data-dir")
            .arg(&data)
            .args(verb)
            .envs(env.iter().map(|(k, v)| (k, v))));
        (out.status, text(&out))
    };
    let (status, out) = ca(&hsm.env(), &["init"]);
    assert!(status.success(), "{out}");

    let serve = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--hostname",
        "localhost",
    ];
    let with = |key: &str, value: &str| {
        let mut env = hsm.env();
        env.retain(|(k, _)| k != key);
        env.push((key.into(), value.into()));
        env
    };
    // A wrong PIN: names the PIN and its file, never the PIN tried.
    let wrong = "not-the-pin-1234";
    let wrong_file = write_file(dir.path(), "wrong-pin", wrong);
    let (status, out) = ca(
        &with("CA_PKCS11_PIN_FILE", &wrong_file.display().to_string()),
        &serve,
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("the PIN in") && out.contains("CKR_PIN_INCORRECT"),
        "{out}"
    );
    assert!(out.contains(&wrong_file.display().to_string()), "{out}");
    assert!(!out.contains(wrong) && !out.contains(PIN), "{out}");

    // A missing module: names it and how to install one.
    let (status, out) = ca(
        &with("CA_PKCS11_MODULE", "/usr/lib/no-such-pkcs11-module.so"),
        &serve,
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("/usr/lib/no-such-pkcs11-module.so does not exist")
            && out.contains("apt-get install softhsm2"),
        "{out}"
    );

    // An absent token: names the label, the tokens present, the fix.
    let (status, out) = ca(&with("CA_PKCS11_TOKEN", "no-such-token"), &serve);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("no token labelled \"no-such-token\"")
            && out.contains("\"ca-e2e\"")
            && out.contains("--pkcs11-token"),
        "{out}"
    );

    // A missing PIN file.
    let (status, out) = ca(&with("CA_PKCS11_PIN_FILE", "/nonexistent/pin"), &serve);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("PIN file /nonexistent/pin"), "{out}");

    // Without the token settings the keys are not in the data dir: a clear refusal.
    let (status, out) = ca(&[], &serve);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("--pkcs11-module"), "{out}");
}

#[test]
fn a_lost_token_answers_503_and_healthz_down_then_recovers() {
    let Some(hsm) = Hsm::new() else { return };
    let mut ca = CaServer::start_with(server_options(&hsm, vec![]));
    let host = "lost.example.internal";
    let psk = ca.psk_add(host, &[]);
    let body = forge(&p256(), &CsrSpec::host(host, &psk));
    assert_eq!(get(&ca, "/healthz").status, StatusCode::OK);

    // The token goes away (SoftHSM2's token directory moved).
    let away = hsm.dir.path().join("tokens.away");
    std::fs::rename(&hsm.tokens, &away).unwrap();
    let health = wait_for(
        Duration::from_secs(30),
        "/healthz to report the signer down",
        || {
            let r = get(&ca, "/healthz");
            (r.status == StatusCode::SERVICE_UNAVAILABLE).then_some(r)
        },
    );
    assert_eq!(error_code(&health), "signer_unavailable");
    let client = ca.client();
    block_on(async {
        let reply = sign_csr(&client, body.clone()).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&reply), "signer_unavailable");
        assert_eq!(reply.retry_after(), Some(5));
    });
    let live = run_ok(ca.cli().args(["psk", "list", "--json"]));
    assert!(live.contains(host), "the PSK is not consumed: {live}");

    // It comes back: health recovers and the same request is signed.
    std::fs::rename(&away, &hsm.tokens).unwrap();
    wait_for(Duration::from_secs(30), "/healthz to recover", || {
        (get(&ca, "/healthz").status == StatusCode::OK).then_some(())
    });
    block_on(async {
        let reply = sign_csr(&client, body).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    });
    ca.wait_log("PKCS#11 token lost");
    ca.wait_log("PKCS#11 token available again");
    ca.stop();
}

#[test]
fn intermediate_rotate_generates_the_new_key_in_the_token() {
    let Some(hsm) = Hsm::new() else { return };
    let mut ca = CaServer::start_with(server_options(&hsm, vec![]));
    let before = read(&ca.intermediate_pem());
    let out = run_ok(ca.cli().envs(hsm.env()).args([
        "intermediate",
        "rotate",
        "--validity",
        "2y",
        "--json",
    ]));
    let rotated: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(rotated.get("retired_key").is_none(), "{rotated}");
    assert_ne!(read(&ca.intermediate_pem()), before);
    // Two intermediates, the root and the audit key in the token, plus one
    // wrap secret per intermediate; nothing on disk.
    assert_keys_kept_inside(&hsm, 4);
    assert_eq!(hsm.key_blocks().len(), 6);
    assert_no_private_key_file(&ca.data_dir);

    // After a restart the new intermediate signs, in the token.
    ca.restart();
    let work = tempfile::tempdir().unwrap();
    let host = bootstrap(&mut ca, "after.example.internal", work.path(), "after");
    verify_leaf(&ca, &host);
    let issuer = run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-issuer", "-in"])
            .arg(host.dir.join("cert.pem")),
    );
    assert!(issuer.contains("Intermediate CA"), "{issuer}");
    ca.stop();
}

#[test]
fn p384_keys_in_the_token_sign_with_ecdsa_sha384() {
    let Some(hsm) = Hsm::new() else { return };
    let mut opts = server_options(&hsm, vec![]);
    opts.env.push(("CA_PKCS11_KEY_TYPE".into(), "p384".into()));
    let mut ca = CaServer::start_with(opts);
    let work = tempfile::tempdir().unwrap();
    let host = bootstrap(&mut ca, "p384.example.internal", work.path(), "p384");
    verify_leaf(&ca, &host);
    let leaf = openssl_text(&host.dir.join("cert.pem"));
    assert!(leaf.contains("ecdsa-with-SHA384"), "{leaf}");
    let intermediate = openssl_text(&ca.intermediate_pem());
    assert!(
        intermediate.contains("ecdsa-with-SHA384") && intermediate.contains("P-384"),
        "{intermediate}"
    );
    assert_keys_kept_inside(&hsm, 3); // root, intermediate, audit key
    ca.stop();
}

/// The directory SoftHSM2 keeps the token labelled `label` in.
fn token_dir(hsm: &Hsm, label: &str) -> PathBuf {
    std::fs::read_dir(&hsm.tokens)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read(p.join("token.object")).is_ok_and(|b| {
                b.windows(label.len() + 1)
                    .any(|w| &w[..label.len()] == label.as_bytes() && w[label.len()] == b' ')
            })
        })
        .unwrap_or_else(|| panic!("no token directory for {label}"))
}

#[test]
fn the_root_on_its_own_token_may_stay_offline_while_serving() {
    const ROOT: &str = "ca-e2e-root";
    let Some(hsm) = Hsm::new() else { return };
    run_ok(hsm.cmd("softhsm2-util").args([
        "--init-token",
        "--free",
        "--label",
        ROOT,
        "--pin",
        PIN,
        "--so-pin",
        SO_PIN,
    ]));
    let mut opts = server_options(&hsm, vec![]);
    opts.env.push(("CA_PKCS11_ROOT_TOKEN".into(), ROOT.into()));
    let mut ca = CaServer::start_with(opts);
    // The root alone in its token; the intermediate, its wrap secret and the
    // audit key in the serving token. Which of the two pkcs11-tool lists
    // for the label varies between runs, so expect that token's count.
    let root_listed = hsm
        .key_blocks()
        .iter()
        .any(|b| b.contains("label:      ca-root"));
    assert_keys_kept_inside(&hsm, if root_listed { 1 } else { 2 });
    ca.stop();

    // The root token goes offline; serving and issuing go on.
    let root_dir = token_dir(&hsm, ROOT);
    let offline = hsm.dir.path().join("root-offline");
    std::fs::rename(&root_dir, &offline).unwrap();
    ca.restart();
    let work = tempfile::tempdir().unwrap();
    let host = bootstrap(&mut ca, "offline-root.example.internal", work.path(), "h");
    verify_leaf(&ca, &host);

    // Rotation needs the root: refused with the reason while it is away.
    let mut env = hsm.env();
    env.push(("CA_PKCS11_ROOT_TOKEN".into(), ROOT.into()));
    let out = run(ca.cli().envs(env.clone()).args(["intermediate", "rotate"]));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("the root token \"ca-e2e-root\" is not present"),
        "{}",
        text(&out)
    );
    std::fs::rename(&offline, &root_dir).unwrap();
    run_ok(ca.cli().envs(env).args(["intermediate", "rotate"]));
    assert_no_private_key_file(&ca.data_dir);
    ca.stop();
}

/// Holds POSIX (fcntl) locks on every file of the token until dropped:
/// SoftHSM2 waits for them (F_SETLKW) when it re-reads an object, so a
/// `C_Sign` hangs for as long as they are held. Another process holds
/// them, since fcntl locks are per process.
struct TokenLocks(std::process::Child);

impl TokenLocks {
    fn hold(hsm: &Hsm) -> TokenLocks {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args([
                "-c",
                "import fcntl,glob,sys,time\n\
                 fs=[open(p,'r+b') for p in glob.glob(sys.argv[1]+'/*/*')]\n\
                 [fcntl.lockf(f,fcntl.LOCK_EX) for f in fs]\n\
                 print('locked',len(fs),flush=True)\n\
                 time.sleep(600)",
            ])
            .arg(&hsm.tokens)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("locked "), "{line}");
        TokenLocks(child)
    }
}

impl Drop for TokenLocks {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_hung_token_call_answers_503_at_the_deadline_then_recovers() {
    if !require_tool("python3") {
        return;
    }
    let Some(hsm) = Hsm::new() else { return };
    let mut opts = server_options(&hsm, vec![]);
    opts.env.push(("CA_PKCS11_TIMEOUT".into(), "1s".into()));
    let mut ca = CaServer::start_with(opts);
    let host = "hung.example.internal";
    let psk = ca.psk_add(host, &[]);
    let body = forge(&p256(), &CsrSpec::host(host, &psk));
    let client = ca.client();

    let locks = TokenLocks::hold(&hsm);
    block_on(async {
        // The token never answers while the locks are held: the request is
        // answered anyway, with 503, and the signer reported down.
        let reply = sign_csr(&client, body.clone()).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&reply), "signer_unavailable");
        let health = client
            .send(Method::GET, "/healthz", None, Bytes::new())
            .await
            .unwrap();
        assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error_code(&health), "signer_unavailable");
    });
    ca.wait_log("a token call took longer than 1s");
    drop(locks);

    wait_for(Duration::from_secs(30), "/healthz to recover", || {
        (get(&ca, "/healthz").status == StatusCode::OK).then_some(())
    });
    block_on(async {
        let reply = sign_csr(&client, body).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    });
    ca.stop();
}
