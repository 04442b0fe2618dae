//! Files inside a directory reached through one opened descriptor.
//!
//! Every operation is relative to that descriptor (the openat family), never
//! follows a symlink in the entry it touches, and sets mode and owner on the
//! file's own descriptor before the file is renamed into place. So whoever
//! can rename entries of the directory (a service account owning it) cannot
//! turn a root-run write, chmod or chown onto a file elsewhere: after the
//! directory is opened, nothing depends on a path again.

use anyhow::{Context, Result, anyhow, bail};
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// How deep [`DirFd::remove_tree`] descends; the installer's own trees are
/// one level deep, anything deeper was not made by it.
const MAX_DEPTH: usize = 4;

/// Owner, permission bits and type of a file, from `fstat`/`fstatat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (`& 0o7777`).
    pub mode: u32,
    pub kind: FileType,
}

impl Meta {
    fn from_stat(st: &rustix::fs::Stat) -> Meta {
        Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            kind: FileType::from_raw_mode(st.st_mode),
        }
    }
}

/// An opened directory; `path` is only used in messages.
#[derive(Debug)]
pub struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for DirFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuses names that are not one plain entry of a directory.
fn entry_name(name: &str) -> Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("{name:?} is not a plain file name");
    }
    Ok(name)
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Explains an open that O_NOFOLLOW/O_DIRECTORY refused.
fn open_error(e: Errno, what: &Path, want: &str) -> anyhow::Error {
    match e {
        Errno::LOOP => anyhow!(
            "{} is a symlink; refusing to follow it (the installer only uses entries it created)",
            what.display()
        ),
        Errno::NOTDIR if want == "directory" => {
            anyhow!("{} is not a directory; refusing it", what.display())
        }
        e => anyhow!(std::io::Error::from(e)).context(format!("opening {}", what.display())),
    }
}

fn random_suffix() -> Result<String> {
    let mut nonce = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| anyhow!("CSPRNG failure"))?;
    Ok(hex::encode(nonce))
}

