//! Replay-Nonces without a store write per answer: a nonce is
//! `time || random || HMAC(key, time || random)`, base64url, with the key
//! derived from the PSK seal key that every replica shares; it is good for
//! [`NONCE_LIFETIME`] seconds, and using it records it in the store
//! (`acme_nonces`, until it would have expired anyway), so it works once,
//! on whichever replica. Only a request with a valid signature and a
//! genuine, fresh nonce writes a row.

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::sync::OnceLock;

/// How long a Replay-Nonce stays good.
pub const NONCE_LIFETIME: i64 = 3600;
const TAG_LEN: usize = 32;
const BODY_LEN: usize = 8 + 8;

static KEY: OnceLock<Option<hmac::Key>> = OnceLock::new();

/// The nonce key: derived from the installed PSK seal key (`None` before
/// `serve` installed one).
fn key() -> Option<&'static hmac::Key> {
    KEY.get_or_init(|| {
        crate::pki::psk_seal::installed()
            .map(|k| hmac::Key::new(hmac::HMAC_SHA256, &k.derive(b"acme nonce key")[..]))
    })
    .as_ref()
}

fn b64(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

/// A new nonce issued at `now`; `None` without a key or on a CSPRNG failure.
pub fn issue(now: i64) -> Option<String> {
    let key = key()?;
    let mut body = [0u8; BODY_LEN];
    body[..8].copy_from_slice(&now.to_be_bytes());
    SystemRandom::new().fill(&mut body[8..]).ok()?;
    let tag = hmac::sign(key, &body);
    let mut out = body.to_vec();
    out.extend_from_slice(tag.as_ref());
    Some(b64(&out))
}

/// When a genuine nonce, issued within the lifetime before `now`, stops
/// being good; `None` for anything else (forged, malformed, stale).
pub fn check(nonce: &str, now: i64) -> Option<i64> {
    let key = key()?;
    if nonce.len() > 64 {
        // 48 bytes in base64url; anything longer is not ours.
        return None;
    }
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, nonce).ok()?;
    if raw.len() != BODY_LEN + TAG_LEN {
        return None;
    }
    let (body, tag) = raw.split_at(BODY_LEN);
    hmac::verify(key, body, tag).ok()?;
    let issued = i64::from_be_bytes(body[..8].try_into().ok()?);
    let expires = issued.checked_add(NONCE_LIFETIME)?;
    // A little tolerance for a replica whose clock is ahead of this one's.
    (issued <= now + 60 && now < expires).then_some(expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_within_its_lifetime_and_cannot_be_forged() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::pki::psk_seal::load_or_create(dir.path()).unwrap();
        let _ = KEY.set(Some(hmac::Key::new(
            hmac::HMAC_SHA256,
            &key.derive(b"acme nonce key")[..],
        )));
        let now = 1_800_000_000;
        let n = issue(now).unwrap();
        assert_eq!(check(&n, now + 10), Some(now + NONCE_LIFETIME));
        assert_eq!(check(&n, now + NONCE_LIFETIME), None, "stale");
        assert_eq!(check(&n, now - 120), None, "from the future");
        let mut raw =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &n).unwrap();
        raw[0] ^= 1; // another time, same tag
        assert_eq!(check(&b64(&raw), now), None);
        assert_eq!(check("bm90LWEtbm9uY2U", now), None);
    }
}
