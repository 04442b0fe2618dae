//! The autosign decision as pure functions.
//!
//! Facts in, decision out: [`csr::parse`] turns untrusted bytes into verified
//! [`csr::Csr`] facts, [`decide`] weighs them against the spawner's
//! [`PskEntry`] at a time the caller passes in. Nothing here does IO, touches
//! a database, reads the clock or knows about HTTP; the server maps a
//! [`Rejection`] to a status code in one place.
//!
//! A renewal is decided the same way by [`decide_renewal`], with the old
//! certificate's names as the allowance and the server's renewal grace for
//! a certificate that already expired, and an ACME finalize by
//! [`decide_acme`] with the account's grant (the PSK it spent) and the order.
//!
//! The PSK extension's encoder lives here too ([`psk::encode_extension_value`]),
//! so the client builds exactly what the server reads.
#![forbid(unsafe_code)]

pub mod acme;
pub mod csr;
pub mod decision;
pub mod der;
pub mod error;
pub mod hostname;
pub mod psk;
pub mod renewal;
pub mod reserved;

pub use acme::{AcmeGrant, IdentifierRefusal, check_order, decide_acme};
pub use csr::{Csr, KeyKind, RequestedName, SignatureKind};
pub use decision::{
    AllowedName, Decision, IssuedUnderPsk, KeyFacts, Profile, PskEntry, check_certname, check_key,
    decide, decide_hashed,
};
pub use error::{Malformed, PskFailure, Rejection, RejectionClass, RenewalRefusal};
pub use hostname::HostnameError;
pub use psk::{Psk, PskHash};
pub use renewal::{RenewalGrant, Standing, decide_renewal};
pub use reserved::{ReservedName, ReservedNames};
