//! `ca-server doctor`: what an operator checks at 3 a.m., each finding with
//! the command that fixes it.
//!
//! - key files (root, intermediate, retired intermediates, the PSK seal key) readable only by
//!   their owner, the data dir and the SQLite store likewise;
//! - the root, the intermediate and `root.crl` not expired or close to it;
//! - the store reachable, its migrations matching this binary, and owned by
//!   this data dir's root;
//! - the running server: `/healthz`, and its CRL current and signed by this
//!   data dir's intermediate (a server still signing with a retired
//!   intermediate needs a restart).
//!
//! Expiry is judged against a [`Clock`], so tests control time. Exit code:
//! 0 all good, 4 warnings only, 1 something to fix.

use crate::clock::Clock;
use crate::config::ConfigFile;
use crate::pki::ca::{self, CaPaths};
use anyhow::{Result, anyhow};
use std::os::unix::fs::PermissionsExt;

use std::path::{Path, PathBuf};
use x509_parser::prelude::*;

/// `doctor` found problems: how many, and whether any must be fixed.
#[derive(Debug, thiserror::Error)]
#[error("doctor found {failures} problem(s) to fix and {warnings} warning(s)")]
pub struct DoctorFindings {
    pub failures: usize,
    pub warnings: usize,
}

const DAY: i64 = 86_400;
/// The intermediate must outlive the longest leaf (leaves are cut short at
/// its expiry, `Signer::sign_leaf`): fail inside this window...
const INTERMEDIATE_FAIL_WITHIN: i64 = 30 * DAY;
/// ...and warn early enough to rotate calmly.
const INTERMEDIATE_WARN_WITHIN: i64 = 90 * DAY;
/// A new root means re-bootstrapping the fleet: warn a year ahead.
const ROOT_WARN_WITHIN: i64 = 365 * DAY;
const ROOT_FAIL_WITHIN: i64 = 90 * DAY;
/// `root.crl` (signed offline, long-lived) must be re-signed before this.
const ROOT_CRL_WARN_WITHIN: i64 = 90 * DAY;

/// `doctor` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The running server to check (/healthz, /v1/crl). [default: the serve
    /// configuration's public_url, else https://localhost:<listen port>]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Skip the running-server checks.
    #[arg(long, conflicts_with = "server")]
    pub no_server: bool,
    /// Print the findings as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One thing doctor looked at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn new(level: Level, check: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            level,
            check,
            message: message.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = Some(fix.into());
        self
    }
}

/// Where doctor looks.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The PKCS#11 options: with a module, the token and its keys are checked.
    pub pkcs11: &'a crate::pki::pkcs11::Pkcs11Args,
    pub data_dir: &'a Path,
    pub database_url: &'a str,
    pub config: Option<&'a ConfigFile>,
    /// The server URL and whether the operator named it (`--server`).
    pub server: Option<(String, bool)>,
}

/// The server to check when `--server` is not given: the serve
/// configuration's `public_url`, else `https://localhost:<listen port>`.
pub fn default_server(settings: &[crate::config::Effective]) -> Option<String> {
    let get = |key: &str| {
        settings
            .iter()
            .find(|s| s.section == Some(crate::config::SERVE_SECTION) && s.key == key)
            .and_then(|s| s.values.first().cloned())
    };
    if let Some(url) = get("public_url") {
        return Some(url);
    }
    let listen: std::net::SocketAddr = get("listen")?.parse().ok()?;
    Some(format!("https://localhost:{}", listen.port()))
}

/// Runs every check, prints the findings, and fails with
/// [`DoctorFindings`] if any is not ok.
pub async fn run(target: &Target<'_>, json: bool, clock: &dyn Clock) -> Result<()> {
    let findings = check(target, clock).await;
    for f in &findings {
        if json {
            println!("{}", serde_json::to_string(f)?);
            continue;
        }
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {}: {}", f.check, f.message);
        if let Some(fix) = &f.fix {
            println!("      fix: {fix}");
        }
    }
    let failures = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warnings = findings.iter().filter(|f| f.level == Level::Warn).count();
    if failures + warnings > 0 {
        return Err(DoctorFindings { failures, warnings }.into());
    }
    eprintln!("doctor: all {} checks ok", findings.len());
    Ok(())
}

