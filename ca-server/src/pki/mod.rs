//! The PKI mechanisms: CA material and the signer ([`ca`]), revocation lists
//! ([`crl`]), the audit key that signs the audit chain's checkpoints
//! ([`audit_key`]), the OCSP responder's wire format and signing ([`ocsp`])
//! and its per-serial response cache ([`responder`]); [`psk_seal`] keeps
//! PSKs sealed in the store so ACME can recompute an EAB HMAC key without
//! the store holding it. [`key`] is the CA signing key whether a file or in
//! a PKCS#11 token ([`pkcs11`]).

pub mod audit_key;
pub mod ca;
pub mod crl;
pub mod key;
pub mod ocsp;
pub mod pkcs11;
pub mod psk_seal;
pub mod responder;
