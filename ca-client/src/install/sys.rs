//! The few operating-system calls the installers need that std does not
//! offer: looking up users and groups (through NSS, so LDAP/sssd accounts
//! work too), and checking or signalling a service's process. A pid read
//! from a file the service's account can write is signalled only through a
//! pidfd, after checking who runs it and which binary it is.
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

/// A pid read from a pid file, with the file's owner (the only account
/// that could have written it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPid {
    pub pid: i32,
    /// The user the process must run as.
    pub uid: u32,
    /// The pid file, for messages.
    pub source: std::path::PathBuf,
}

/// A process checked to be the service's: signals go through its pidfd, so
/// a pid reused after the check is never signalled.
#[derive(Debug)]
pub struct Verified {
    pidfd: std::os::fd::OwnedFd,
    pid: i32,
}

/// Real and effective uid of `pid`, from `/proc/PID/status`.
fn proc_uids(pid: i32) -> Result<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .with_context(|| format!("no Uid line in /proc/{pid}/status"))?;
    let mut ids = line.split_whitespace().map(str::parse::<u32>);
    match (ids.next(), ids.next()) {
        (Some(Ok(real)), Some(Ok(effective))) => Ok((real, effective)),
        _ => bail!("unreadable Uid line in /proc/{pid}/status"),
    }
}

/// Opens a pidfd for `running` and checks that the process runs as
/// `running.uid` (real and effective) and that its executable passes
/// `exe_ok`; the error says which check failed.
pub fn verify_process(
    running: &RunningPid,
    service: &str,
    exe_ok: &dyn Fn(&std::path::Path) -> bool,
) -> Result<Verified> {
    let RunningPid { pid, uid, source } = running;
    let why = |reason: String| {
        anyhow::anyhow!(
            "refusing to signal pid {pid} read from {}: {reason}",
            source.display()
        )
    };
    let raw = rustix::process::Pid::from_raw(*pid)
        .filter(|_| *pid > 1)
        .ok_or_else(|| why("not a process id".into()))?;
    // The pidfd first: if the process exits and the pid is reused while we
    // look at /proc, the signal goes nowhere instead of to the newcomer.
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
        .map_err(|e| why(format!("it is not running ({e})")))?;
    let (real, effective) = proc_uids(*pid).map_err(|e| why(format!("{e:#}")))?;
    if real != *uid || effective != *uid {
        return Err(why(format!(
            "the process runs as uid {real} (effective {effective}), not as uid {uid}, the owner of the pid file; it is not {service}"
        )));
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| why(format!("cannot read its executable ({e})")))?;
    // A binary replaced by a package upgrade shows as "PATH (deleted)".
    let shown = exe.to_string_lossy();
    let exe_path = std::path::Path::new(shown.strip_suffix(" (deleted)").unwrap_or(&shown));
    if !exe_ok(exe_path) {
        return Err(why(format!(
            "the process runs {}, which is not the {service} binary",
            exe.display()
        )));
    }
    Ok(Verified { pidfd, pid: *pid })
}

impl Verified {
    /// Sends `signal` to the verified process (and only to it).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let sig = match signal {
            libc::SIGHUP => rustix::process::Signal::HUP,
            libc::SIGUSR2 => rustix::process::Signal::USR2,
            libc::SIGTERM => rustix::process::Signal::TERM,
            n => bail!("unsupported signal {n}"),
        };
        rustix::process::pidfd_send_signal(&self.pidfd, sig)
            .map_err(std::io::Error::from)
            .with_context(|| format!("sending {} to pid {}", signal_name(signal), self.pid))
    }
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

    #[test]
    fn signals_only_a_process_of_the_right_user_and_binary() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let me = effective_uid();
        let pid = child.id() as i32;
        let running = |uid| RunningPid {
            pid,
            uid,
            source: "/run/test.pid".into(),
        };
        let is = |name: &'static str| move |exe: &std::path::Path| exe.ends_with(name);
        let err = verify_process(&running(me + 1), "sleep", &is("sleep")).unwrap_err();
        assert!(
            format!("{err:#}").contains(&format!("not as uid {}", me + 1)),
            "{err:#}"
        );
        let err = verify_process(&running(me), "nginx", &is("nginx")).unwrap_err();
        assert!(
            format!("{err:#}").contains("which is not the nginx binary"),
            "{err:#}"
        );
        let target = verify_process(&running(me), "sleep", &is("sleep")).unwrap();
        target.signal(libc::SIGTERM).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        let err = verify_process(&running(me), "sleep", &is("sleep")).unwrap_err();
        assert!(format!("{err:#}").contains("not running"), "{err:#}");
    }
}
