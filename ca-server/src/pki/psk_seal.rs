//! The PSK seal: AES-256-GCM under a CA secret (`psk-seal.key` in the data
//! dir, 32 random bytes, 0600, like `intermediate.key`), so the store can
//! hold each PSK in a form only a holder of the data dir can open.
//!
//! Why: ACME's External Account Binding is an HMAC keyed with the PSK, and
//! the SHA-256 the store keeps for `/v1/sign` cannot check an HMAC. The
//! sealed PSK's associated data is the hostname and the PSK's SHA-256, so a
//! sealed value moved to another row, or left behind when the PSK was
//! replaced, never opens as that row's PSK. Replicas share the data dir
//! contents, so every replica opens what any of them (or the CLI) sealed.
//!
//! The key is loaded once per process ([`install`]) by `serve` and the
//! local admin CLI; without it (a data dir that is not a CA's) PSKs are
//! stored unsealed and work for `/v1/sign` and Puppet but not for ACME. The
//! store records which key its PSKs are sealed under (`psk_seal_key`): a
//! replica started with another key refuses to start, a CLI with another
//! key seals nothing and says why.

use anyhow::{Context, Result};
use policy::{Psk, PskHash};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "psk-seal.key";

/// The sealing key of this process.
pub struct SealKey {
    key: LessSafeKey,
    /// SHA-256 of the raw key, from which other keys are derived ([`SealKey::derive`]).
    root: Zeroizing<[u8; 32]>,
    /// Names the key without revealing it (the store's `psk_seal_key`).
    id: String,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

static KEY: OnceLock<SealKey> = OnceLock::new();

/// Loads the data dir's seal key (with `create`, creating it if missing:
/// 0600, exclusively, so two processes starting at once end up with the
/// same key), checks it is the key the store's PSKs are sealed under
/// (claiming an unclaimed store), and makes it this process's key. `serve`
/// creates; the CLI only loads, so a key file is never created by another
/// user than the server's.
pub async fn install(data_dir: &Path, store: &crate::store::Store, create: bool) -> Result<()> {
    if KEY.get().is_some() {
        return Ok(());
    }
    let path = data_dir.join(KEY_FILE);
    if !create && !path.exists() {
        anyhow::bail!(
            "{} does not exist yet (`init` or the first `serve` creates it)",
            path.display()
        );
    }
    let key = load_or_create(data_dir)?;
    let claimed = store
        .claim_psk_seal_key(&key.id)
        .await
        .context("reading the store's PSK seal key id")?;
    if claimed != key.id {
        anyhow::bail!(
            "{} is not the PSK seal key this store's PSKs are sealed with (key id {claimed}; \
             this one is {}). Every replica and the CLI need the same file: copy it from \
             the data dir that created it",
            data_dir.join(KEY_FILE).display(),
            key.id
        );
    }
    let _ = KEY.set(key);
    Ok(())
}

/// The key of `data_dir`, created if missing.
pub fn load_or_create(data_dir: &Path) -> Result<SealKey> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            let mut bytes = Zeroizing::new([0u8; 32]);
            SystemRandom::new()
                .fill(&mut bytes[..])
                .map_err(|_| anyhow::anyhow!("CSPRNG failure"))?;
            file.write_all(&bytes[..])
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            proto::fsutil::sync_dir(data_dir)?;
            key_from(&bytes[..])
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process may be writing it this instant: 32 bytes are
            // written in one call, so retry briefly on a short read.
            for _ in 0..50 {
                let bytes = Zeroizing::new(
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                );
                if bytes.len() == 32 {
                    return key_from(&bytes);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            anyhow::bail!("{} is not 32 bytes long", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

fn key_from(bytes: &[u8]) -> Result<SealKey> {
    let key = UnboundKey::new(&AES_256_GCM, bytes)
        .map_err(|_| anyhow::anyhow!("the PSK seal key is not an AES-256 key"))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"ca-server psk-seal key id\0");
    ctx.update(bytes);
    let id = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &ctx.finish().as_ref()[..16],
    );
    let mut root = Zeroizing::new([0u8; 32]);
    root.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    Ok(SealKey {
        key: LessSafeKey::new(key),
        root,
        id,
    })
}

/// The key installed in this process, if any.
pub fn installed() -> Option<&'static SealKey> {
    KEY.get()
}

/// The associated data binding a sealed PSK to its row.
fn aad(hostname: &str, hash: &PskHash) -> Vec<u8> {
    let mut v = Vec::with_capacity(hostname.len() + 33);
    v.extend_from_slice(hostname.as_bytes());
    v.push(0);
    v.extend_from_slice(&hash.0);
    v
}

impl SealKey {
    /// A 32-byte key for another purpose (`label`), derived from this one:
    /// HMAC-SHA256(SHA-256(key), label). Shared by every replica with the file.
    pub fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.root[..]),
            label,
        );
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The key's id (SHA-256 of a label and the key, 16 bytes, base64url).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `nonce || ciphertext || tag` of `psk` for the row (`hostname`, its hash).
    pub fn seal(&self, hostname: &str, psk: &Psk) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("CSPRNG failure"))?;
        let mut buf = psk.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(hostname, &psk.hash())),
                &mut buf,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        zeroize::Zeroize::zeroize(&mut buf);
        Ok(out)
    }

    /// The PSK sealed for the row (`hostname`, `hash`); `None` if it does not
    /// open (another key, another row, a replaced PSK) or is not that PSK.
    pub fn open(&self, hostname: &str, hash: &PskHash, sealed: &[u8]) -> Option<Psk> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = Zeroizing::new(body.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(hostname, hash)), &mut buf)
            .ok()?;
        let psk = Psk::new(String::from_utf8(plain.to_vec()).ok()?).ok()?;
        psk.hash().ct_eq(hash).then_some(psk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_psk_opens_only_for_its_row_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(key.id(), again.id());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let psk = Psk::from_random(&[7u8; 32]);
        let sealed = key.seal("a.example.internal", &psk).unwrap();
        assert!(
            !sealed
                .windows(psk.expose().len())
                .any(|w| w == psk.expose().as_bytes())
        );
        let opened = again
            .open("a.example.internal", &psk.hash(), &sealed)
            .unwrap();
        assert_eq!(opened.expose(), psk.expose());
        assert!(
            key.open("b.example.internal", &psk.hash(), &sealed)
                .is_none()
        );
        let other = Psk::from_random(&[8u8; 32]);
        assert!(
            key.open("a.example.internal", &other.hash(), &sealed)
                .is_none()
        );
        let foreign = load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(
            foreign
                .open("a.example.internal", &psk.hash(), &sealed)
                .is_none()
        );
    }
}
