//! Lowercase hex, for ids in log lines and NIP-77's binary payloads.

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// The bytes `text` spells in hex (either case), or `None` if it is not an even number of
/// hex digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x61, 0xff, 0x0a];
        assert_eq!(super::encode(&bytes), "0061ff0a");
        assert_eq!(super::decode("0061FF0a").as_deref(), Some(&bytes[..]));
        assert_eq!(super::decode(""), Some(Vec::new()));
        for bad in ["6", "zz", "61 ", "6g"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
    }
}
