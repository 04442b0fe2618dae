//! CA material beyond the intermediate itself: the OCSP responder's wire
//! format and signing ([`ocsp`]) and its per-serial response cache
//! ([`responder`]). The rest of the PKI (`ca`, `crl`) moves here later.

pub mod ocsp;
pub mod responder;
