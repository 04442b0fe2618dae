//! The audit key that signs the audit chain's checkpoints, and the
//! checkpoint's signed message: an Ed25519 key (`audit-key.pem`, PKCS#8, 0600
//! in the data dir) that every replica shares like `psk-seal.key`, or, when
//! the CA keys are in a PKCS#11 token, an EC key generated in that token
//! (label `ca-audit`, never extractable) so no private key sits in the data
//! dir. Either way its public half is `audit-key.pub.pem`.

use super::pkcs11::{Curve, Token, TokenKey};
use anyhow::{Context, Result, bail};
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P384_SHA384_ASN1, ED25519, Ed25519KeyPair, KeyPair,
    UnparsedPublicKey,
};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// The private key file's name in the data dir.
pub const KEY_FILE: &str = "audit-key.pem";
/// The public key file's name in the data dir (for verifiers without the secret).
pub const PUBLIC_FILE: &str = "audit-key.pub.pem";

/// The label of the audit key generated in a PKCS#11 token.
pub const TOKEN_LABEL: &str = "ca-audit";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before
/// the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// The DER prefixes of P-256 and P-384 SubjectPublicKeyInfos (RFC 5480),
/// before the uncompressed point.
const SPKI_PREFIX_P256: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const SPKI_PREFIX_P384: [u8; 23] = [
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];

/// What signs checkpoints: the file key today, a token tomorrow.
pub trait CheckpointSigner: Send + Sync {
    /// Names the key (hex SHA-256 of its public key), stored with each checkpoint.
    fn key_id(&self) -> String;
    /// Signs a checkpoint message ([`checkpoint_message`]).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;
}

/// The message a checkpoint's signature covers: a domain label, the chain
/// length, the head hash and the time, each fixed-length.
pub fn checkpoint_message(seq: i64, head: &[u8; 32], at: i64) -> Vec<u8> {
    let mut m = b"ca-server audit checkpoint v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(head);
    m.extend_from_slice(&at.to_be_bytes());
    m
}

/// Signs a checkpoint of (`seq`, `head`) at `at`: (key id, signature).
pub fn sign_checkpoint(
    signer: &dyn CheckpointSigner,
    seq: i64,
    head: &[u8; 32],
    at: i64,
) -> Result<(String, Vec<u8>)> {
    Ok((
        signer.key_id(),
        signer.sign(&checkpoint_message(seq, head, at))?,
    ))
}

/// The Ed25519 key from `audit-key.pem`.
pub struct FileKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(<redacted>)")
    }
}

impl CheckpointSigner for FileKey {
    fn key_id(&self) -> String {
        key_id(self.pair.public_key().as_ref())
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        Ok(self.pair.sign(message).as_ref().to_vec())
    }
}

impl FileKey {
    /// The raw 32-byte public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::ed25519(self.pair.public_key().as_ref().to_vec())
    }
}

/// A checkpoint key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Ed25519,
    /// ECDSA over SHA-256 / SHA-384, DER signatures (a token key).
    EcdsaP256,
    EcdsaP384,
}

/// A verifying key: the raw public key (32 Ed25519 bytes, or an EC
/// uncompressed point) and its algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    alg: Alg,
    raw: Vec<u8>,
}

impl PublicKey {
    fn ed25519(raw: Vec<u8>) -> PublicKey {
        PublicKey {
            alg: Alg::Ed25519,
            raw,
        }
    }

    fn ec(curve: Curve, point: Vec<u8>) -> PublicKey {
        let alg = match curve {
            Curve::P256 => Alg::EcdsaP256,
            Curve::P384 => Alg::EcdsaP384,
        };
        PublicKey { alg, raw: point }
    }

    pub fn key_id(&self) -> String {
        key_id(&self.raw)
    }

    /// The SubjectPublicKeyInfo DER.
    fn spki(&self) -> Vec<u8> {
        let mut der = match self.alg {
            Alg::Ed25519 => SPKI_PREFIX.to_vec(),
            Alg::EcdsaP256 => SPKI_PREFIX_P256.to_vec(),
            Alg::EcdsaP384 => SPKI_PREFIX_P384.to_vec(),
        };
        der.extend_from_slice(&self.raw);
        der
    }

    /// Whether `signature` is this key's over the checkpoint.
    pub fn verifies(&self, seq: i64, head: &[u8], at: i64, signature: &[u8]) -> bool {
        let Ok(head) = <[u8; 32]>::try_from(head) else {
            return false;
        };
        let alg: &dyn ring::signature::VerificationAlgorithm = match self.alg {
            Alg::Ed25519 => &ED25519,
            Alg::EcdsaP256 => &ECDSA_P256_SHA256_ASN1,
            Alg::EcdsaP384 => &ECDSA_P384_SHA384_ASN1,
        };
        UnparsedPublicKey::new(alg, &self.raw)
            .verify(&checkpoint_message(seq, &head, at), signature)
            .is_ok()
    }

