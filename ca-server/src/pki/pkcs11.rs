//! CA keys in a PKCS#11 token (issue 20): loading the module, finding the
//! token by label, logging in with the PIN from a file, generating EC keys
//! that never leave the token (CKA_SENSITIVE, not CKA_EXTRACTABLE), finding
//! them again by CKA_ID, and signing through `C_Sign` on worker threads with
//! a deadline, so a lost or hung token fails a request instead of hanging it.
//!
//! A lost token is noticed by a failed call or by the monitor's probe
//! (`C_GetTokenInfo` every second); the module is then finalised and
//! initialised again until the token answers and the login succeeds.
//! SoftHSM2, whose token directory goes away, answers `C_Sign` with
//! CKR_OBJECT_HANDLE_INVALID, `C_FindObjects` with nothing and
//! `C_GetTokenInfo` with CKR_GENERAL_ERROR, and keeps doing so after the
//! directory is back (a new session or login in the same initialisation
//! finds nothing); only `C_Finalize` then `C_Initialize` sees it again
//! (`C_Initialize` itself fails while the directory is missing).
//! docs/pkcs11.md describes the operator side.

use anyhow::{Context, Result, anyhow, bail};
use cryptoki::context::{CInitializeArgs, Pkcs11 as Module};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Label of the root key pair in its token.
pub const ROOT_LABEL: &str = "ca-root";
/// Label of the intermediate key pair.
pub const INTERMEDIATE_LABEL: &str = "ca-intermediate";
/// Label of the secret that wraps the OCSP responder key (one per intermediate, same CKA_ID).
pub const OCSP_WRAP_LABEL: &str = "ca-ocsp-wrap";

/// The PKCS#11 options shared by `init`, `serve`, `intermediate rotate`,
/// `doctor`, `revoke` and `admin-cert` (global flags: top-level keys of the
/// configuration file).
#[derive(Debug, Clone, clap::Args)]
pub struct Pkcs11Args {
    /// PKCS#11 module (shared library) holding the CA keys, e.g.
    /// /usr/lib/softhsm/libsofthsm2.so. Without it the keys are files in the data dir.
    #[arg(long, env = "CA_PKCS11_MODULE", value_name = "PATH", global = true)]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token holding the intermediate key (and the root key,
    /// unless --pkcs11-root-token names another).
    #[arg(long, env = "CA_PKCS11_TOKEN", value_name = "LABEL", global = true)]
    pub pkcs11_token: Option<String>,
    /// File holding the token's user PIN (one line; never logged).
    #[arg(long, env = "CA_PKCS11_PIN_FILE", value_name = "FILE", global = true)]
    pub pkcs11_pin_file: Option<PathBuf>,
    /// Token holding the root key, if not the intermediate's (kept offline:
    /// needed only for init, rotation and the root CRL).
    #[arg(
        long,
        env = "CA_PKCS11_ROOT_TOKEN",
        value_name = "LABEL",
        global = true
    )]
    pub pkcs11_root_token: Option<String>,
    /// PIN file of the root token [default: --pkcs11-pin-file].
    #[arg(
        long,
        env = "CA_PKCS11_ROOT_PIN_FILE",
        value_name = "FILE",
        global = true
    )]
    pub pkcs11_root_pin_file: Option<PathBuf>,
    /// Curve of keys generated in the token (init, intermediate rotate).
    #[arg(long, env = "CA_PKCS11_KEY_TYPE", value_enum, default_value_t = Curve::P256, global = true)]
    pub pkcs11_key_type: Curve,
    /// Longest wait for one token call before signing answers 503 signer_unavailable.
    #[arg(long, env = "CA_PKCS11_TIMEOUT", default_value = "5s", global = true)]
    pub pkcs11_timeout: humantime::Duration,
}

