//! Hostname rules: RFC 1123 labels, lowercase ASCII, no wildcard, at most 253
//! characters; IDNs only in A-label (`xn--`) form. Names are data: they are
//! never used as paths or shell words, and are escaped whenever printed.

use thiserror::Error;

/// Longest hostname accepted (RFC 1035 presentation form without the root dot).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Longest label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// The rule a hostname broke.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HostnameError {
    #[error("empty name")]
    Empty,
    #[error("longer than {MAX_HOSTNAME_LEN} characters")]
    TooLong,
    #[error("wildcards are not allowed")]
    Wildcard,
    #[error("uppercase letters are not allowed; use lowercase")]
    Uppercase,
    #[error("trailing dot is not allowed")]
    TrailingDot,
    #[error("empty label")]
    EmptyLabel,
    #[error("label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    #[error("a label may not start or end with '-'")]
    Hyphen,
    #[error("only ASCII letters, digits, '-' and '.' are allowed (IDNs in xn-- form)")]
    InvalidCharacter,
    #[error("the last label may not be all digits (IP addresses are not hostnames)")]
    NumericTopLabel,
}

/// Checks a hostname against the rules above.
pub fn validate(name: &str) -> Result<(), HostnameError> {
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(HostnameError::TooLong);
    }
    if name.contains('*') {
        return Err(HostnameError::Wildcard);
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(HostnameError::Uppercase);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(HostnameError::InvalidCharacter);
    }
    if name.ends_with('.') && name.len() > 1 {
        return Err(HostnameError::TrailingDot);
    }
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostnameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostnameError::LabelTooLong);
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostnameError::Hyphen);
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostnameError::NumericTopLabel);
    }
    Ok(())
}

/// Renders untrusted text for logs and terminals: printable ASCII stays,
/// everything else (controls, escapes, bidi overrides, non-ASCII) becomes
/// `\u{..}`, and the result is cut at 300 characters.
pub fn escape_for_display(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(300) + 2);
    out.push('"');
    for (i, c) in s.chars().enumerate() {
        if i >= 300 {
            out.push_str("...");
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "web1.example.internal",
            "localhost",
            "a",
            "xn--bcher-kva.example",
            "1host.example",
            "a-b.c-d.e",
            &format!("{}.example", "a".repeat(63)),
        ] {
            assert_eq!(validate(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn each_rule_has_its_error() {
        let cases: &[(&str, HostnameError)] = &[
            ("", HostnameError::Empty),
            ("*.example.com", HostnameError::Wildcard),
            ("web*.example.com", HostnameError::Wildcard),
            ("Web1.example.com", HostnameError::Uppercase),
            ("web1.example.com.", HostnameError::TrailingDot),
            ("web1..example.com", HostnameError::EmptyLabel),
            (".example.com", HostnameError::EmptyLabel),
            ("-web.example.com", HostnameError::Hyphen),
            ("web-.example.com", HostnameError::Hyphen),
            ("web_1.example.com", HostnameError::InvalidCharacter),
            ("web 1.example.com", HostnameError::InvalidCharacter),
            ("web1\0.example.com", HostnameError::InvalidCharacter),
            ("../etc/passwd", HostnameError::InvalidCharacter),
            ("web%2e.example.com", HostnameError::InvalidCharacter),
            ("$(reboot).example.com", HostnameError::InvalidCharacter),
            ("bücher.example", HostnameError::InvalidCharacter),
            ("web\u{202e}1.example", HostnameError::InvalidCharacter),
            ("10.0.0.1", HostnameError::NumericTopLabel),
            ("host.123", HostnameError::NumericTopLabel),
        ];
        for (name, err) in cases {
            assert_eq!(validate(name).as_ref(), Err(err), "{name:?}");
        }
        assert_eq!(
            validate(&format!("{}.example", "a".repeat(64))),
            Err(HostnameError::LabelTooLong)
        );
        let long = vec!["abcdefghi"; 26].join("."); // 259 chars
        assert_eq!(validate(&long), Err(HostnameError::TooLong));
    }

    #[test]
    fn escaping_neutralises_terminal_and_bidi_characters() {
        assert_eq!(escape_for_display("a\x1b[31mb"), "\"a\\u{1b}[31mb\"");
        assert_eq!(escape_for_display("x\u{202e}y"), "\"x\\u{202e}y\"");
        assert_eq!(escape_for_display("q\"\\"), "\"q\\\"\\\\\"");
        assert!(escape_for_display(&"a".repeat(1000)).len() < 320);
    }

    proptest! {
        /// Whatever validate accepts is lowercase LDH, dot-separated, bounded.
        #[test]
        fn accepted_names_follow_rfc1123(name in "\\PC{0,80}") {
            if validate(&name).is_ok() {
                prop_assert!(name.len() <= MAX_HOSTNAME_LEN);
                prop_assert!(!name.contains('*'));
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
                for label in name.split('.') {
                    prop_assert!(!label.is_empty() && label.len() <= MAX_LABEL_LEN);
                    prop_assert!(!label.starts_with('-') && !label.ends_with('-'));
                }
            }
        }

        #[test]
        fn escaped_text_is_printable_ascii(s in "\\PC*") {
            prop_assert!(escape_for_display(&s).bytes().all(|b| (b' '..=b'~').contains(&b)));
        }
    }
}
