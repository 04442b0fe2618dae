//! Host side of the CA: key generation, the PSK bootstrap with a pinned root,
//! renewal over mTLS, CRL refresh, OCSP (the DER the server shares, and
//! fetching a staple for HAProxy), an HTTPS client, the service installers
//! (nginx, PostgreSQL, HAProxy), and the file utilities the server shares.
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod bundle;
pub mod clidocs;
pub mod crl;
pub mod dirfd;
pub mod failure;
pub mod fsutil;
pub mod https;
pub mod install;
pub mod keys;
pub mod ocsp;
pub mod renew;
pub mod stapling;
pub mod timefmt;
pub mod trust;
