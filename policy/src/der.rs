//! A strict DER shape check that runs before the X.509 parser: definite,
//! minimal lengths only, bounded nesting, and bounded, minimally encoded
//! OBJECT IDENTIFIERs. x509-parser accepts some BER (a non-minimal length on
//! the outer SEQUENCE) and OIDs of any length; a CSR is DER, so anything
//! else is refused before it is interpreted.

/// Deepest nesting of constructed values accepted (an honest CSR needs < 12).
pub const MAX_DEPTH: usize = 32;
/// Longest OBJECT IDENTIFIER body accepted, in bytes.
pub const MAX_OID_LEN: usize = 64;

/// Why a body is not strict DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("indefinite length at byte {0}")]
    Indefinite(usize),
    #[error("non-minimal length at byte {0}")]
    NonMinimalLength(usize),
    #[error("nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("multi-byte tag at byte {0}")]
    LongTag(usize),
    #[error("object identifier at byte {0} is longer than {MAX_OID_LEN} bytes")]
    OidTooLong(usize),
    #[error("object identifier at byte {0} is not minimally encoded")]
    OidEncoding(usize),
    #[error("{0} bytes after the outer value")]
    Trailing(usize),
}

/// Checks that `der` is exactly one strict-DER value (see the module doc).
pub fn check(der: &[u8]) -> Result<(), DerError> {
    let end = walk(der, 0, 0)?;
    if end != der.len() {
        return Err(DerError::Trailing(der.len() - end));
    }
    Ok(())
}

/// Checks the value at `pos` (and everything inside it); returns where it ends.
fn walk(der: &[u8], pos: usize, depth: usize) -> Result<usize, DerError> {
    if depth > MAX_DEPTH {
        return Err(DerError::TooDeep);
    }
    let tag = *der.get(pos).ok_or(DerError::Truncated(pos))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError::LongTag(pos));
    }
    let (start, len) = length(der, pos + 1)?;
    let end = start.checked_add(len).ok_or(DerError::Truncated(pos))?;
    if end > der.len() {
        return Err(DerError::Truncated(der.len()));
    }
    if tag & 0x20 != 0 {
        let mut inner = start;
        while inner < end {
            inner = walk(&der[..end], inner, depth + 1)?;
        }
    } else if tag == 0x06 {
        oid(&der[start..end], pos)?;
    }
    Ok(end)
}

/// Reads a definite, minimal length at `pos`: (content start, length).
fn length(der: &[u8], pos: usize) -> Result<(usize, usize), DerError> {
    let first = *der.get(pos).ok_or(DerError::Truncated(pos))?;
    if first < 0x80 {
        return Ok((pos + 1, first as usize));
    }
    if first == 0x80 {
        return Err(DerError::Indefinite(pos));
    }
    let n = (first & 0x7f) as usize;
    if n > std::mem::size_of::<usize>() {
        return Err(DerError::Truncated(pos));
    }
    let bytes = der
        .get(pos + 1..pos + 1 + n)
        .ok_or(DerError::Truncated(pos))?;
    if bytes[0] == 0 {
        return Err(DerError::NonMinimalLength(pos));
    }
    let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
    if len < 0x80 {
        return Err(DerError::NonMinimalLength(pos));
    }
    Ok((pos + 1 + n, len))
}

fn oid(body: &[u8], pos: usize) -> Result<(), DerError> {
    if body.len() > MAX_OID_LEN {
        return Err(DerError::OidTooLong(pos));
    }
    // Each arc: no leading 0x80 byte, and the last byte of the OID ends an arc.
    let mut arc_start = true;
    for b in body {
        if arc_start && *b == 0x80 {
            return Err(DerError::OidEncoding(pos));
        }
        arc_start = b & 0x80 == 0;
    }
    if body.is_empty() || !arc_start {
        return Err(DerError::OidEncoding(pos));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_der_and_refuses_ber_and_oddities() {
        assert_eq!(check(&[0x30, 0x03, 0x02, 0x01, 0x05]), Ok(()));
        assert_eq!(check(&[0x30, 0x80, 0, 0]), Err(DerError::Indefinite(1)));
        assert_eq!(
            check(&[0x30, 0x81, 0x03, 0x02, 0x01, 0x05]),
            Err(DerError::NonMinimalLength(1))
        );
        let mut long = vec![0x04, 0x82, 0x00, 0x80];
        long.extend([0u8; 0x80]);
        assert_eq!(check(&long), Err(DerError::NonMinimalLength(1)));
        assert_eq!(check(&[0x30, 0x05, 0x02]), Err(DerError::Truncated(3)));
        assert_eq!(check(&[0x02, 0x01, 0x05, 0x00]), Err(DerError::Trailing(1)));
        assert_eq!(
            check(&[0x06, 0x02, 0x80, 0x01]),
            Err(DerError::OidEncoding(0))
        );
        assert_eq!(check(&[0x06, 0x01, 0x81]), Err(DerError::OidEncoding(0)));
        let mut huge = vec![0x06, 0x41, 0x2a];
        huge.extend([0x01; 0x40]);
        assert_eq!(check(&huge), Err(DerError::OidTooLong(0)));
        let mut deep: Vec<u8> = Vec::new();
        for _ in 0..40 {
            deep = [vec![0x30, deep.len() as u8], deep].concat();
        }
        assert_eq!(check(&deep), Err(DerError::TooDeep));
        assert_eq!(check(&[0x1f, 0x01, 0x00]), Err(DerError::LongTag(0)));
    }
}
