//! Issuance flows beyond `/v1/sign` and `/v1/renew`: [`acme`] (accounts
//! bound to a PSK, orders, finalize, revocation).

pub mod acme;
pub mod rejection_log;
pub mod renew;
pub mod sign;
pub mod throttle;