    /// PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new("PUBLIC KEY", self.spki()))
    }

    /// From a PEM `PUBLIC KEY` (as [`PublicKey::to_pem`] writes) or the
    /// private key file (its public half).
    pub fn from_pem_file(path: &Path) -> Result<PublicKey> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let block = pem::parse(&text).with_context(|| format!("{} is not PEM", path.display()))?;
        match block.tag() {
            "PUBLIC KEY" => {
                let der = block.contents();
                if der.len() == 44 && der[..12] == SPKI_PREFIX {
                    return Ok(PublicKey::ed25519(der[12..].to_vec()));
                }
                match Curve::of_spki(der) {
                    Ok((curve, point)) => Ok(PublicKey::ec(curve, point)),
                    Err(_) => bail!(
                        "{} is neither an Ed25519 nor a P-256/P-384 public key",
                        path.display()
                    ),
                }
            }
            "PRIVATE KEY" => Ok(pair_from(block.contents(), path)?.public_key()),
            other => bail!(
                "{} holds a {other}, not an Ed25519 PUBLIC KEY or PRIVATE KEY",
                path.display()
            ),
        }
    }
}

fn key_id(public: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, public))
}

fn pair_from(pkcs8: &[u8], path: &Path) -> Result<FileKey> {
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key: {e}", path.display()))?;
    Ok(FileKey { pair })
}

/// Loads `audit-key.pem` from `data_dir`.
pub fn load(data_dir: &Path) -> Result<FileKey> {
    let path = data_dir.join(KEY_FILE);
    if !path.exists() {
        bail!(
            "{} does not exist yet (`init` or the first `serve` creates it; every replica needs the same file)",
            path.display()
        );
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    );
    let block = pem::parse(&*text).with_context(|| format!("{} is not PEM", path.display()))?;
    if block.tag() != "PRIVATE KEY" {
        bail!("{} is not a PKCS#8 PRIVATE KEY", path.display());
    }
    pair_from(block.contents(), &path)
}

/// `serve`'s audit key: loaded (created if missing) and checked to be the
/// key this store's checkpoints are signed with (claiming an unclaimed
/// store), so replicas cannot sign with different keys.
pub async fn install(
    data_dir: &Path,
    token: Option<&Token>,
    store: &crate::store::Store,
) -> Result<Box<dyn CheckpointSigner>> {
    let key = open_or_create(data_dir, token)?;
    let claimed = store
        .claim_audit_key(&key.key_id())
        .await
        .context("reading the store's audit key id")?;
    if claimed != key.key_id() {
        bail!(
            "{} is not the audit key this store's checkpoints are signed with (key id {claimed}; \
             this one is {}). Every replica needs the same file: copy it (and {PUBLIC_FILE}) \
             from the data dir of the server that started first",
            data_dir.join(KEY_FILE).display(),
            key.key_id()
        );
    }
    Ok(key)
}

/// The audit key for this run: in `token` when the CA keys are in one,
/// else the file; created if missing (by `init` or the first `serve`).
pub fn open_or_create(data_dir: &Path, token: Option<&Token>) -> Result<Box<dyn CheckpointSigner>> {
    Ok(match token {
        Some(token) => Box::new(open_in_token(data_dir, token, true)?),
        None => Box::new(load_or_create(data_dir)?),
    })
}

/// The audit key for `audit checkpoint`: as [`open_or_create`], never creating one.
pub fn open(data_dir: &Path, token: Option<&Token>) -> Result<Box<dyn CheckpointSigner>> {
    Ok(match token {
        Some(token) => Box::new(open_in_token(data_dir, token, false)?),
        None => Box::new(load(data_dir)?),
    })
}

/// An audit key generated in a PKCS#11 token: signs with `C_Sign`, never
/// leaves the token.
#[derive(Debug)]
pub struct TokenAuditKey {
    key: TokenKey,
    public: PublicKey,
}

impl CheckpointSigner for TokenAuditKey {
    fn key_id(&self) -> String {
        self.public.key_id()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.key
            .sign(message)
            .map_err(|e| anyhow::anyhow!("signing an audit checkpoint in the token: {e}"))
    }
}

