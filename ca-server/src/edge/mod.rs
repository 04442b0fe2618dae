//! Protocol edges on the HTTPS listener beyond the JSON API: [`acme`]
//! (RFC 8555 for stock ACME clients).

pub mod acme;
