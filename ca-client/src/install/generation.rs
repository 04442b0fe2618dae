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
use crate::dirfd::DirFd;
use anyhow::{Context, Result, bail};
use rustix::fs::FileType;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The symlink services read through.
pub const CURRENT: &str = "current";
const GEN_PREFIX: &str = "gen-";
const LOCK_FILE: &str = ".install.lock";
/// Mode of DEST when the installer creates it and of every generation
/// directory: the service's own user must be able to traverse them; the key
/// file's mode protects the key.
const DIR_MODE: u32 = 0o755;

/// One file of a generation.
#[derive(Debug)]
pub struct GenFile {
    pub name: &'static str,
    pub contents: Zeroizing<Vec<u8>>,
    pub mode: u32,
}

/// A file of the live generation of `dest`, read without the lock and only
/// through descriptors: `current` must name a `gen-*` directory inside DEST
/// owned by the installing user, and the file must be a regular file in it.
/// `None` when there is none (or anything about it is not the installer's:
/// the install that follows reports that precisely).
pub fn read_live_file(dest: &Path, name: &str) -> Option<Zeroizing<Vec<u8>>> {
    let dir = DirFd::open_nofollow(dest).ok()?;
    let target = dir.read_link(CURRENT).ok()?;
    if !target.starts_with(GEN_PREFIX) || target.contains('/') {
        return None;
    }
    let g = dir.open_dir(&target).ok()?;
    if g.meta().ok()?.uid != rustix::process::geteuid().as_raw() {
        return None;
    }
    g.read_file(name, 1024 * 1024).ok()
}

/// An installation directory, opened once and locked for the life of this
/// value so two installs into one DEST cannot interleave. Every operation
/// goes through the descriptor (`path` is for messages and for the paths
/// written into service configuration).
#[derive(Debug)]
pub struct Dest {
    pub path: PathBuf,
    dir: DirFd,
    /// The installing user: owner of every generation directory.
    me: u32,
    _lock: fs::File,
}

impl Dest {
    /// [`Dest::open_for`] without `--owner`.
    pub fn open(path: &Path) -> Result<Dest> {
        Dest::open_for(path, None)
    }

