//! Atomic, permission-correct file writes for keys and certificates.
//!
//! A file is created under a temporary name with its final mode from the first
//! byte (so a key is never readable by others, not even for an instant),
//! written, fsynced, renamed over the target and the directory fsynced.

use crate::dirfd::DirFd;
use anyhow::{Context, Result, bail};
use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Mode for private keys.
pub const KEY_MODE: u32 = 0o600;
/// Mode for certificates and other public material.
pub const PUBLIC_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically with `mode`. The parent directory
/// is opened once; the file is created in it with O_EXCL|O_NOFOLLOW, fsynced
/// and renamed relative to that descriptor, so a symlink planted under the
/// temporary or the final name is replaced, never followed.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", path.display()))?;
    let dir = DirFd::open_follow(dir)?;
    dir.write_file(name, contents, mode, None)?;
    dir.sync()
}

/// fsyncs a directory so that a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating directory {}", dir.display()))
}

/// A directory holding a host key (`bootstrap`, `renew`, `crl` directories):
/// created 0700 if missing; an existing one must belong to the invoking user
/// (another user could swap the key or read it) and is tightened to 0700.
pub fn private_key_dir(dir: &Path) -> Result<()> {
    create_private_dir(dir)?;
    tighten_key_dir(dir)
}

/// The checks of [`private_key_dir`] on an existing directory (nothing
/// happens when it does not exist: the caller reports that).
pub fn tighten_key_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    let d = DirFd::open_follow(dir)?;
    let meta = d.meta()?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid != me {
        bail!(
            "{} belongs to uid {}, not to the invoking user (uid {me}); refusing to keep a private key there (chown it or choose another --dir)",
            dir.display(),
            meta.uid
        );
    }
    if meta.mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{:o}", meta.mode),
            "tightening the key directory to 0700"
        );
        d.set_owner_mode(None, 0o700)?;
    }
    Ok(())
}

/// Takes an exclusive lock on `dir` (a `.lock` file in it, opened without
/// following a symlink) for the life of the returned file: one `renew` or
/// `crl` at a time per directory.
pub fn lock_dir(dir: &Path) -> Result<File> {
    DirFd::open_follow(dir)?.lock(".lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn writes_with_exact_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        write_atomic(&p, b"one", KEY_MODE).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"two", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_replaces_a_planted_symlink_and_the_lock_refuses_one() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "victim").unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        let d = dir.path().join("d");
        std::os::unix::fs::symlink(&victim, d.join("key.pem")).unwrap();
        write_atomic(&d.join("key.pem"), b"key", KEY_MODE).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "victim");
        assert_eq!(fs::read(d.join("key.pem")).unwrap(), b"key");
        std::os::unix::fs::symlink(&victim, d.join(".lock")).unwrap();
        let err = lock_dir(&d).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "victim");
    }

    #[test]
    fn key_dirs_are_tightened_to_0700() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("keys");
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        private_key_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A new one is made 0700.
        private_key_dir(&dir.path().join("new")).unwrap();
        assert_eq!(
            fs::metadata(dir.path().join("new"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // Owned by another user: refused (only root can set that up).
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            let err = private_key_dir(&d).unwrap_err();
            assert!(
                format!("{err:#}").contains("belongs to uid 65534"),
                "{err:#}"
            );
            assert_eq!(fs::metadata(&d).unwrap().uid(), 65534);
        }
    }
}
