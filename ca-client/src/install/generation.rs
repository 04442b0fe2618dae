//! How a set of files goes live as one unit.
//!
//! `DEST/current` is a symlink to a generation directory
//! `DEST/gen-<serial>-<nonce>/` holding every file of one issuance. A new
//! generation is written (each file atomically, fsynced, mode and owner set)
//! beside the live one; switching is one `rename(2)` of a new symlink over
//! `current`, so a reader that resolves `current/...` sees either the old set
//! or the new one, never a mix of files from two issuances. Rolling back is
//! the same rename pointing at the previous generation. Services are
//! configured with `DEST/current/<file>` paths only.

use super::sys::Owner;
use crate::fsutil;
use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The symlink services read through.
pub const CURRENT: &str = "current";
const GEN_PREFIX: &str = "gen-";
const LOCK_FILE: &str = ".install.lock";

/// One file of a generation.
#[derive(Debug)]
pub struct GenFile {
    pub name: &'static str,
    pub contents: Zeroizing<Vec<u8>>,
    pub mode: u32,
}

/// An installation directory, locked for the life of this value so two
/// installs into one DEST cannot interleave.
#[derive(Debug)]
pub struct Dest {
    pub path: PathBuf,
    _lock: fs::File,
}

impl Dest {
    /// Creates DEST (0755: the service's own user must be able to traverse
    /// it; the key file's mode protects the key) and takes its lock.
    pub fn open(path: &Path) -> Result<Dest> {
        if !path.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(path)
                .with_context(|| format!("creating {}", path.display()))?;
        }
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .with_context(|| format!("opening the lock in {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(Dest {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The generation `current` points to, if any.
    pub fn current(&self) -> Result<Option<String>> {
        let link = self.path.join(CURRENT);
        match fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", link.display())),
            Ok(m) if !m.file_type().is_symlink() => bail!(
                "{} exists and is not a symlink; move it away (the installer manages it)",
                link.display()
            ),
            Ok(_) => {
                let target = fs::read_link(&link)?;
                Ok(Some(target.to_string_lossy().into_owned()))
            }
        }
    }

    /// Writes a new generation directory (not yet live) and returns its name.
    pub fn write_generation(
        &self,
        serial: &str,
        files: &[GenFile],
        owner: Option<Owner>,
    ) -> Result<String> {
        let mut nonce = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| anyhow::anyhow!("CSPRNG failure"))?;
        let short = &serial[..serial.len().min(16)];
        let name = format!("{GEN_PREFIX}{short}-{}", hex::encode(nonce));
        let dir = self.path.join(&name);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let result = (|| -> Result<()> {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
            for f in files {
                let path = dir.join(f.name);
                fsutil::write_atomic(&path, &f.contents, f.mode)?;
                if let Some(o) = owner {
                    std::os::unix::fs::chown(&path, Some(o.uid), Some(o.gid))
                        .with_context(|| format!("chown {}:{} {}", o.uid, o.gid, path.display()))?;
                }
            }
            fsutil::sync_dir(&dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(name)
    }

    /// Path of a file of a generation.
    pub fn file(&self, generation: &str, name: &str) -> PathBuf {
        self.path.join(generation).join(name)
    }

    /// Points `current` at `generation` (or removes it for `None`) with one rename.
    pub fn switch_to(&self, generation: Option<&str>) -> Result<()> {
        let link = self.path.join(CURRENT);
        match generation {
            Some(g) => {
                let tmp = self
                    .path
                    .join(format!(".{CURRENT}.tmp-{}", std::process::id()));
                let _ = fs::remove_file(&tmp);
                std::os::unix::fs::symlink(g, &tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                fs::rename(&tmp, &link).with_context(|| {
                    format!("renaming {} over {}", tmp.display(), link.display())
                })?;
            }
            None => match fs::remove_file(&link) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", link.display()));
                }
                _ => {}
            },
        }
        fsutil::sync_dir(&self.path)
    }

    /// Removes every generation except `keep`.
    pub fn prune(&self, keep: &str) -> Result<()> {
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(GEN_PREFIX) && name != keep && entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        fsutil::sync_dir(&self.path)
    }

    /// Removes one generation (a failed one).
    pub fn remove(&self, generation: &str) -> Result<()> {
        fs::remove_dir_all(self.path.join(generation))
            .with_context(|| format!("removing {}", self.path.join(generation).display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &'static str, body: &str, mode: u32) -> GenFile {
        GenFile {
            name,
            contents: Zeroizing::new(body.as_bytes().to_vec()),
            mode,
        }
    }

    #[test]
    fn switches_rolls_back_and_prunes() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = Dest::open(&tmp.path().join("tls")).unwrap();
        assert_eq!(dest.current().unwrap(), None);
        let a = dest
            .write_generation(
                "aa",
                &[file("k", "one", 0o600), file("c", "one", 0o644)],
                None,
            )
            .unwrap();
        dest.switch_to(Some(&a)).unwrap();
        let b = dest
            .write_generation(
                "bb",
                &[file("k", "two", 0o600), file("c", "two", 0o644)],
                None,
            )
            .unwrap();
        // Not live until switched.
        let live = |n: &str| fs::read_to_string(tmp.path().join("tls/current").join(n)).unwrap();
        assert_eq!(live("k"), "one");
        dest.switch_to(Some(&b)).unwrap();
        assert_eq!((live("k"), live("c")), ("two".into(), "two".into()));
        let mode = fs::metadata(dest.file(&b, "k"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        // Roll back.
        dest.switch_to(Some(&a)).unwrap();
        assert_eq!(dest.current().unwrap().as_deref(), Some(a.as_str()));
        assert_eq!(live("c"), "one");
        dest.prune(&a).unwrap();
        assert!(!dest.path.join(&b).exists());
        assert!(dest.path.join(&a).exists());
        dest.switch_to(None).unwrap();
        assert_eq!(dest.current().unwrap(), None);
    }

    #[test]
    fn refuses_a_current_that_is_not_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join(CURRENT)).unwrap();
        let dest = Dest::open(tmp.path()).unwrap();
        assert!(dest.current().is_err());
    }
}