impl DirFd {
    /// Opens `path` as a directory. Its last component must not be a
    /// symlink; earlier components are resolved once, here.
    pub fn open_nofollow(path: &Path) -> Result<DirFd> {
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty())
            .map_err(|e| open_error(e, path, "directory"))?;
        Ok(DirFd {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Opens `path` as a directory, following symlinks (for directories an
    /// operator names, e.g. a data directory that is itself a link).
    pub fn open_follow(path: &Path) -> Result<DirFd> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| open_error(e, path, "directory"))?;
        Ok(DirFd {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path/name`, for messages.
    pub fn shown(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory's own owner and mode.
    pub fn meta(&self) -> Result<Meta> {
        let st = rustix::fs::fstat(&self.fd)
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("stat {}", self.path.display()))?;
        Ok(Meta::from_stat(&st))
    }

    /// The entry `name` itself (a symlink is reported as one), if it exists.
    pub fn entry(&self, name: &str) -> Result<Option<Meta>> {
        match rustix::fs::statat(&self.fd, entry_name(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Meta::from_stat(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(anyhow!(std::io::Error::from(e)))
                .with_context(|| format!("stat {}", self.shown(name).display())),
        }
    }

    /// Opens the subdirectory `name`, refusing a symlink.
    pub fn open_dir(&self, name: &str) -> Result<DirFd> {
        let fd = rustix::fs::openat(&self.fd, entry_name(name)?, dir_flags(), Mode::empty())
            .map_err(|e| open_error(e, &self.shown(name), "directory"))?;
        Ok(DirFd {
            fd,
            path: self.shown(name),
        })
    }

    /// Creates the subdirectory `name` (it must not exist).
    pub fn mkdir(&self, name: &str, mode: u32) -> Result<()> {
        rustix::fs::mkdirat(&self.fd, entry_name(name)?, Mode::from_raw_mode(mode))
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("creating {}", self.shown(name).display()))
    }

    /// Sets the directory's own owner and mode on its descriptor.
    pub fn set_owner_mode(&self, owner: Option<(u32, u32)>, mode: u32) -> Result<()> {
        set_owner_mode(&self.fd, owner, mode).with_context(|| self.path.display().to_string())
    }

    /// Reads the regular file `name` (never through a symlink, never
    /// blocking on a FIFO), at most `limit` bytes; wiped when dropped.
    pub fn read_file(&self, name: &str, limit: u64) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.read_file_meta(name, limit)?.0)
    }

    /// [`DirFd::read_file`] with the owner and mode of the file read.
    pub fn read_file_meta(&self, name: &str, limit: u64) -> Result<(Zeroizing<Vec<u8>>, Meta)> {
        let shown = self.shown(name);
        let fd = rustix::fs::openat(
            &self.fd,
            entry_name(name)?,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => anyhow!(std::io::Error::from(e)),
            e => open_error(e, &shown, "file"),
        })
        .with_context(|| format!("reading {}", shown.display()))?;
        let meta =
            Meta::from_stat(&rustix::fs::fstat(&fd).map_err(|e| anyhow!(std::io::Error::from(e)))?);
        if meta.kind != FileType::RegularFile {
            bail!("{} is not a regular file; refusing it", shown.display());
        }
        let mut buf = Zeroizing::new(Vec::new());
        File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {}", shown.display()))?;
        if buf.len() as u64 > limit {
            bail!("{} is larger than {limit} bytes", shown.display());
        }
        Ok((buf, meta))
    }

    /// Writes `name` atomically: a new file under a temporary name created
    /// with O_EXCL|O_NOFOLLOW and `mode`, owner and mode set on its
    /// descriptor, written, fsynced, then renamed over `name` within this
    /// directory. The directory itself is not fsynced (see [`DirFd::sync`]).
    pub fn write_file(
        &self,
        name: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<(u32, u32)>,
    ) -> Result<()> {
        let name = entry_name(name)?;
        let tmp = format!(".{name}.tmp-{}", random_suffix()?);
        let shown = self.shown(&tmp);
        let result = (|| -> Result<()> {
            let fd = rustix::fs::openat(
                &self.fd,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(mode),
            )
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("creating {}", shown.display()))?;
            // The umask may have removed bits we asked for (never added any):
            // set exactly, on the descriptor, before the name goes live.
            set_owner_mode(&fd, owner, mode).with_context(|| shown.display().to_string())?;
            let mut f = File::from(fd);
            f.write_all(contents)
                .with_context(|| format!("writing {}", shown.display()))?;
            f.sync_all()
                .with_context(|| format!("syncing {}", shown.display()))?;
            self.rename(&tmp, name)
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        }
        result
    }

    /// Renames `from` to `to`, both in this directory.
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        rustix::fs::renameat(&self.fd, entry_name(from)?, &self.fd, entry_name(to)?)
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| {
                format!(
                    "renaming {} to {}",
                    self.shown(from).display(),
                    self.shown(to).display()
                )
            })
    }

    /// Creates the symlink `name` -> `target`.
    pub fn symlink(&self, target: &str, name: &str) -> Result<()> {
        rustix::fs::symlinkat(target, &self.fd, entry_name(name)?)
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("creating {}", self.shown(name).display()))
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: &str) -> Result<String> {
        let target = rustix::fs::readlinkat(&self.fd, entry_name(name)?, Vec::new())
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("reading {}", self.shown(name).display()))?;
        Ok(target.to_string_lossy().into_owned())
    }

    /// Removes the non-directory entry `name` (a symlink itself, never its target).
    pub fn unlink(&self, name: &str) -> Result<()> {
        rustix::fs::unlinkat(&self.fd, entry_name(name)?, AtFlags::empty())
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("removing {}", self.shown(name).display()))
    }

    /// Removes the directory `name` and everything in it, walking by
    /// descriptor: symlinks inside are removed, never followed, and nothing
    /// outside this directory is touched.
    pub fn remove_tree(&self, name: &str) -> Result<()> {
        self.remove_tree_at(name, 0)
    }

    fn remove_tree_at(&self, name: &str, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            bail!(
                "{} is nested deeper than the installer writes; refusing to remove it",
                self.shown(name).display()
            );
        }
        let sub = self.open_dir(name)?;
        for entry in sub.names()? {
            match sub.entry(&entry)? {
                Some(m) if m.kind == FileType::Directory => {
                    sub.remove_tree_at(&entry, depth + 1)?
                }
                Some(_) => sub.unlink(&entry)?,
                None => {}
            }
        }
        rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR)
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("removing {}", self.shown(name).display()))
    }

    /// Names of the entries (without `.` and `..`).
    pub fn names(&self) -> Result<Vec<String>> {
        let mut dir = rustix::fs::Dir::read_from(&self.fd)
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("listing {}", self.path.display()))?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry
                .map_err(|e| anyhow!(std::io::Error::from(e)))
                .with_context(|| format!("listing {}", self.path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// fsyncs the directory so that renames in it survive a crash.
    pub fn sync(&self) -> Result<()> {
        rustix::fs::fsync(&self.fd)
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("syncing directory {}", self.path.display()))
    }

    /// Opens (creating it 0600 if missing) the lock file `name` without
    /// following a symlink, and takes an exclusive lock for the life of the
    /// returned file. Only a regular file is accepted; it is never written.
    pub fn lock(&self, name: &str) -> Result<File> {
        let shown = self.shown(name);
        let fd = rustix::fs::openat(
            &self.fd,
            entry_name(name)?,
            OFlags::RDONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            Errno::LOOP => anyhow!(
                "the lock file {} is a symlink; refusing to follow it (remove it: the installer creates its own)",
                shown.display()
            ),
            e => anyhow!(std::io::Error::from(e))
                .context(format!("opening the lock {}", shown.display())),
        })?;
        let meta =
            Meta::from_stat(&rustix::fs::fstat(&fd).map_err(|e| anyhow!(std::io::Error::from(e)))?);
        if meta.kind != FileType::RegularFile {
            bail!(
                "the lock file {} is not a regular file; refusing it",
                shown.display()
            );
        }
        rustix::fs::flock(&fd, FlockOperation::LockExclusive)
            .map_err(|e| anyhow!(std::io::Error::from(e)))
            .with_context(|| format!("locking {}", self.path.display()))?;
        Ok(File::from(fd))
    }
}

fn set_owner_mode(fd: impl AsFd, owner: Option<(u32, u32)>, mode: u32) -> Result<()> {
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| anyhow!(std::io::Error::from(e)))
        .with_context(|| format!("chown {uid}:{gid}"))?;
    }
    // After fchown, which may clear set-id bits.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
        .map_err(|e| anyhow!(std::io::Error::from(e)))
        .with_context(|| format!("chmod {mode:o}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn writes_reads_and_refuses_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("victim");
        std::fs::write(&outside, "victim").unwrap();
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        let d = DirFd::open_nofollow(&tmp.path().join("d")).unwrap();
        d.write_file("a", b"one", 0o600, None).unwrap();
        assert_eq!(&d.read_file("a", 10).unwrap()[..], b"one");
        let m = std::fs::metadata(tmp.path().join("d/a")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        // A symlink is refused for reading and locking, and replaced (not
        // followed) by a write.
        std::os::unix::fs::symlink(&outside, tmp.path().join("d/link")).unwrap();
        let err = d.read_file("link", 100).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        let err = d.lock("link").unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        d.write_file("link", b"new", 0o644, None).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "victim");
        assert!(
            !std::fs::symlink_metadata(tmp.path().join("d/link"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // A directory symlink is refused as DEST and as a subdirectory.
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("d/up")).unwrap();
        assert!(d.open_dir("up").is_err());
        assert!(DirFd::open_nofollow(&tmp.path().join("d/up")).is_err());
        // remove_tree removes links, not their targets.
        d.mkdir("t", 0o755).unwrap();
        let t = d.open_dir("t").unwrap();
        t.symlink(outside.to_str().unwrap(), "l").unwrap();
        t.symlink(tmp.path().to_str().unwrap(), "dl").unwrap();
        d.remove_tree("t").unwrap();
        assert!(d.entry("t").unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "victim");
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            std::fs::metadata(tmp.path()).unwrap().uid()
        );
        assert!(d.read_file("../victim", 100).is_err());
    }
}
