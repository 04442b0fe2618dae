//! The issuance flows: [`sign`] (a CSR with a one-time PSK: parse,
//! authenticate, decide, sign, record), [`renew`] (a host renewing with its
//! certificate), [`acme`] (accounts bound to a PSK, orders, finalize,
//! revocation), and the refusal machinery every flow shares: [`refusal`]
//! (the one refusal path), [`throttle`] (refusals per client address) and
//! [`rejection_log`] (aggregated audit rows for refusals).

pub mod acme;
pub mod refusal;
pub mod rejection_log;
pub mod renew;
pub mod sign;
pub mod throttle;