impl Pkcs11Args {
    /// `None` without `--pkcs11-module` (file keys); else the token, opened
    /// and logged in (every failure names its cause and its fix).
    pub fn open(&self) -> Result<Option<Token>> {
        let Some(module) = &self.pkcs11_module else {
            if self.pkcs11_token.is_some() || self.pkcs11_pin_file.is_some() {
                bail!(
                    "--pkcs11-token / --pkcs11-pin-file given without --pkcs11-module: \
                     name the PKCS#11 module (CA_PKCS11_MODULE), e.g. /usr/lib/softhsm/libsofthsm2.so"
                );
            }
            return Ok(None);
        };
        let label = self.pkcs11_token.clone().context(
            "--pkcs11-module needs --pkcs11-token LABEL (CA_PKCS11_TOKEN): the label of the token holding the CA keys",
        )?;
        let pin_file = self.pkcs11_pin_file.clone().context(
            "--pkcs11-module needs --pkcs11-pin-file FILE (CA_PKCS11_PIN_FILE): a file holding the token's user PIN",
        )?;
        let mut pins = vec![(label.clone(), read_pin(&pin_file)?, pin_file.clone())];
        let root_label = self.pkcs11_root_token.clone().unwrap_or(label.clone());
        if root_label != label {
            let file = self.pkcs11_root_pin_file.clone().unwrap_or(pin_file);
            pins.push((root_label.clone(), read_pin(&file)?, file));
        }
        Token::open(TokenConfig {
            module: module.clone(),
            label,
            root_label,
            pins,
            curve: self.pkcs11_key_type,
            timeout: self.pkcs11_timeout.into(),
        })
        .map(Some)
    }
}

/// Reads a PIN file: the first line, trimmed. The PIN itself never appears in an error.
fn read_pin(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading the PKCS#11 PIN file {} (--pkcs11-pin-file): create it with the token's user PIN, mode 0600",
            path.display()
        )
    })?);
    let pin = Zeroizing::new(text.lines().next().unwrap_or("").trim().to_owned());
    if pin.is_empty() {
        bail!(
            "the PKCS#11 PIN file {} is empty: write the token's user PIN on its first line",
            path.display()
        );
    }
    Ok(pin)
}

/// Key curves a token generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// DER of the named curve's OID (CKA_EC_PARAMS).
    fn ec_params(self) -> Vec<u8> {
        match self {
            Curve::P256 => vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
            Curve::P384 => vec![0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
        }
    }

    /// Length of an uncompressed point.
    fn point_len(self) -> usize {
        match self {
            Curve::P256 => 65,
            Curve::P384 => 97,
        }
    }

    pub fn algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            Curve::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Curve::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    fn digest(self) -> &'static ring::digest::Algorithm {
        match self {
            Curve::P256 => &ring::digest::SHA256,
            Curve::P384 => &ring::digest::SHA384,
        }
    }

    /// The curve of a certificate's EC public key (SPKI DER), with its point.
    pub fn of_spki(spki_der: &[u8]) -> Result<(Curve, Vec<u8>)> {
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| anyhow!("parsing a public key: {e}"))?;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|oid| oid.to_id_string());
        let curve = match curve.as_deref() {
            Some("1.2.840.10045.3.1.7") => Curve::P256,
            Some("1.3.132.0.34") => Curve::P384,
            other => bail!("the CA key is not on P-256 or P-384 ({other:?}): a token key must be"),
        };
        Ok((curve, spki.subject_public_key.data.to_vec()))
    }
}

/// CKA_ID of a CA key: the first 20 bytes of SHA-256 over its public point,
/// so the certificate on disk is enough to find its key again.
pub fn key_id(point: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, point).as_ref()[..20].to_vec()
}

/// What opening a token needs.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub module: PathBuf,
    pub label: String,
    pub root_label: String,
    /// (token label, PIN, PIN file) for each token used.
    pub pins: Vec<(String, Zeroizing<String>, PathBuf)>,
    pub curve: Curve,
    pub timeout: Duration,
}

/// Why a token call failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is not usable now (lost, not answering, not logged in).
    #[error("the PKCS#11 token is unavailable: {0}")]
    Unavailable(String),
    /// The call did not return within the deadline.
    #[error("the PKCS#11 token did not answer within {0:?}")]
    Timeout(Duration),
    #[error("PKCS#11: {0:#}")]
    Other(anyhow::Error),
}

/// An opened module with its tokens: a handle shared by every key it holds.
#[derive(Clone)]
pub struct Token {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.inner.config.module)
            .field("label", &self.inner.config.label)
            .finish_non_exhaustive()
    }
}

type Job = Box<dyn FnOnce(&Inner) + Send>;

