//! Free-space check for the filesystem under the SQLite store: a nearly full
//! disk is refused (503) before anything is signed, and `/healthz` reports it,
//! instead of finding out half-way through a commit.
#![allow(unsafe_code)] // one statvfs call on a NUL-terminated path

use crate::store::StoreError;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Space kept free under the store: enough for many issuances' WAL frames.
pub const MIN_FREE_BYTES: u64 = 4 * 1024 * 1024;

/// Watches the filesystem holding `dir`.
#[derive(Debug, Clone)]
pub struct DiskGuard {
    dir: PathBuf,
    min_free: u64,
}

impl DiskGuard {
    pub fn new(dir: &Path, min_free: u64) -> DiskGuard {
        DiskGuard {
            dir: dir.to_path_buf(),
            min_free,
        }
    }

    /// `Err(NoSpace)` when fewer than `min_free` bytes are available to us.
    /// A failing `statvfs` is not treated as full: the store will tell.
    pub fn check(&self) -> Result<(), StoreError> {
        match available_bytes(&self.dir) {
            Some(free) if free < self.min_free => Err(StoreError::NoSpace(format!(
                "{} bytes free under {} (at least {} needed)",
                free,
                self.dir.display(),
                self.min_free
            ))),
            _ => Ok(()),
        }
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> Option<u64> {
    let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_space_and_refuses_below_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(dir.path()).is_some_and(|b| b > 0));
        assert!(DiskGuard::new(dir.path(), 0).check().is_ok());
        assert!(matches!(
            DiskGuard::new(dir.path(), u64::MAX).check(),
            Err(StoreError::NoSpace(_))
        ));
        assert!(available_bytes(Path::new("/nonexistent/dir")).is_none());
    }
}