/// Every check, in the order they are printed.
pub async fn check(target: &Target<'_>, clock: &dyn Clock) -> Vec<Finding> {
    let now = clock.now();
    let mut out = Vec::new();
    let paths = CaPaths::with_keys(target.data_dir, pkcs11(target, &mut out));
    permissions(&paths, target, &mut out);
    let intermediate = expiry(&paths, now, &mut out);
    root_crl(&paths, now, &mut out);
    store(&paths, target.database_url, &mut out).await;
    if let Some((url, named)) = &target.server {
        server(&paths, url, *named, intermediate.as_deref(), now, &mut out).await;
    }
    out
}

/// With `--pkcs11-module`: the token opens and logs in, the root and
/// intermediate keys are in it, and every private or secret key in it is
/// sensitive and never extractable. Returns where the keys are for the other checks.
fn pkcs11(target: &Target<'_>, out: &mut Vec<Finding>) -> ca::KeySource {
    const CHECK: &str = "pkcs11";
    let token =
        match target.pkcs11.open() {
            Ok(Some(t)) => t,
            Ok(None) => return ca::KeySource::Files,
            Err(e) => {
                out.push(Finding::new(Level::Fail, CHECK, format!("{e:#}")).fix(
                    "the message names what to change (docs/pkcs11.md#failures-and-their-fixes)",
                ));
                return ca::KeySource::Files;
            }
        };
    out.push(Finding::new(
        Level::Ok,
        CHECK,
        format!(
            "token {:?} in {} opened, user logged in",
            token.label(),
            token.module().display()
        ),
    ));
    // The PIN file is the token's password: only its owner may read it.
    for pin in [
        target.pkcs11.pkcs11_pin_file.as_ref(),
        target.pkcs11.pkcs11_root_pin_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(mode) = mode_of(pin)
            && let Some(how) = exposure(mode)
        {
            out.push(
                Finding::new(
                    Level::Fail,
                    CHECK,
                    format!("the PIN file {} is {how} (mode {mode:04o})", pin.display()),
                )
                .fix(format!(
                    "chmod 600 {}; if others may have read it, change the token's user PIN",
                    pin.display()
                )),
            );
        }
    }
    let paths = CaPaths::with_keys(target.data_dir, ca::KeySource::Token(token.clone()));
    for (what, cert, label) in [
        ("intermediate", &paths.intermediate_cert, token.label()),
        ("root", &paths.root_cert, token.root_label()),
    ] {
        if what == "root" && !token.has_token(label) {
            out.push(Finding::new(
                Level::Ok,
                CHECK,
                format!("the root token {label:?} is not present (offline root)"),
            ));
            continue;
        }
        let found = ca::read_cert_der(cert).and_then(|der| {
            let (_, c) = x509_parser::parse_x509_certificate(&der)
                .map_err(|e| anyhow::anyhow!("parsing {}: {e}", cert.display()))?;
            token.find_key(label, c.public_key().raw)
        });
        match found {
            Ok(k) => out.push(Finding::new(
                Level::Ok,
                CHECK,
                format!(
                    "the {what} key is in token {label:?} (CKA_ID {})",
                    hex::encode(k.id())
                ),
            )),
            Err(e) => out.push(
                Finding::new(Level::Fail, CHECK, format!("the {what} key: {e:#}"))
                    .fix("initialise the CA with these --pkcs11-* options, or point them at the token that holds its keys"),
            ),
        }
    }
    let mut labels = vec![token.label().to_owned()];
    if token.root_label() != token.label() && token.has_token(token.root_label()) {
        labels.push(token.root_label().to_owned());
    }
    for label in labels {
        match token.key_attributes(&label) {
            Ok(keys) => {
                for k in keys {
                    if k.kept_inside() {
                        out.push(Finding::new(
                            Level::Ok,
                            CHECK,
                            format!(
                                "{} key {:?} (CKA_ID {}) in {label:?}: sensitive, never extractable",
                                k.class, k.label, k.id
                            ),
                        ));
                    } else {
                        out.push(
                            Finding::new(
                                Level::Fail,
                                CHECK,
                                format!(
                                    "{} key {:?} (CKA_ID {}) in {label:?} is not kept inside: sensitive={} \
                                     extractable={} always_sensitive={} never_extractable={}",
                                    k.class,
                                    k.label,
                                    k.id,
                                    k.sensitive,
                                    k.extractable,
                                    k.always_sensitive,
                                    k.never_extractable
                                ),
                            )
                            .fix("a key that was ever extractable may have left the token: rotate it (ca-server intermediate rotate)"),
                        );
                    }
                }
            }
            Err(e) => out.push(Finding::new(Level::Fail, CHECK, format!("{e:#}"))),
        }
    }
    ca::KeySource::Token(token)
}

