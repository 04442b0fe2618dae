//! The pre-shared key: a zeroizing secret type, its SHA-256 at rest, the
//! constant-time comparison and the `pp_preshared_key` extension encoding.
//!
//! The PSK travels in the CSR as the X.509 extension `pp_preshared_key`
//! (OID 1.3.6.1.4.1.34380.1.1.4) whose value is a DER UTF8String, inside the
//! PKCS#9 extensionRequest attribute: what Puppet agents and
//! `openssl req -addext "1.3.6.1.4.1.34380.1.1.4=ASN1:UTF8String:..."` send.

use base64::Engine as _;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// OID arcs of `pp_preshared_key`.
pub const PSK_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 34380, 1, 1, 4];
/// Dotted form of [`PSK_OID`].
pub const PSK_OID_STR: &str = "1.3.6.1.4.1.34380.1.1.4";
/// Longest PSK accepted anywhere, in bytes; bounds hashing work and storage.
pub const MAX_PSK_LEN: usize = 512;
/// Minimum strength of a PSK supplied by a spawner.
pub const MIN_PSK_BITS: usize = 128;
/// Minimum of [`structural_bits`] for a supplied PSK: three quarters of
/// [`MIN_PSK_BITS`], so that a random 128-bit secret (`openssl rand -hex 16`,
/// which has a short run now and then) always passes while repeats and runs
/// do not.
pub const MIN_STRUCTURAL_BITS: usize = MIN_PSK_BITS * 3 / 4;

/// A PSK. The bytes are wiped on drop and never printed by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Psk(String);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// Why a string cannot be a PSK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PskFormatError {
    #[error("PSK is empty")]
    Empty,
    #[error("PSK is longer than {MAX_PSK_LEN} bytes")]
    TooLong,
    #[error("PSK may only hold printable ASCII characters")]
    NotPrintable,
    #[error("PSK must be hex or base64/base64url text")]
    Alphabet,
    #[error("PSK carries {0} bits; at least {MIN_PSK_BITS} are required")]
    TooWeak(usize),
    /// Long enough, but built from repeats or runs (`aaaa…`, `0123…`,
    /// `deadbeefdeadbeef…`): the estimate counts what a guesser must guess.
    #[error(
        "PSK is low in entropy (repeated or sequential characters: about {0} bits by its structure, \
         at least {MIN_STRUCTURAL_BITS} required); use random bytes, e.g. `openssl rand -hex 32`"
    )]
    LowEntropy(usize),
}

impl Psk {
    /// Wraps a presented PSK (from a CSR or a file). Only the shape is checked:
    /// printable ASCII, bounded length. Strength is checked where a spawner
    /// *chooses* a PSK ([`Psk::new_supplied`]).
    pub fn new(value: String) -> Result<Psk, PskFormatError> {
        let value = Zeroizing::new(value);
        if value.is_empty() {
            return Err(PskFormatError::Empty);
        }
        if value.len() > MAX_PSK_LEN {
            return Err(PskFormatError::TooLong);
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(PskFormatError::NotPrintable);
        }
        Ok(Psk(value.as_str().to_owned()))
    }

    /// Wraps a PSK that a spawner supplies (`--psk-stdin`): it must be hex or
    /// base64/base64url, carry at least [`MIN_PSK_BITS`] bits by its length,
    /// and at least [`MIN_STRUCTURAL_BITS`] once repeats and runs are
    /// discounted ([`structural_bits`]).
    pub fn new_supplied(value: String) -> Result<Psk, PskFormatError> {
        let psk = Psk::new(value)?;
        let per_char = bits_per_char(psk.expose()).ok_or(PskFormatError::Alphabet)?;
        let trimmed = psk.expose().trim_end_matches('=');
        let bits = trimmed.len() * per_char;
        if bits < MIN_PSK_BITS {
            return Err(PskFormatError::TooWeak(bits));
        }
        let structural = structural_bits(trimmed.as_bytes(), per_char);
        if structural < MIN_STRUCTURAL_BITS {
            return Err(PskFormatError::LowEntropy(structural));
        }
        Ok(psk)
    }

    /// Encodes 32 CSPRNG bytes as a PSK: base64url without padding, 43 chars.
    /// The caller reads the OS CSPRNG; this crate does no IO.
    pub fn from_random(bytes: &[u8; 32]) -> Psk {
        Psk(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The secret itself, for putting on the wire or in a file the host owns.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the PSK: the only form ever stored.
    pub fn hash(&self) -> PskHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        PskHash(out)
    }
}

/// Bits per character of a hex (4) or base64/base64url (6) string.
fn bits_per_char(s: &str) -> Option<usize> {
    let trimmed = s.trim_end_matches('=');
    if trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some(4)
    } else if trimmed
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/'))
    {
        Some(6)
    } else {
        None
    }
}

/// A guesser's view of a secret's strength: a string that repeats a shorter
/// period counts as that period alone, and inside it every character from the
/// third of a run (same character, or one up or down from the one before:
/// `aaaa`, `abcd`, `9876`) counts 1 bit instead of `per_char`. Random text
/// loses almost nothing; `aaaa…`, `0123…` and `deadbeefdeadbeef…` lose
/// nearly everything.
pub fn structural_bits(s: &[u8], per_char: usize) -> usize {
    let n = s.len();
    let period = (1..=n / 2)
        .find(|&p| (p..n).all(|i| s[i] == s[i - p]))
        .unwrap_or(n);
    let body = &s[..period];
    let step_is_predictable = |i: usize| (body[i] as i16 - body[i - 1] as i16).abs() <= 1;
    (0..body.len())
        .map(|i| {
            if i >= 2 && step_is_predictable(i) && step_is_predictable(i - 1) {
                1
            } else {
                per_char
            }
        })
        .sum()
}

