//! Hosts for the service tests: bootstrap a host directory, run
//! `ca-client install` for it, present its certificate as a client, and
//! handshake with a service in a loop while its certificate changes.

use crate::services::{norm_serial, served_serial};
use crate::{CaServer, ca_client, run_ok, wait_for, write_file};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A bootstrapped host directory and its serial (normalised).
#[derive(Debug, Clone)]
pub struct Host {
    pub dir: PathBuf,
    pub serial: String,
    /// As ca-client prints it.
    pub raw_serial: String,
}

/// Bootstraps `host` against `ca` into `work/<label>`.
pub fn bootstrap(ca: &mut CaServer, host: &str, work: &Path, label: &str) -> Host {
    let psk = ca.psk_add(host, &[]);
    let psk_file = write_file(work, &format!("{label}.psk"), &psk);
    let dir = work.join(label);
    let out = run_ok(ca.bootstrap_cmd(host, &psk_file, &dir).arg("--json"));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let raw_serial = v["serial"].as_str().unwrap().to_owned();
    Host {
        dir,
        serial: norm_serial(&raw_serial),
        raw_serial,
    }
}

/// A pinned HTTPS client for `ca` presenting the `chain.pem` and `key.pem`
/// in `dir` (a host's directory, or an admin certificate's) as its client
/// certificate, or none.
pub fn mtls_client(ca: &CaServer, dir: Option<&Path>) -> ca_client::https::HttpsClient {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let root = pem::parse(crate::read(&ca.root_pem()))
        .unwrap()
        .into_contents();
    let auth = dir.map(|d| {
        let chain = pem::parse_many(crate::read(&d.join("chain.pem")))
            .unwrap()
            .into_iter()
            .map(|b| CertificateDer::from(b.into_contents()))
            .collect();
        let key = ca_client::keys::HostKey::load(&d.join("key.pem")).unwrap();
        (
            chain,
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
        )
    });
    let config = ca_client::trust::pinned_client_config(&root, auth).unwrap();
    ca_client::https::HttpsClient::new(&ca.url, config).unwrap()
}

/// `ca-client VERB --server URL --dir DIR` (`renew`, `crl`) for `ca`'s URL.
pub fn ca_client_verb(verb: &str, ca: &CaServer, dir: &Path) -> Command {
    let mut cmd = ca_client();
    cmd.args([verb, "--server", &ca.url, "--dir"]).arg(dir);
    cmd
}

/// `ca-client install SERVICE --dir DIR --dest DEST` plus `args`.
pub fn install(service: &str, host: &Host, dest: &Path, args: &[&str]) -> Command {
    let mut cmd = ca_client();
    cmd.args(["install", service, "--dir"])
        .arg(&host.dir)
        .arg("--dest")
        .arg(dest)
        .args(args);
    cmd
}

/// Handshakes in a loop on another thread until stopped: every result, in order.
#[derive(Debug)]
pub struct HandshakeLoop {
    stop: Arc<AtomicBool>,
    seen: Arc<std::sync::Mutex<Vec<Result<String, String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HandshakeLoop {
    pub fn start(port: u16, sni: &str, ca_file: &Path, extra: &[&str]) -> HandshakeLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let (sni, ca_file) = (sni.to_owned(), ca_file.to_path_buf());
        let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
        let thread = std::thread::spawn(move || {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            while !s.load(Ordering::SeqCst) {
                let r = served_serial(port, &sni, &ca_file, &extra);
                v.lock().unwrap().push(r);
            }
        });
        let l = HandshakeLoop {
            stop,
            seen,
            thread: Some(thread),
        };
        wait_for(
            std::time::Duration::from_secs(30),
            "a first handshake",
            || (!l.seen.lock().unwrap().is_empty()).then_some(()),
        );
        l
    }

    /// Stops the loop once a handshake after this call has served `new`, and
    /// returns every result up to that one. Waiting for `new` rather than
    /// for any one more handshake: a handshake already in flight when the
    /// install returned, or one an old worker still takes while a reload
    /// settles, may show the old serial after the installer saw the new one.
    pub fn finish(mut self, new: &str) -> Vec<Result<String, String>> {
        let n = self.seen.lock().unwrap().len();
        let seen = self.seen.clone();
        let results = wait_for(
            std::time::Duration::from_secs(30),
            "a handshake serving the new certificate",
            || {
                let v = seen.lock().unwrap();
                (v.len() > n && v.last().is_some_and(|r| r.as_deref() == Ok(new)))
                    .then(|| v.clone())
            },
        );
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        results
    }
}

/// Every handshake succeeded, the first showed `old` and the last `new`.
/// (An old worker may still answer a handshake or two while a reload
/// settles, so the order in between is not asserted; a failed handshake
/// anywhere is.)
pub fn assert_switched(results: &[Result<String, String>], old: &str, new: &str) {
    let serials: Vec<&str> = results
        .iter()
        .map(|r| {
            r.as_deref()
                .unwrap_or_else(|e| panic!("a handshake failed during the re-install: {e}"))
        })
        .collect();
    assert_eq!(serials.first(), Some(&old), "{serials:?}");
    assert_eq!(serials.last(), Some(&new), "{serials:?}");
    assert!(
        serials.iter().all(|s| *s == old || *s == new),
        "{serials:?}"
    );
}

/// Borrowed views of owned arguments.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// curl flags presenting `host`'s certificate (leaf + intermediate) and key.
pub fn client_cert_args(host: &Host) -> Vec<String> {
    vec![
        "--cert".into(),
        host.dir.join("chain.pem").display().to_string(),
        "--key".into(),
        host.dir.join("key.pem").display().to_string(),
    ]
}