    /// Creates DEST (0755) if missing, opens it without following a
    /// symlink, checks who owns it, takes its lock and refuses entries the
    /// installer did not make.
    ///
    /// DEST must belong to the installing user, or to the `--owner` account
    /// (a directory the service's user made). Its parent may belong to
    /// anyone: after this open, nothing depends on a path again.
    pub fn open_for(path: &Path, owner: Option<Owner>) -> Result<Dest> {
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(path)
                .with_context(|| format!("creating {}", path.display()))?,
            _ => {}
        }
        let dir = DirFd::open_nofollow(path).context("opening --dest")?;
        let me = rustix::process::geteuid().as_raw();
        let meta = dir.meta()?;
        let owner_uid = owner.map(|o| o.uid);
        if meta.uid != me && Some(meta.uid) != owner_uid {
            bail!(
                "{} belongs to uid {}, which is neither the installing user (uid {me}) nor the --owner account; refusing to install there",
                path.display(),
                meta.uid
            );
        }
        let lock = dir.lock(LOCK_FILE)?;
        let dest = Dest {
            path: path.to_path_buf(),
            dir,
            me,
            _lock: lock,
        };
        for name in dest.dir.names()? {
            // An entry gone since the listing is no longer there to refuse.
            if name.starts_with(GEN_PREFIX) && dest.dir.entry(&name)?.is_some() {
                dest.check_generation(&name)?;
            }
        }
        Ok(dest)
    }

    /// A generation entry must be a real directory owned by the installing
    /// user: anything else was planted by someone else.
    fn check_generation(&self, name: &str) -> Result<()> {
        let shown = self.path.join(name);
        match self.dir.entry(name)? {
            None => bail!(
                "{} does not exist (removed or moved away by someone else); refusing to go on",
                shown.display()
            ),
            Some(m) if m.kind == FileType::Symlink => bail!(
                "{} is a symlink, not a generation directory the installer made; refusing to use DEST until it is removed",
                shown.display()
            ),
            Some(m) if m.kind != FileType::Directory => bail!(
                "{} is not a directory; refusing to use DEST until it is removed",
                shown.display()
            ),
            Some(m) if m.uid != self.me => bail!(
                "{} belongs to uid {}, not to the installing user (uid {}): not a generation the installer made; refusing to use DEST until it is removed",
                shown.display(),
                m.uid,
                self.me
            ),
            Some(_) => Ok(()),
        }
    }

    /// Opens a generation directory after checking it is one the installer made.
    pub fn open_generation(&self, name: &str) -> Result<DirFd> {
        if !name.starts_with(GEN_PREFIX) || name.contains('/') {
            bail!("{name:?} is not a generation name");
        }
        self.check_generation(name)?;
        let g = self.dir.open_dir(name)?;
        // The entry may have been swapped between the check and the open.
        if g.meta()?.uid != self.me {
            bail!(
                "{} changed owner while being opened; refusing it",
                self.path.join(name).display()
            );
        }
        Ok(g)
    }

    /// The generation `current` points to, if any. Only a symlink naming a
    /// `gen-*` directory directly inside DEST, made by the installer, is
    /// accepted.
    pub fn current(&self) -> Result<Option<String>> {
        let link = self.path.join(CURRENT);
        match self.dir.entry(CURRENT)? {
            None => Ok(None),
            Some(m) if m.kind != FileType::Symlink => bail!(
                "{} exists and is not a symlink; move it away (the installer manages it)",
                link.display()
            ),
            Some(_) => {
                let target = self.dir.read_link(CURRENT)?;
                if !target.starts_with(GEN_PREFIX) || target.contains('/') {
                    bail!(
                        "{} points to {target:?}, not to a generation directory inside DEST; refusing it (the installer only makes current -> gen-*)",
                        link.display()
                    );
                }
                self.check_generation(&target)
                    .with_context(|| format!("{} points to {target}", link.display()))?;
                Ok(Some(target))
            }
        }
    }

    /// Writes a new generation directory (not yet live) and returns its
    /// name. The directory is made with mkdirat and opened without
    /// following a symlink; its files are created relative to it, owner and
    /// mode set on each descriptor before the file gets its name.
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
        self.dir.mkdir(&name, DIR_MODE)?;
        let result = (|| -> Result<()> {
            let g = self.open_generation(&name)?;
            if !g.names()?.is_empty() {
                bail!(
                    "{} is not the empty directory just made; refusing it",
                    g.path().display()
                );
            }
            g.set_owner_mode(None, DIR_MODE)?;
            for f in files {
                g.write_file(f.name, &f.contents, f.mode, owner.map(|o| (o.uid, o.gid)))?;
            }
            g.sync()
        })();
        if let Err(e) = result {
            let _ = self.remove(&name);
            return Err(e);
        }
        Ok(name)
    }

    /// Path of a file of a generation (for messages and tests).
    pub fn file(&self, generation: &str, name: &str) -> PathBuf {
        self.path.join(generation).join(name)
    }

    /// Points `current` at `generation` (or removes it for `None`) with one
    /// rename relative to DEST.
    pub fn switch_to(&self, generation: Option<&str>) -> Result<()> {
        match generation {
            Some(g) => {
                let mut nonce = [0u8; 4];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
                    .map_err(|_| anyhow::anyhow!("CSPRNG failure"))?;
                let tmp = format!(
                    ".{CURRENT}.tmp-{}-{}",
                    std::process::id(),
                    hex::encode(nonce)
                );
                self.dir.symlink(g, &tmp)?;
                if let Err(e) = self.dir.rename(&tmp, CURRENT) {
                    let _ = self.dir.unlink(&tmp);
                    return Err(e);
                }
            }
            None => {
                if self.dir.entry(CURRENT)?.is_some() {
                    self.dir.unlink(CURRENT)?;
                }
            }
        }
        self.dir.sync()
    }

    /// Removes every generation except `keep`. Entries the installer did
    /// not make are left alone (and reported).
    pub fn prune(&self, keep: &str) -> Result<()> {
        let mut foreign = Vec::new();
        for name in self.dir.names()? {
            if !name.starts_with(GEN_PREFIX) || name == keep {
                continue;
            }
            match self.check_generation(&name) {
                Ok(()) => self.dir.remove_tree(&name)?,
                Err(e) => foreign.push(format!("{e:#}")),
            }
        }
        self.dir.sync()?;
        if !foreign.is_empty() {
            bail!("left alone: {}", foreign.join("; "));
        }
        Ok(())
    }

    /// Removes one generation (a failed one), walking by descriptor.
    pub fn remove(&self, generation: &str) -> Result<()> {
        self.check_generation(generation)?;
        self.dir.remove_tree(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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

    #[test]
    fn refuses_planted_current_and_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let dest_path = tmp.path().join("tls");
        let outside = tmp.path().join("attacker");
        fs::create_dir(&outside).unwrap();
        let dest = Dest::open(&dest_path).unwrap();
        let a = dest
            .write_generation("aa", &[file("k", "one", 0o600)], None)
            .unwrap();
        drop(dest);
        let cur = dest_path.join(CURRENT);
        for target in [
            outside.to_str().unwrap().to_owned(),
            "../attacker".to_owned(),
            format!("{a}/k"),
            "gen-missing".to_owned(),
        ] {
            let _ = fs::remove_file(&cur);
            std::os::unix::fs::symlink(&target, &cur).unwrap();
            let dest = Dest::open(&dest_path).unwrap();
            let err = dest.current().unwrap_err();
            assert!(
                format!("{err:#}").contains("refusing")
                    || format!("{err:#}").contains("does not exist"),
                "{target}: {err:#}"
            );
        }
        fs::remove_file(&cur).unwrap();
        // A gen-* symlink makes DEST unusable until removed.
        std::os::unix::fs::symlink(&outside, dest_path.join("gen-evil")).unwrap();
        let err = Dest::open(&dest_path).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        fs::remove_file(dest_path.join("gen-evil")).unwrap();
        // A symlinked lock is refused.
        fs::remove_file(dest_path.join(LOCK_FILE)).unwrap();
        std::os::unix::fs::symlink(outside.join("lock"), dest_path.join(LOCK_FILE)).unwrap();
        let err = Dest::open(&dest_path).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        assert!(!outside.join("lock").exists());
        // DEST itself as a symlink is refused.
        std::os::unix::fs::symlink(&outside, tmp.path().join("link")).unwrap();
        assert!(Dest::open(&tmp.path().join("link")).is_err());
    }
}
