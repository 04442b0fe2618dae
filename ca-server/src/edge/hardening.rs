//! Process hardening for the server: no core dumps (they would hold the
//! intermediate key and PSKs in flight) and no ptrace by same-uid processes.
#![allow(unsafe_code)] // two libc calls with constant arguments

/// Sets RLIMIT_CORE to 0 and marks the process non-dumpable.
pub fn disable_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    if rc != 0 {
        tracing::warn!("could not disable core dumps (setrlimit)");
    }
    // SAFETY: prctl with PR_SET_DUMPABLE takes plain integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!("could not mark the process non-dumpable (prctl)");
    }
}
