//! ca-server: a certificate authority that signs automatically against
//! one-time pre-shared keys.
//!
//! Crate map, top layer first (each uses only those below it; ARCHITECTURE.md
//! "Layers", checked by `scripts/check-layers.sh`):
//! - [`cli`]: the binary's verbs, flags and exit codes; [`config`] applies
//!   the configuration file and `CA_*` to the clap definition; [`serve`]
//!   assembles the running server.
//! - [`edge`]: the HTTPS listener ([`edge::server`]), PROXY protocol, the
//!   client-certificate verifier, process hardening, the HTTP routes
//!   ([`edge::http`], with the one error-to-status map), the plain-HTTP
//!   listener and ACME's protocol handling.
//! - [`issue`]: the issuance flows ([`issue::sign`] for a PSK,
//!   [`issue::renew`] for a client certificate, [`issue::acme`]) and the
//!   refusal machinery ([`issue::refusal`], [`issue::throttle`],
//!   [`issue::rejection_log`]);
//!   [`admin`]: the operations behind the admin verbs and the admin API
//!   (with `doctor`, `rotate`, `revocation`, `audit`: the audit chain's
//!   `verify` and `checkpoint`).
//! - [`pki`]: CA material and the signer ([`pki::ca`]), the CA key from a
//!   file or a PKCS#11 token ([`pki::key`], [`pki::pkcs11`]), CRLs
//!   ([`pki::crl`]), the OCSP responder, the PSK seal and the audit key;
//!   [`store`]: the database (with the audit hash chain and its export);
//!   [`metrics`]: the `/metrics` registry; [`clock`]: time as the flows see
//!   it; [`diskguard`]: free space under the SQLite store.
#![deny(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod diskguard;
pub mod edge;
pub mod issue;
pub mod metrics;
pub mod pki;
pub mod serve;
pub mod store;
#[cfg(test)]
mod testing;
