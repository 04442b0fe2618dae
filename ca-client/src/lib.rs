//! Host side of the CA: key generation, the PSK bootstrap with a pinned root,
//! an HTTPS client, the service installers (nginx, PostgreSQL, HAProxy), and
//! the file utilities the server shares.
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod clidocs;
pub mod fsutil;
pub mod https;
pub mod install;
pub mod keys;
pub mod trust;