/// SHA-256 of a PSK. Compared only in constant time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PskHash(pub [u8; 32]);

impl PskHash {
    /// Constant-time equality.
    pub fn ct_eq(&self, other: &PskHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// From stored bytes; `None` unless exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<PskHash> {
        Some(PskHash(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for PskHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash of a 256-bit secret is not secret, but there is no reason to print it.
        f.write_str("PskHash(..)")
    }
}

/// The DER value of the `pp_preshared_key` extension: a UTF8String.
pub fn encode_extension_value(psk: &Psk) -> Zeroizing<Vec<u8>> {
    let bytes = psk.expose().as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len() + 4));
    out.push(0x0c); // UTF8String
    let len = bytes.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len <= 0xff {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(bytes);
    out
}

/// Reads the value of a `pp_preshared_key` extension: exactly one DER
/// UTF8String, minimal length, nothing after it. `None` if it is anything else.
pub fn decode_extension_value(der: &[u8]) -> Option<Psk> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x0c {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = match first {
        n if n < 0x80 => (n as usize, rest),
        0x81 => {
            let (&n, body) = rest.split_first()?;
            if n < 0x80 {
                return None; // non-minimal
            }
            (n as usize, body)
        }
        0x82 => {
            if rest.len() < 2 || rest[0] == 0 {
                return None; // truncated or non-minimal
            }
            (((rest[0] as usize) << 8) | rest[1] as usize, &rest[2..])
        }
        _ => return None,
    };
    if body.len() != len {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    Psk::new(text.to_owned()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_round_trip_short_and_long() {
        for len in [1usize, 43, 127, 128, 255, 256, 512] {
            let psk = Psk::new("a".repeat(len)).unwrap();
            let der = encode_extension_value(&psk);
            assert_eq!(decode_extension_value(&der), Some(psk));
        }
    }

    #[test]
    fn extension_rejects_other_types_and_bad_lengths() {
        assert_eq!(decode_extension_value(b"\x04\x03abc"), None); // OCTET STRING
        assert_eq!(decode_extension_value(b"\x13\x03abc"), None); // PrintableString
        assert_eq!(decode_extension_value(b"\x0c\x04abc"), None); // truncated
        assert_eq!(decode_extension_value(b"\x0c\x02abc"), None); // trailing
        assert_eq!(decode_extension_value(b"\x0c\x81\x03abc"), None); // non-minimal
        assert_eq!(decode_extension_value(b"\x0c\x00"), None); // empty PSK
        assert_eq!(decode_extension_value(b""), None);
    }

    #[test]
    fn generated_psk_is_43_base64url_chars() {
        let psk = Psk::from_random(&[0xfb; 32]);
        assert_eq!(psk.expose().len(), 43);
        assert!(
            psk.expose()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(Psk::new_supplied(psk.expose().to_owned()).is_ok());
    }

    #[test]
    fn supplied_psk_needs_128_bits() {
        assert_eq!(
            Psk::new_supplied("deadbeef".into()),
            Err(PskFormatError::TooWeak(32))
        );
        // 32 hex chars = 128 bits (`openssl rand -hex 16`).
        assert!(Psk::new_supplied("3f9c1e07b2d84a6f5e0c9b1d7a2f4e83".into()).is_ok());
        assert_eq!(
            Psk::new_supplied("a".repeat(31)),
            Err(PskFormatError::TooWeak(124))
        );
        // 22 base64 chars = 132 bits.
        assert!(Psk::new_supplied("Zq3xT9_kLw2Vb7-NcR4mHy".into()).is_ok());
        assert_eq!(
            Psk::new_supplied("correct horse battery staple!!".into()),
            Err(PskFormatError::NotPrintable)
        );
        assert_eq!(
            Psk::new_supplied("correct.horse.battery.staple".into()),
            Err(PskFormatError::Alphabet)
        );
    }

    #[test]
    fn supplied_psk_must_not_be_repeats_or_runs() {
        for weak in [
            "a".repeat(32),                            // one repeated character
            "g".repeat(22),                            // the same in base64
            "deadbeef".repeat(4),                      // a repeated word
            "0123456789abcdef0123456789abcdef".into(), // a run, twice
            "ab".repeat(40),                           // two characters alternating
            "abcdefghijklmnopqrstuvwxyz".into(),       // the alphabet
        ] {
            assert!(
                matches!(
                    Psk::new_supplied(weak.clone()),
                    Err(PskFormatError::LowEntropy(_))
                ),
                "{weak} was accepted"
            );
        }
        // The test suite's fixture PSK has runs but enough besides them.
        assert!(Psk::new_supplied("fixture-psk-0123456789abcdefghijklmnop".into()).is_ok());
        let err = Psk::new_supplied("a".repeat(64)).unwrap_err().to_string();
        assert!(err.contains("low in entropy"), "{err}");
    }

    #[test]
    fn random_secrets_keep_their_structural_bits() {
        // Random hex of the minimum length passes whatever short runs it has:
        // 1,000 secrets from a fixed-seed generator (no IO in this crate).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..1000 {
            let s: String = (0..32)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from_digit((x % 16) as u32, 16).unwrap()
                })
                .collect();
            assert!(Psk::new_supplied(s.clone()).is_ok(), "{s}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let psk = Psk::new("s3cr3t-value-xyz".into()).unwrap();
        assert!(!format!("{psk:?}").contains("s3cr3t"));
    }

    #[test]
    fn hash_compare_is_exact() {
        let a = Psk::new("abc".into()).unwrap().hash();
        let b = Psk::new("abd".into()).unwrap().hash();
        assert!(a.ct_eq(&a));
        assert!(!a.ct_eq(&b));
    }
}
