//! CA secrets beyond the signing keys: [`psk_seal`] keeps PSKs sealed in the
//! store so ACME can recompute an EAB HMAC key without the store holding it.

pub mod psk_seal;