fn mode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

/// Who besides the owner can read a file with `mode`, if anyone.
fn exposure(mode: u32) -> Option<&'static str> {
    if mode & 0o004 != 0 {
        Some("world-readable")
    } else if mode & 0o040 != 0 {
        Some("group-readable")
    } else if mode & 0o022 != 0 {
        Some("writable by others")
    } else {
        None
    }
}

fn permissions(paths: &CaPaths, target: &Target<'_>, out: &mut Vec<Finding>) {
    const CHECK: &str = "permissions";
    match mode_of(&paths.dir) {
        None => {
            out.push(
                Finding::new(
                    Level::Fail,
                    CHECK,
                    format!("data dir {} does not exist", paths.dir.display()),
                )
                .fix("ca-server init --data-dir DIR (or point --data-dir / CA_DATA_DIR at the right one)"),
            );
            return;
        }
        Some(mode) if mode & 0o077 != 0 => out.push(
            Finding::new(
                Level::Warn,
                CHECK,
                format!("data dir {} has mode {mode:04o}", paths.dir.display()),
            )
            .fix(format!("chmod 700 {}", paths.dir.display())),
        ),
        Some(mode) => out.push(Finding::new(
            Level::Ok,
            CHECK,
            format!("data dir {} mode {mode:04o}", paths.dir.display()),
        )),
    }
    let mut keys: Vec<PathBuf> = vec![paths.intermediate_key.clone(), paths.root_key.clone()];
    // The PSK seal key (ACME's EAB keys are sealed under it), once it exists.
    keys.push(paths.dir.join(crate::pki::psk_seal::KEY_FILE));
    // The audit key (signs the audit chain's checkpoints), once it exists.
    keys.push(paths.dir.join(crate::pki::audit_key::KEY_FILE));
    if let Ok(entries) = std::fs::read_dir(paths.dir.join("retired")) {
        let mut retired: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "key"))
            .collect();
        retired.sort();
        keys.extend(retired);
    }
    for key in keys {
        let Some(mode) = mode_of(&key) else {
            if paths.keys.token().is_some() {
                continue;
            }
            if key == paths.intermediate_key {
                out.push(
                    Finding::new(
                        Level::Fail,
                        CHECK,
                        format!("{} is missing: the CA cannot sign", key.display()),
                    )
                    .fix("restore intermediate.key from the backup (docs/runbooks.md#back-up-and-restore); \
                          if the CA keys are in a PKCS#11 token, pass --pkcs11-module, --pkcs11-token and \
                          --pkcs11-pin-file (docs/pkcs11.md)"),
                );
            } else if key == paths.root_key {
                out.push(Finding::new(
                    Level::Ok,
                    CHECK,
                    "root.key is not in the data dir (offline root)",
                ));
            }
            continue;
        };
        if paths.keys.token().is_some() && (key == paths.intermediate_key || key == paths.root_key)
        {
            out.push(
                Finding::new(
                    Level::Warn,
                    CHECK,
                    format!(
                        "{} is a private key file, but the CA keys are in the PKCS#11 token",
                        key.display()
                    ),
                )
                .fix(format!(
                    "it does not sign anything: destroy it (shred -u {}) unless it is a backup you mean to keep offline",
                    key.display()
                )),
            );
        }
        match exposure(mode) {
            Some(how) => out.push(
                Finding::new(
                    Level::Fail,
                    CHECK,
                    format!("{} is {how} (mode {mode:04o})", key.display()),
                )
                .fix(format!(
                    "chmod 600 {}; if others may have read it, treat the key as leaked (docs/runbooks.md)",
                    key.display()
                )),
            ),
            None => out.push(Finding::new(
                Level::Ok,
                CHECK,
                format!("{} mode {mode:04o}", key.display()),
            )),
        }
    }
    if let Some(db) = crate::store::sqlite_path(target.database_url)
        && let Some(mode) = mode_of(&db)
        && let Some(how) = exposure(mode)
    {
        out.push(
            Finding::new(
                Level::Warn,
                CHECK,
                format!("the store {} is {how} (mode {mode:04o})", db.display()),
            )
            .fix(format!("chmod 600 {}*", db.display())),
        );
    }
    if let Some(config) = target.config
        && config.readable_by_others
        && config.holds_secret()
    {
        out.push(
            Finding::new(
                Level::Warn,
                CHECK,
                format!(
                    "{} holds a password and is world-readable",
                    config.path.display()
                ),
            )
            .fix(format!(
                "chmod 640 {} (owner root, group ca-server)",
                config.path.display()
            )),
        );
    }
}

