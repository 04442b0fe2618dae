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
