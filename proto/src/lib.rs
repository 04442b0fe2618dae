//! proto: what both binaries use, so that neither depends on the other.
//!
//! Crate map: [`bundle`] is the admin bundle's file format (the wire type
//! `ca-server bundle` writes and `ca-client` reads); [`clidocs`] renders
//! completions and man pages of both binaries; [`files`] names the files of a host's certificate directory;
//! [`certs`] moves certificates in and out of PEM text; [`trust`] pins a CA by
//! fingerprint and builds the ring-only rustls configurations; [`ocsp`] is the
//! OCSP DER codec (the server's responder and the client's stapling);
//! [`keys`] generates host keys and CSRs carrying the PSK; [`https`] is a
//! small hyper client; [`fsutil`] and [`dirfd`] are the atomic, private file
//! operations; [`timefmt`] formats and reads times.
#![deny(unsafe_code)]

pub mod bundle;
pub mod certs;
pub mod clidocs;
pub mod dirfd;
pub mod files;
pub mod fsutil;
pub mod https;
pub mod keys;
pub mod ocsp;

pub mod timefmt;
pub mod trust;