/// "in 3 days", "in 5 hours", "3 days ago".
fn remaining(secs: i64) -> String {
    let (n, unit) = match secs.abs() {
        s if s >= 2 * DAY => (s / DAY, "days"),
        s if s >= 7200 => (s / 3600, "hours"),
        s => (s / 60, "minutes"),
    };
    if secs >= 0 {
        format!("in {n} {unit}")
    } else {
        format!("{n} {unit} ago")
    }
}

fn not_after_of(der: &[u8]) -> Option<i64> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}

/// Root and intermediate expiry; returns the intermediate's DER for later checks.
fn expiry(paths: &CaPaths, now: i64, out: &mut Vec<Finding>) -> Option<Vec<u8>> {
    const CHECK: &str = "expiry";
    let rotate = "ca-server intermediate rotate, copy the new intermediate to every replica, \
                  restart serve (docs/runbooks.md#rotate-the-intermediate)";
    let mut intermediate = None;
    for (what, path, fail, warn, fix) in [
        (
            "root",
            &paths.root_cert,
            ROOT_FAIL_WITHIN,
            ROOT_WARN_WITHIN,
            "plan a new root: every host must re-bootstrap with its fingerprint",
        ),
        (
            "intermediate",
            &paths.intermediate_cert,
            INTERMEDIATE_FAIL_WITHIN,
            INTERMEDIATE_WARN_WITHIN,
            rotate,
        ),
    ] {
        let der = match ca::read_cert_der(path) {
            Ok(der) => der,
            Err(e) => {
                out.push(Finding::new(Level::Fail, CHECK, format!("{e:#}")).fix(
                    "restore the data dir from the backup (docs/runbooks.md#back-up-and-restore)",
                ));
                continue;
            }
        };
        let Some(not_after) = not_after_of(&der) else {
            out.push(Finding::new(
                Level::Fail,
                CHECK,
                format!("{} is not a readable certificate", path.display()),
            ));
            continue;
        };
        let left = not_after - now;
        let when = proto::timefmt::rfc3339(not_after);
        let finding = if left <= 0 {
            Finding::new(
                Level::Fail,
                CHECK,
                format!("the {what} expired {} ({when})", remaining(left)),
            )
            .fix(fix)
        } else if left <= warn {
            let level = if left <= fail {
                Level::Fail
            } else {
                Level::Warn
            };
            Finding::new(
                level,
                CHECK,
                format!("the {what} expires {} ({when})", remaining(left)),
            )
            .fix(fix)
        } else {
            Finding::new(
                Level::Ok,
                CHECK,
                format!("the {what} expires {} ({when})", remaining(left)),
            )
        };
        out.push(finding);
        if what == "intermediate" {
            intermediate = Some(der);
        }
    }
    intermediate
}