/// Finds the token's audit key by the public half in `audit-key.pub.pem`,
/// or (with `create`, when that file is missing) generates one labelled
/// [`TOKEN_LABEL`] and writes its public half.
fn open_in_token(data_dir: &Path, token: &Token, create: bool) -> Result<TokenAuditKey> {
    let public_path = data_dir.join(PUBLIC_FILE);
    if public_path.exists() {
        let public = PublicKey::from_pem_file(&public_path)?;
        if public.alg == Alg::Ed25519 {
            bail!(
                "{} is the public half of a file audit key, but the CA keys are in a PKCS#11 token: \
                 the audit key belongs in the token too. Move {} and {KEY_FILE} aside on a new CA \
                 (docs/pkcs11.md); on a store that already has checkpoints, keep serving without \
                 the token settings",
                public_path.display(),
                public_path.display()
            );
        }
        let key = token
            .find_key(token.label(), &public.spki())
            .with_context(|| format!("finding the audit key of {}", public_path.display()))?;
        return Ok(TokenAuditKey { key, public });
    }
    if !create {
        bail!(
            "{} does not exist yet (`init` or the first `serve` generates the audit key in the token)",
            public_path.display()
        );
    }
    let key = token.generate_key(token.label(), TOKEN_LABEL)?;
    let public = PublicKey::ec(token.curve(), key.point().to_vec());
    proto::fsutil::write_atomic(&public_path, public.to_pem().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", public_path.display()))?;
    Ok(TokenAuditKey { key, public })
}

/// Loads `audit-key.pem`, creating it (0600, exclusively: two processes
/// starting at once end up with the same key) and its public half if missing.
pub fn load_or_create(data_dir: &Path) -> Result<FileKey> {
    let path = data_dir.join(KEY_FILE);
    if !path.exists() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| anyhow::anyhow!("generating the audit key failed"))?;
        let text = zeroize::Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            pkcs8.as_ref().to_vec(),
        )));
        // Written whole under a temporary name, then linked: the key file
        // appears complete or not at all, and only the first link wins.
        let tmp = temp_path(data_dir);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => proto::fsutil::sync_dir(data_dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    let key = load(data_dir)?;
    let public = data_dir.join(PUBLIC_FILE);
    if !public.exists() {
        proto::fsutil::write_atomic(&public, key.public_key().to_pem().as_bytes(), 0o644)
            .with_context(|| format!("writing {}", public.display()))?;
    }
    Ok(key)
}

fn temp_path(dir: &Path) -> PathBuf {
    let mut n = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n);
    dir.join(format!(".{KEY_FILE}.{}", hex::encode(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_verify_under_the_public_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create(dir.path()).unwrap();
        // Created once: loading again gives the same key.
        assert_eq!(load_or_create(dir.path()).unwrap().key_id(), key.key_id());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let head = [7u8; 32];
        let (id, sig) = sign_checkpoint(&key, 42, &head, 1_800_000_000).unwrap();
        assert_eq!(id, key.key_id());
        let public = PublicKey::from_pem_file(&dir.path().join(PUBLIC_FILE)).unwrap();
        assert_eq!(public, key.public_key());
        assert!(public.verifies(42, &head, 1_800_000_000, &sig));
        // Any other length, head or time fails.
        assert!(!public.verifies(41, &head, 1_800_000_000, &sig));
        assert!(!public.verifies(42, &[8u8; 32], 1_800_000_000, &sig));
        assert!(!public.verifies(42, &head, 1_800_000_001, &sig));
        // Another key's signature fails.
        let other = tempfile::tempdir().unwrap();
        let other = load_or_create(other.path()).unwrap();
        let (_, forged) = sign_checkpoint(&other, 42, &head, 1_800_000_000).unwrap();
        assert!(!public.verifies(42, &head, 1_800_000_000, &forged));
    }

    #[test]
    fn token_style_ecdsa_checkpoints_verify_through_the_public_file() {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = PublicKey::ec(Curve::P256, pair.public_key().as_ref().to_vec());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PUBLIC_FILE);
        std::fs::write(&path, public.to_pem()).unwrap();
        let read = PublicKey::from_pem_file(&path).unwrap();
        assert_eq!(read, public);
        let head = [3u8; 32];
        let msg = checkpoint_message(9, &head, 1_800_000_000);
        let sig = pair.sign(&rng, &msg).unwrap();
        assert!(read.verifies(9, &head, 1_800_000_000, sig.as_ref()));
        assert!(!read.verifies(10, &head, 1_800_000_000, sig.as_ref()));
        // An Ed25519 key's public file is not mistaken for it, nor it for one.
        let ed = load_or_create(dir.path()).unwrap().public_key();
        assert_ne!(ed.key_id(), read.key_id());
        assert!(!ed.verifies(9, &head, 1_800_000_000, sig.as_ref()));
    }
}
