//! Human sizes (`64m`, `1g`, `512k`, `1048576`) as bytes, binary multiples like docker's.

use crate::SpecError;

pub fn parse_size(input: &str) -> Result<u64, SpecError> {
    let invalid = || SpecError::InvalidSize {
        input: input.to_string(),
    };
    let s = input.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix("ib")
        .or_else(|| s.strip_suffix('b'))
        .unwrap_or(&s);
    let (digits, shift) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 10),
        Some('m') => (&s[..s.len() - 1], 20),
        Some('g') => (&s[..s.len() - 1], 30),
        Some('t') => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    n.checked_mul(1u64 << shift).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary_multiples() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("10mb").unwrap(), 10 << 20);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "m", "-1m", "1.5g", "1x", "99999999999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }
}