/// `root.crl` matters when the root key is offline: it is what chain
/// verifiers get for the root, and only the offline key can renew it.
fn root_crl(paths: &CaPaths, now: i64, out: &mut Vec<Finding>) {
    const CHECK: &str = "crl";
    if paths.root_key.exists() {
        return; // signed afresh by every CRL generation
    }
    let path = paths.dir.join("root.crl");
    let resign = "sign a new root CRL where the root key is kept (start serve once with root.key \
                  in the data dir, then move it offline again)";
    let Ok(text) = std::fs::read(&path) else {
        out.push(
            Finding::new(
                Level::Warn,
                CHECK,
                "the root key is offline and there is no root.crl: chain-checking verifiers (Puppet agents) fail",
            )
            .fix(resign),
        );
        return;
    };
    let next = ::pem::parse(&text).ok().and_then(|p| {
        CertificateRevocationList::from_der(p.contents())
            .ok()
            .and_then(|(_, crl)| crl.next_update().map(|t| t.timestamp()))
    });
    match next {
        None => out.push(Finding::new(
            Level::Fail,
            CHECK,
            format!("{} is not a readable CRL", path.display()),
        )),
        Some(next) if next <= now => out.push(
            Finding::new(
                Level::Fail,
                CHECK,
                format!("root.crl expired {}", remaining(next - now)),
            )
            .fix(resign),
        ),
        Some(next) if next - now <= ROOT_CRL_WARN_WITHIN => out.push(
            Finding::new(
                Level::Warn,
                CHECK,
                format!("root.crl expires {}", remaining(next - now)),
            )
            .fix(resign),
        ),
        Some(next) => out.push(Finding::new(
            Level::Ok,
            CHECK,
            format!("root.crl expires {}", remaining(next - now)),
        )),
    }
}