struct Inner {
    config: TokenConfig,
    state: Mutex<State>,
    /// Lost connections still being closed on their own thread: the module
    /// is initialised again only once none is left.
    closing: Arc<std::sync::atomic::AtomicUsize>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

/// The connection: present while the token answers.
struct State {
    conn: Option<Conn>,
    /// Bumped at each loss: sessions of an older generation are dropped.
    generation: u64,
    /// Sessions handed out and not back yet, from older generations: the
    /// module cannot be finalised (and so initialised again) while one is out.
    stale_out: usize,
    out: usize,
    last_error: Option<String>,
    last_attempt: Option<Instant>,
    /// A connection attempt is running (outside the lock).
    connecting: bool,
}

struct Conn {
    module: Module,
    slots: HashMap<String, Slot>,
    idle: Vec<(String, Session)>,
    handles: HashMap<(String, Vec<u8>, bool), ObjectHandle>,
}

/// PKCS#11 failures that mean the token or its session is gone (not a
/// refusal of this one request).
fn is_loss(e: &P11Error) -> bool {
    !matches!(
        e,
        P11Error::Pkcs11(RvError::PinIncorrect | RvError::PinLocked, _)
    )
}

impl Token {
    /// Loads the module, finds the token(s) and logs in: every failure is an
    /// error naming its cause and its fix.
    pub fn open(config: TokenConfig) -> Result<Token> {
        if !config.module.exists() {
            bail!(
                "the PKCS#11 module {} does not exist (--pkcs11-module, CA_PKCS11_MODULE): install it \
                 (SoftHSM2 on Debian: apt-get install softhsm2, module /usr/lib/softhsm/libsofthsm2.so) \
                 or give the path of your HSM vendor's module",
                config.module.display()
            );
        }
        let conn = connect(&config).map_err(|e| {
            e.context(format!(
                "opening PKCS#11 token {:?} in {}",
                config.label,
                config.module.display()
            ))
        })?;
        let inner = Arc::new(Inner {
            config,
            state: Mutex::new(State {
                conn: Some(conn),
                generation: 0,
                stale_out: 0,
                out: 0,
                last_error: None,
                last_attempt: None,
                connecting: false,
            }),
            jobs: Mutex::new(None),
            closing: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 8);
        for i in 0..workers {
            let rx = rx.clone();
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name(format!("pkcs11-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
                            rx.recv()
                        };
                        let Ok(job) = job else { return };
                        let Some(inner) = weak.upgrade() else { return };
                        job(&inner);
                    }
                })
                .context("starting a PKCS#11 worker thread")?;
        }
        *inner.jobs.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("pkcs11-monitor".into())
            .spawn(move || monitor(weak))
            .context("starting the PKCS#11 monitor thread")?;
        Ok(Token { inner })
    }

    /// The intermediate's token label.
    pub fn label(&self) -> &str {
        &self.inner.config.label
    }

    /// The root's token label (the same unless `--pkcs11-root-token`).
    pub fn root_label(&self) -> &str {
        &self.inner.config.root_label
    }

    pub fn curve(&self) -> Curve {
        self.inner.config.curve
    }

    pub fn module(&self) -> &Path {
        &self.inner.config.module
    }

    /// Whether a token labelled `label` was present when the module was last initialised.
    pub fn has_token(&self, label: &str) -> bool {
        self.inner
            .lock()
            .conn
            .as_ref()
            .is_some_and(|c| c.slots.contains_key(label))
    }

    /// Whether the token answered its last probe and no call failed since.
    pub fn is_up(&self) -> bool {
        let state = self.inner.lock();
        state.conn.is_some()
    }

    /// Why the token is down, if it is.
    pub fn last_error(&self) -> Option<String> {
        self.inner.lock().last_error.clone()
    }

