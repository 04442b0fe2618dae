//! Listeners and protocol edges beyond the HTTPS JSON API: the plain-HTTP
//! listener ([`plain_http`]: CRLs, CA certificates, OCSP) and [`acme`]
//! (RFC 8555 for stock ACME clients, on the HTTPS listener). The HTTPS
//! listener itself (`server`, `http`) moves here later.

pub mod acme;
pub mod client_verifier;
pub mod hardening;
pub mod http;
pub mod plain_http;
pub mod proxy_protocol;
pub mod server;
