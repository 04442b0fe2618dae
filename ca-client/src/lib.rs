//! Host side of the CA: key generation, the PSK bootstrap with a pinned root,
//! renewal over mTLS, CRL refresh, OCSP (the DER the server shares, and
//! fetching a staple for HAProxy), an HTTPS client, the service installers
//! (nginx, PostgreSQL, HAProxy), and the file utilities the server shares.
#![deny(unsafe_code)]

// Moved to `proto` (shared with the server); re-exported so the paths stay.
pub use proto::{bundle, clidocs, dirfd, fsutil, https, keys, ocsp, timefmt, trust};

pub mod bootstrap;
pub mod crl;
pub mod failure;
pub mod install;
pub mod renew;
pub mod stapling;