    /// Runs `f` with a logged-in session on token `label`, on a worker
    /// thread, waiting at most the configured timeout.
    pub fn call<R: Send + 'static>(
        &self,
        label: &str,
        f: impl FnOnce(&Session, &mut Handles<'_>) -> Result<R, P11Error> + Send + 'static,
    ) -> Result<R, TokenError> {
        let timeout = self.inner.config.timeout;
        // The connection this call is for: a timeout must not mark a newer one lost.
        let generation_seen = self.inner.lock().generation;
        let (tx, rx) = mpsc::sync_channel(1);
        let label = label.to_owned();
        let job: Job = Box::new(move |inner: &Inner| {
            let _ = tx.send(inner.with_session(&label, f));
        });
        {
            let jobs = self
                .inner
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let Some(jobs) = jobs.as_ref() else {
                return Err(TokenError::Unavailable(
                    "the PKCS#11 workers stopped".into(),
                ));
            };
            jobs.send(job)
                .map_err(|_| TokenError::Unavailable("the PKCS#11 workers stopped".into()))?;
        }
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => {
                // The call may still be hanging in the module: declare the
                // token lost so later requests fail at once.
                self.inner.lose(
                    generation_seen,
                    format!("a token call took longer than {timeout:?}"),
                );
                Err(TokenError::Timeout(timeout))
            }
        }
    }

    /// Generates an EC key pair labelled `label` in token `token` (private
    /// key sensitive, never extractable, sign only); returns its public point.
    pub fn generate_key(&self, token: &str, label: &str) -> Result<TokenKey> {
        let curve = self.curve();
        let label_b = label.as_bytes().to_vec();
        let point = self
            .call(token, move |s, _| {
                let tmp_id = {
                    let mut id = vec![0u8; 20];
                    s.generate_random_slice(&mut id)?;
                    id
                };
                let (public, private) = s.generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(false),
                        Attribute::EcParams(curve.ec_params()),
                        Attribute::Verify(true),
                        Attribute::Encrypt(false),
                        Attribute::Wrap(false),
                        Attribute::Label(label_b.clone()),
                        Attribute::Id(tmp_id.clone()),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Sign(true),
                        Attribute::Decrypt(false),
                        Attribute::Unwrap(false),
                        Attribute::Derive(false),
                        Attribute::Label(label_b),
                        Attribute::Id(tmp_id),
                    ],
                )?;
                let attrs = s.get_attributes(public, &[AttributeType::EcPoint])?;
                let Some(Attribute::EcPoint(raw)) = attrs.into_iter().next() else {
                    return Err(P11Error::NotSupported);
                };
                let point = decode_point(&raw, curve).ok_or(P11Error::NotSupported)?;
                let id = key_id(&point);
                s.update_attributes(public, &[Attribute::Id(id.clone())])?;
                s.update_attributes(private, &[Attribute::Id(id)])?;
                Ok(point)
            })
            .map_err(|e| anyhow!("generating a key in token {token:?}: {e}"))?;
        Ok(TokenKey {
            token: self.clone(),
            slot_label: token.to_owned(),
            id: key_id(&point),
            point,
            curve,
        })
    }

    /// The private key whose public key is `spki_der` (a CA certificate's),
    /// found by CKA_ID in token `token`.
    pub fn find_key(&self, token: &str, spki_der: &[u8]) -> Result<TokenKey> {
        let (curve, point) = Curve::of_spki(spki_der)?;
        let id = key_id(&point);
        let id2 = id.clone();
        let tok = token.to_owned();
        self.call(token, move |_, h| h.private_key(&tok, &id2))
            .map_err(|e| match e {
                TokenError::Other(e) => e,
                e => anyhow!("{e}"),
            })
            .with_context(|| {
                format!(
                    "token {token:?} holds no private key with CKA_ID {} (the key of the CA certificate): \
                     was the CA initialised in another token?",
                    hex::encode(&id)
                )
            })?;
        Ok(TokenKey {
            token: self.clone(),
            slot_label: token.to_owned(),
            id,
            point,
            curve,
        })
    }

    /// Generates the secret that wraps the OCSP responder key for the
    /// intermediate whose CKA_ID is `id` (HMAC key, never extractable).
    pub fn generate_wrap_secret(&self, id: &[u8]) -> Result<()> {
        let id = id.to_vec();
        let label = self.label().to_owned();
        self.call(&label, move |s, _| {
            s.generate_key(
                &Mechanism::GenericSecretKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen(32u64.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Verify(true),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                    Attribute::Label(OCSP_WRAP_LABEL.as_bytes().to_vec()),
                    Attribute::Id(id),
                ],
            )?;
            Ok(())
        })
        .map_err(|e| anyhow!("generating the OCSP wrap secret in the token: {e}"))
    }

    /// HMAC-SHA256 under the wrap secret of intermediate `id`: the input of
    /// the OCSP responder key's wrap key (the secret never leaves the token).
    pub fn wrap_secret_mac(&self, id: &[u8], data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let id = id.to_vec();
        let data = data.to_vec();
        let label = self.label().to_owned();
        self.call(self.label(), move |s, h| {
            let key = h.find(&label, ObjectClass::SECRET_KEY, &id)?;
            s.sign(&Mechanism::Sha256Hmac, key, &data)
        })
        .map(Zeroizing::new)
        .map_err(|e| {
            anyhow!(
                "computing the OCSP wrap key in token {:?} (secret {OCSP_WRAP_LABEL:?}): {e}",
                self.label()
            )
        })
    }

    /// Every private and secret key in token `token` with the attributes
    /// that keep it inside (for `doctor` and the tests).
    pub fn key_attributes(&self, token: &str) -> Result<Vec<KeyAttributes>> {
        self.call(token, move |s, _| {
            let mut out = Vec::new();
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY] {
                for h in s.find_objects(&[Attribute::Class(class)])? {
                    let mut k = KeyAttributes {
                        label: String::new(),
                        id: String::new(),
                        class: if class == ObjectClass::PRIVATE_KEY {
                            "private"
                        } else {
                            "secret"
                        },
                        sensitive: false,
                        extractable: true,
                        always_sensitive: false,
                        never_extractable: false,
                    };
                    for a in s.get_attributes(
                        h,
                        &[
                            AttributeType::Label,
                            AttributeType::Id,
                            AttributeType::Sensitive,
                            AttributeType::Extractable,
                            AttributeType::AlwaysSensitive,
                            AttributeType::NeverExtractable,
                        ],
                    )? {
                        match a {
                            Attribute::Label(l) => k.label = String::from_utf8_lossy(&l).into(),
                            Attribute::Id(i) => k.id = hex::encode(i),
                            Attribute::Sensitive(b) => k.sensitive = b,
                            Attribute::Extractable(b) => k.extractable = b,
                            Attribute::AlwaysSensitive(b) => k.always_sensitive = b,
                            Attribute::NeverExtractable(b) => k.never_extractable = b,
                            _ => {}
                        }
                    }
                    out.push(k);
                }
            }
            Ok(out)
        })
        .map_err(|e| anyhow!("listing the keys of token {token:?}: {e}"))
    }
}

