//! ca-server: a certificate authority that signs automatically against
//! one-time pre-shared keys.
//!
//! Crate map: [`ca`] holds the CA material and builds certificates; [`crl`]
//! signs, publishes and caches the revocation lists; [`store`] is the database; [`authority`] is the issuance flow
//! and [`renewal`] the same for a host renewing with its certificate;
//! [`revocation`] is the admin's `revoke`; [`http`], [`server`] and
//! [`client_verifier`] are the HTTPS edge; [`edge`] holds the plain-HTTP
//! listener (CRLs, CA certificates, OCSP) and ACME's protocol handling,
//! [`issue`] ACME's flows; [`pki`] holds the OCSP responder and the PSK
//! seal; [`cli`] and [`serve`] are the binary.
#![deny(unsafe_code)]

pub mod admin;
pub mod authority;
pub mod ca;
pub mod cli;
pub mod client_verifier;
pub mod clock;
pub mod config;
pub mod crl;
pub mod diskguard;
pub mod doctor;
pub mod edge;
pub mod hardening;
pub mod http;
pub mod issue;
pub mod metrics;
pub mod pki;
pub mod proxy_protocol;
pub mod rejection_log;
pub mod renewal;
pub mod revocation;
pub mod rotate;
pub mod serve;
pub mod server;
pub mod store;
#[cfg(test)]
mod testing;
pub mod throttle;
