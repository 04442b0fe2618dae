//! The few operating-system calls the installers need that std does not
//! offer: looking up users and groups (through NSS, so LDAP/sssd accounts
//! work too), and checking or signalling a service's process.
#![allow(unsafe_code)] // libc calls with buffers we own; each call is commented

use anyhow::{Context, Result, bail};
use std::ffi::CString;

/// An owner for installed files, resolved to numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// Parses `USER[:GROUP]` (names or numeric ids). Without a group, the
    /// user's primary group.
    pub fn parse(spec: &str) -> Result<Owner> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        if user.is_empty() || group.is_some_and(str::is_empty) {
            bail!("--owner {spec:?}: expected USER or USER:GROUP");
        }
        let (uid, primary_gid) = lookup_user(user)?;
        let gid = match group {
            Some(g) => lookup_group(g)?,
            None => primary_gid,
        };
        Ok(Owner { uid, gid })
    }
}

/// uid and primary gid of `user` (a name, or a number).
fn lookup_user(user: &str) -> Result<(u32, u32)> {
    let name = CString::new(user).context("user name contains NUL")?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer refers to memory we own for the whole call; the
    // buffer length is passed; getpwnam_r writes only within them.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
    if let Ok(uid) = user.parse::<u32>() {
        // A numeric owner without a passwd entry: its group defaults to the same number.
        return Ok((uid, uid));
    }
    bail!("no such user {user:?}")
}

/// gid of `group` (a name, or a number).
fn lookup_group(group: &str) -> Result<u32> {
    let name = CString::new(group).context("group name contains NUL")?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: all-zero is a valid `group`.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in lookup_user.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok(grp.gr_gid);
    }
    group
        .parse::<u32>()
        .map_err(|_| anyhow::anyhow!("no such group {group:?}"))
}

/// `true` if a process with this pid exists (it may belong to another user).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: i32, signal: i32) -> Result<()> {
    if pid <= 0 {
        bail!("refusing to signal pid {pid}");
    }
    // SAFETY: plain syscall with integer arguments; pid > 0 so never a group.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("sending {} to pid {pid}", signal_name(signal)));
    }
    Ok(())
}

/// A signal's conventional name, for messages.
pub fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGUSR2 => "SIGUSR2".into(),
        libc::SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// The uid this process runs as.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_and_numeric_owners() {
        assert_eq!(Owner::parse("root").unwrap(), Owner { uid: 0, gid: 0 });
        assert_eq!(Owner::parse("0:0").unwrap(), Owner { uid: 0, gid: 0 });
        assert_eq!(
            Owner::parse("4242:4243").unwrap(),
            Owner {
                uid: 4242,
                gid: 4243
            }
        );
        assert!(Owner::parse("no-such-user-here").is_err());
        assert!(Owner::parse("root:").is_err());
        assert!(Owner::parse(":root").is_err());
    }

    #[test]
    fn sees_its_own_process() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(0));
        assert!(!process_alive(-1));
    }
}
