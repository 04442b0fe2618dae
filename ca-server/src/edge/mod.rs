//! Listeners and their routes. So far the plain-HTTP listener
//! ([`plain_http`]); the HTTPS one (`server`, `http`) moves here later.

pub mod plain_http;