/// A key's protection attributes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyAttributes {
    pub label: String,
    pub id: String,
    pub class: &'static str,
    pub sensitive: bool,
    pub extractable: bool,
    pub always_sensitive: bool,
    pub never_extractable: bool,
}

impl KeyAttributes {
    /// Sensitive since creation and never extractable: the key cannot have left the token.
    pub fn kept_inside(&self) -> bool {
        self.sensitive && !self.extractable && self.always_sensitive && self.never_extractable
    }
}

/// Object handles found in this connection (valid until the token is lost).
#[allow(missing_debug_implementations)] // borrows a session; nothing to show
pub struct Handles<'a> {
    session: &'a Session,
    cache: &'a Mutex<State>,
    generation: u64,
}

impl Handles<'_> {
    fn find(
        &mut self,
        token: &str,
        class: ObjectClass,
        id: &[u8],
    ) -> Result<ObjectHandle, P11Error> {
        let key = (
            token.to_owned(),
            id.to_vec(),
            class == ObjectClass::PRIVATE_KEY,
        );
        {
            let state = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if state.generation == self.generation
                && let Some(h) = state.conn.as_ref().and_then(|c| c.handles.get(&key))
            {
                return Ok(*h);
            }
        }
        let found = self
            .session
            .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])?;
        // SoftHSM answers an empty list once its token directory is gone: a
        // CA key does not vanish otherwise, so this counts as a lost token.
        let h = *found.first().ok_or(P11Error::Pkcs11(
            RvError::ObjectHandleInvalid,
            cryptoki::context::Function::FindObjects,
        ))?;
        let mut state = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if state.generation == self.generation
            && let Some(c) = state.conn.as_mut()
        {
            c.handles.insert(key, h);
        }
        Ok(h)
    }

    fn private_key(&mut self, token: &str, id: &[u8]) -> Result<ObjectHandle, P11Error> {
        self.find(token, ObjectClass::PRIVATE_KEY, id)
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks generation `generation_seen` lost (once): its sessions and the
    /// module are dropped so the monitor can initialise again.
    fn lose(&self, generation_seen: u64, why: String) {
        let conn = {
            let mut state = self.lock();
            if state.generation != generation_seen || state.conn.is_none() {
                return;
            }
            tracing::error!(token = %self.config.label, error = %why, "PKCS#11 token lost: signing is unavailable until it answers again");
            state.generation += 1;
            state.stale_out += state.out;
            state.out = 0;
            state.last_error = Some(why);
            state.conn.take()
        };
        // Closing sessions calls into the module, which may be the thing
        // that hangs: never on a request's thread, never under the lock.
        use std::sync::atomic::Ordering;
        let closing = self.closing.clone();
        closing.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("pkcs11-close".into())
            .spawn(move || {
                drop(conn);
                closing.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            // The closure, and the connection with it, was dropped here.
            self.closing.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Tries to connect again (not more than once a second, never while a
    /// session of the lost connection is still out). The module is called
    /// outside the lock, so a hung module never blocks `/healthz`.
    fn reconnect(&self) {
        {
            let mut state = self.lock();
            if state.conn.is_some()
                || state.stale_out > 0
                || state.connecting
                || self.closing.load(std::sync::atomic::Ordering::SeqCst) > 0
            {
                return;
            }
            if state
                .last_attempt
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            state.last_attempt = Some(Instant::now());
            state.connecting = true;
        }
        let result = connect(&self.config);
        let mut state = self.lock();
        state.connecting = false;
        match result {
            Ok(conn) => {
                tracing::info!(token = %self.config.label, "PKCS#11 token available again");
                state.conn = Some(conn);
                state.last_error = None;
            }
            Err(e) => state.last_error = Some(format!("{e:#}")),
        }
    }

    fn with_session<R>(
        &self,
        label: &str,
        f: impl FnOnce(&Session, &mut Handles<'_>) -> Result<R, P11Error>,
    ) -> Result<R, TokenError> {
        self.reconnect();
        // An idle session, or what opening one needs (opened outside the lock).
        let (idle, generation_seen) = {
            let mut state = self.lock();
            let generation_seen = state.generation;
            let Some(conn) = state.conn.as_mut() else {
                return Err(TokenError::Unavailable(
                    state
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not connected".into()),
                ));
            };
            let idle = match conn.idle.iter().position(|(l, _)| l == label) {
                Some(i) => Ok(conn.idle.swap_remove(i).1),
                None => Err((conn.module.clone(), conn.slots.get(label).copied())),
            };
            state.out += 1;
            (idle, generation_seen)
        };
        let opened = match idle {
            Ok(session) => Ok(session),
            Err((module, slot)) => open_session(&module, slot, label, &self.config),
        };
        let (session, result) = match opened {
            Ok(session) => {
                let result = {
                    let mut handles = Handles {
                        session: &session,
                        cache: &self.state,
                        generation: generation_seen,
                    };
                    f(&session, &mut handles)
                };
                (
                    Some(session),
                    result.map_err(|e| (is_loss(&e), e.to_string())),
                )
            }
            Err(e) => (None, Err((true, format!("{e:#}")))),
        };
        let result = {
            let mut state = self.lock();
            match result {
                Ok(r) if state.generation == generation_seen => {
                    state.out -= 1;
                    if let (Some(conn), Some(session)) = (state.conn.as_mut(), session) {
                        conn.idle.push((label.to_owned(), session));
                    }
                    return Ok(r);
                }
                other => other,
            }
        };
        // Closed outside the lock, and counted back only once closed: the
        // module is initialised again only when no session of it is left.
        drop(session);
        {
            let mut state = self.lock();
            if state.generation == generation_seen {
                state.out -= 1;
            } else {
                state.stale_out = state.stale_out.saturating_sub(1);
            }
        }
        result.map_err(|(loss, e)| {
            if loss {
                self.lose(generation_seen, e.clone());
                TokenError::Unavailable(e)
            } else {
                TokenError::Other(anyhow!("{e}"))
            }
        })
    }
}

/// Probes the token every second while it is up; reconnects while it is down.
fn monitor(weak: std::sync::Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(inner) = weak.upgrade() else { return };
        let probe = {
            let state = inner.lock();
            state.conn.as_ref().map(|conn| {
                (
                    conn.module.clone(),
                    conn.slots.get(&inner.config.label).copied(),
                    state.generation,
                )
            })
        };
        match probe {
            // Outside the lock: a hung module stalls only this thread.
            Some((module, Some(slot), generation_seen)) => {
                if let Err(e) = module.get_token_info(slot) {
                    inner.lose(generation_seen, format!("probing the token: {e}"));
                }
            }
            Some((_, None, _)) => {}
            None => inner.reconnect(),
        }
    }
}

/// Loads and initialises the module, finds every configured token and logs in.
fn connect(config: &TokenConfig) -> Result<Conn> {
    let module = Module::new(&config.module).map_err(|e| {
        anyhow!(
            "loading the PKCS#11 module {}: {e} (--pkcs11-module: is it a PKCS#11 library for this machine?)",
            config.module.display()
        )
    })?;
    module.initialize(CInitializeArgs::OsThreads).map_err(|e| {
        anyhow!(
            "initialising the PKCS#11 module {}: {e}",
            config.module.display()
        )
    })?;
    let mut slots = HashMap::new();
    let present = module
        .get_slots_with_token()
        .map_err(|e| anyhow!("listing the module's slots: {e}"))?;
    let mut labels = Vec::new();
    for slot in present {
        if let Ok(info) = module.get_token_info(slot) {
            labels.push(info.label().to_owned());
            slots.entry(info.label().to_owned()).or_insert(slot);
        }
    }
    let mut conn = Conn {
        module,
        slots,
        idle: Vec::new(),
        handles: HashMap::new(),
    };
    for (label, _, _) in &config.pins {
        if label != &config.label && !conn.slots.contains_key(label) {
            // The root token may be offline: only the intermediate's is required.
            continue;
        }
        if !conn.slots.contains_key(label) {
            bail!(
                "no token labelled {label:?} in {} (tokens present: {}): plug in or initialise the token \
                 (SoftHSM2: softhsm2-util --init-token --free --label {label:?}), or fix --pkcs11-token",
                config.module.display(),
                if labels.is_empty() {
                    "none".to_owned()
                } else {
                    labels
                        .iter()
                        .map(|l| format!("{l:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
        let session = open_session(&conn.module, conn.slots.get(label).copied(), label, config)?;
        conn.idle.push((label.clone(), session));
    }
    Ok(conn)
}

/// A read-write session on token `label` (in `slot`), logged in as the user.
fn open_session(
    module: &Module,
    slot: Option<Slot>,
    label: &str,
    config: &TokenConfig,
) -> Result<Session> {
    let slot = slot.with_context(|| {
        format!(
            "the root token {label:?} is not present (kept offline?): plug it in for init, rotation and the root CRL"
        )
    })?;
    let session = module
        .open_rw_session(slot)
        .map_err(|e| anyhow!("opening a session on token {label:?}: {e}"))?;
    let (_, pin, pin_file) = config
        .pins
        .iter()
        .find(|(l, _, _)| l == label)
        .context("no PIN configured for this token")?;
    match session.login(UserType::User, Some(&AuthPin::new(pin.as_str().into()))) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(P11Error::Pkcs11(RvError::PinIncorrect, _)) => bail!(
            "the PIN in {} was refused by token {label:?} (CKR_PIN_INCORRECT): write the token's user PIN \
             in that file (--pkcs11-pin-file); repeated wrong PINs lock the token",
            pin_file.display()
        ),
        Err(P11Error::Pkcs11(RvError::PinLocked, _)) => bail!(
            "the user PIN of token {label:?} is locked (CKR_PIN_LOCKED): the security officer must reset it \
             (SoftHSM2: softhsm2-util cannot; re-initialise the PIN with pkcs11-tool --init-pin --login --login-type so)"
        ),
        Err(e) => bail!(
            "logging in to token {label:?} with the PIN from {}: {e}",
            pin_file.display()
        ),
    }
}

/// CKA_EC_POINT is a DER OCTET STRING around the point (some modules give the point bare).
fn decode_point(raw: &[u8], curve: Curve) -> Option<Vec<u8>> {
    let n = curve.point_len();
    if raw.len() == n && raw[0] == 0x04 {
        return Some(raw.to_vec());
    }
    if raw.len() == n + 2 && raw[0] == 0x04 && usize::from(raw[1]) == n {
        return Some(raw[2..].to_vec());
    }
    None
}

/// ECDSA in a token returns r || s; X.509 wants `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return None;
    }
    fn int(v: &[u8]) -> Vec<u8> {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[0u8][..],
        };
        let mut out = vec![0x02];
        let pad = v[0] & 0x80 != 0;
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    Some(out)
}

/// A CA key inside a token: signs through `C_Sign` (CKM_ECDSA over the digest).
#[derive(Clone)]
pub struct TokenKey {
    token: Token,
    slot_label: String,
    id: Vec<u8>,
    point: Vec<u8>,
    curve: Curve,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("token", &self.slot_label)
            .field("id", &hex::encode(&self.id))
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// CKA_ID.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The uncompressed public point.
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    pub fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.curve.algorithm()
    }

    /// Signs `msg` (hashed here), DER signature out.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, TokenError> {
        let digest = ring::digest::digest(self.curve.digest(), msg)
            .as_ref()
            .to_vec();
        let id = self.id.clone();
        let label = self.slot_label.clone();
        let raw = self.token.call(&self.slot_label, move |s, h| {
            let key = h.private_key(&label, &id)?;
            s.sign(&Mechanism::Ecdsa, key, &digest)
        })?;
        ecdsa_raw_to_der(&raw).ok_or_else(|| {
            TokenError::Other(anyhow!("the token returned a malformed ECDSA signature"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_signatures_become_der_with_minimal_integers() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[32] = 0x00;
        raw[33] = 0x01; // s starts after a zero byte
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(der[0], 0x30);
        assert_eq!(&der[2..5], &[0x02, 33, 0x00]);
        let s_at = 2 + 2 + 33;
        assert_eq!(&der[s_at..s_at + 3], &[0x02, 31, 0x01]);
        assert_eq!(usize::from(der[1]), der.len() - 2);
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
    }

    fn args(argv: &[&str]) -> Pkcs11Args {
        use clap::{Args, FromArgMatches};
        let cmd = Pkcs11Args::augment_args(clap::Command::new("t"));
        Pkcs11Args::from_arg_matches(&cmd.get_matches_from([&["t"], argv].concat())).unwrap()
    }

    #[test]
    fn settings_without_a_module_are_files_or_a_precise_error() {
        assert!(args(&[]).open().unwrap().is_none());
        let err = args(&["--pkcs11-token", "x"]).open().unwrap_err();
        assert!(
            format!("{err:#}").contains("without --pkcs11-module"),
            "{err:#}"
        );
        let err = args(&["--pkcs11-module", "/nonexistent/p11.so"])
            .open()
            .unwrap_err();
        assert!(format!("{err:#}").contains("--pkcs11-token"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "\n").unwrap();
        let pin = pin.display().to_string();
        let err = args(&[
            "--pkcs11-module",
            "/nonexistent/p11.so",
            "--pkcs11-token",
            "x",
            "--pkcs11-pin-file",
            &pin,
        ])
        .open()
        .unwrap_err();
        assert!(format!("{err:#}").contains("is empty"), "{err:#}");
        std::fs::write(&pin, "1234\n").unwrap();
        let err = args(&[
            "--pkcs11-module",
            "/nonexistent/p11.so",
            "--pkcs11-token",
            "x",
            "--pkcs11-pin-file",
            &pin,
        ])
        .open()
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("/nonexistent/p11.so does not exist"), "{msg}");
        assert!(!msg.contains("1234"), "{msg}");
    }

    #[test]
    fn points_are_read_bare_or_wrapped() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        assert_eq!(decode_point(&point, Curve::P256).unwrap(), point);
        let wrapped = [&[0x04, 65][..], &point].concat();
        assert_eq!(decode_point(&wrapped, Curve::P256).unwrap(), point);
        assert!(decode_point(&wrapped, Curve::P384).is_none());
    }
}