async fn store(paths: &CaPaths, url: &str, out: &mut Vec<Finding>) {
    const CHECK: &str = "store";
    let shown = crate::store::redact_url(url);
    if let Some(db) = crate::store::sqlite_path(url)
        && !db.exists()
    {
        out.push(Finding::new(
            Level::Warn,
            CHECK,
            format!("{shown} does not exist yet (the first `serve` creates it)"),
        ));
        return;
    }
    let found = match crate::store::inspect::inspect(url).await {
        Ok(found) => found,
        Err(e) => {
            out.push(
                Finding::new(Level::Fail, CHECK, format!("{shown} is unreachable: {e:#}"))
                    .fix("check that the database runs and that --database-url / CA_DATABASE_URL is right (docs/replicas.md)"),
            );
            return;
        }
    };
    out.push(Finding::new(Level::Ok, CHECK, format!("{shown} answers")));
    if !found.unknown.is_empty() {
        out.push(
            Finding::new(
                Level::Fail,
                CHECK,
                format!(
                    "the store has migrations this binary does not know ({:?}): it was opened by a newer ca-server",
                    found.unknown
                ),
            )
            .fix("run the newer ca-server binary (never downgrade against a migrated store)"),
        );
    }
    if !found.broken.is_empty() {
        out.push(
            Finding::new(
                Level::Fail,
                CHECK,
                format!("broken migrations: {}", found.broken.join(", ")),
            )
            .fix("restore the store from the backup (docs/runbooks.md#back-up-and-restore)"),
        );
    }
    if found.pending.is_empty() {
        out.push(Finding::new(Level::Ok, CHECK, "migrations up to date"));
    } else {
        out.push(
            Finding::new(
                Level::Warn,
                CHECK,
                format!("migrations not yet run: {}", found.pending.join(", ")),
            )
            .fix("they run at the next `ca-server serve` start (take a backup first)"),
        );
    }
    if let (Some(owner), Ok(root)) = (&found.root_fingerprint, ca::read_cert_der(&paths.root_cert))
    {
        let ours = ca::fingerprint(&root);
        if *owner != ours {
            out.push(
                Finding::new(
                    Level::Fail,
                    CHECK,
                    format!("the store belongs to another CA (root {owner}; this data dir's root is {ours})"),
                )
                .fix("point --data-dir at a copy of the fleet's data dir, or --database-url at this CA's store"),
            );
        } else {
            out.push(Finding::new(
                Level::Ok,
                CHECK,
                "the store belongs to this root",
            ));
        }
    }
}

async fn server(
    paths: &CaPaths,
    url: &str,
    named: bool,
    intermediate: Option<&[u8]>,
    now: i64,
    out: &mut Vec<Finding>,
) {
    const CHECK: &str = "server";
    let client = match ca::read_cert_der(&paths.root_cert).and_then(|root| {
        let config = proto::trust::pinned_client_config(&root, None)?;
        proto::https::HttpsClient::new(url, config)
    }) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::new(Level::Fail, CHECK, format!("{url}: {e:#}")));
            return;
        }
    };
    let get = |path: &'static str| {
        let client = &client;
        async move {
            client
                .send(http::Method::GET, path, None, bytes::Bytes::new())
                .await
        }
    };
    match get("/healthz").await {
        Ok(r) if r.status.is_success() => out.push(Finding::new(
            Level::Ok,
            CHECK,
            format!("{url}/healthz answers 200"),
        )),
        Ok(r) => {
            let code = r.api_error().map(|(c, _)| c).unwrap_or_default();
            out.push(
                Finding::new(
                    Level::Fail,
                    CHECK,
                    format!("{url}/healthz answers {} {code}", r.status.as_u16()),
                )
                .fix("see the server's log; a store_unavailable means the database is down (docs/replicas.md)"),
            );
        }
        Err(e) => {
            out.push(
                Finding::new(
                    if named { Level::Fail } else { Level::Warn },
                    CHECK,
                    format!("no answer from {url}: {e}"),
                )
                .fix("systemctl status ca-server; or pass --server URL (--no-server to skip)"),
            );
            return;
        }
    }
    let crl = match get("/v1/crl").await {
        Ok(r) if r.status.is_success() => r.body,
        Ok(r) => {
            out.push(
                Finding::new(
                    Level::Fail,
                    "crl",
                    format!("{url}/v1/crl answers {}", r.status.as_u16()),
                )
                .fix("see the server's log for \"re-signing the CRLs failed\""),
            );
            return;
        }
        Err(e) => {
            out.push(Finding::new(
                Level::Fail,
                "crl",
                format!("{url}/v1/crl: {e}"),
            ));
            return;
        }
    };
    out.push(crl_finding(&crl, intermediate, now));
}

