//! Everything that speaks bytes to the network: the HTTPS listener
//! ([`server`]: rustls + hyper, limits, graceful shutdown) with the PROXY
//! protocol ([`proxy_protocol`]) and the client-certificate check
//! ([`client_verifier`]), process hardening ([`hardening`]), the HTTP routes
//! ([`http`], whose `error.rs` is the one error-to-status map), the
//! plain-HTTP listener ([`plain_http`]: CRLs, CA certificates, OCSP) and
//! [`acme`] (RFC 8555 for stock ACME clients, on the HTTPS listener).

pub mod acme;
pub mod client_verifier;
pub mod hardening;
pub mod http;
pub mod plain_http;
pub mod proxy_protocol;
pub mod server;