/// Judges the served CRL: signed by this intermediate, not expired, and
/// re-signed on time (the server re-signs at half its lifetime).
fn crl_finding(der: &[u8], intermediate: Option<&[u8]>, now: i64) -> Finding {
    const CHECK: &str = "crl";
    let parsed = CertificateRevocationList::from_der(der).map_err(|e| anyhow!("{e}"));
    let crl = match parsed {
        Ok((_, crl)) => crl,
        Err(e) => {
            return Finding::new(
                Level::Fail,
                CHECK,
                format!("the served CRL does not parse: {e}"),
            );
        }
    };
    if let Some(int) = intermediate.and_then(|d| X509Certificate::from_der(d).ok())
        && crl.verify_signature(int.1.public_key()).is_err()
    {
        return Finding::new(
            Level::Fail,
            CHECK,
            "the served CRL is not signed by this data dir's intermediate (a server still running with a retired intermediate?)",
        )
        .fix("restart ca-server serve so it loads intermediate.crt and intermediate.key");
    }
    let this = crl.last_update().timestamp();
    let Some(next) = crl.next_update().map(|t| t.timestamp()) else {
        return Finding::new(Level::Fail, CHECK, "the served CRL has no nextUpdate");
    };
    let number = crl
        .crl_number()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "?".into());
    if next <= now {
        return Finding::new(
            Level::Fail,
            CHECK,
            format!("the served CRL #{number} expired {}", remaining(next - now)),
        )
        .fix("see the server's log for \"re-signing the CRLs failed\"; restart serve");
    }
    if next - now < (next - this) / 4 {
        return Finding::new(
            Level::Warn,
            CHECK,
            format!(
                "the served CRL #{number} expires {} and was not re-signed on time",
                remaining(next - now)
            ),
        )
        .fix("see the server's log for \"re-signing the CRLs failed\"");
    }
    Finding::new(
        Level::Ok,
        CHECK,
        format!(
            "the served CRL #{number} is signed by this intermediate and expires {}",
            remaining(next - now)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct At(i64);
    impl Clock for At {
        fn now(&self) -> i64 {
            self.0
        }
    }

    #[tokio::test]
    async fn findings_follow_the_clock_and_the_file_modes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ca");
        let start = 1_800_000_000;
        ca::init(&CaPaths::new(&data), "Test", start).unwrap();
        let url = format!("sqlite://{}", data.join("ca.db").display());
        let pkcs11 = <crate::pki::pkcs11::Pkcs11Args as clap::FromArgMatches>::from_arg_matches(
            &<crate::pki::pkcs11::Pkcs11Args as clap::Args>::augment_args(clap::Command::new("t"))
                .get_matches_from(["t"]),
        )
        .unwrap();
        let target = Target {
            pkcs11: &pkcs11,
            data_dir: &data,
            database_url: &url,
            config: None,
            server: None,
        };
        let failing = |f: &[Finding]| {
            f.iter()
                .filter(|f| f.level != Level::Ok)
                .map(|f| f.message.clone())
                .collect::<Vec<_>>()
        };
        // Fresh: only the store that no serve has created yet.
        let found = check(&target, &At(start)).await;
        assert_eq!(failing(&found).len(), 1, "{found:#?}");

        // 4 years and 10 months later the intermediate is inside the warning window.
        let late = start + 5 * 365 * DAY - 60 * DAY;
        let found = check(&target, &At(late)).await;
        let f = found
            .iter()
            .find(|f| f.message.contains("the intermediate expires"))
            .unwrap();
        assert_eq!(f.level, Level::Warn);
        assert!(f.fix.as_deref().unwrap().contains("intermediate rotate"));

        std::fs::set_permissions(
            data.join("intermediate.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let found = check(&target, &At(start)).await;
        let f = found
            .iter()
            .find(|f| f.message.contains("world-readable"))
            .unwrap();
        assert_eq!(f.level, Level::Fail);
        assert!(f.fix.as_deref().unwrap().starts_with("chmod 600 "));
    }

    #[test]
    fn remaining_reads_well() {
        assert_eq!(remaining(3 * DAY + 5), "in 3 days");
        assert_eq!(remaining(5 * 3600), "in 5 hours");
        assert_eq!(remaining(-3 * DAY), "3 days ago");
    }
}
