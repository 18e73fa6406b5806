//! git's pkt-line framing: a 4-hex-digit length (including itself) then the payload;
//! `0000` flush, `0001` delimiter, `0002` response end (protocol v2).

use std::fmt;

/// Largest pkt-line payload (65520 bytes in all, minus the 4-byte length).
pub const MAX_PAYLOAD: usize = 65516;

/// Largest payload of one side-band-64k packet after its band byte.
pub const SIDE_BAND_64K_DATA: usize = MAX_PAYLOAD - 1;

/// Largest payload of one (old, 1000-byte) side-band packet after its band byte.
pub const SIDE_BAND_DATA: usize = 1000 - 4 - 1;

/// One parsed pkt-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkt<'a> {
    Flush,
    Delimiter,
    ResponseEnd,
    Data(&'a [u8]),
}

/// Why bytes are not a pkt-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPktLine(pub String);

impl fmt::Display for BadPktLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pkt-line: {}", self.0)
    }
}

impl std::error::Error for BadPktLine {}

/// Parses the pkt-line at the start of `buf`: `Ok(None)` if more bytes are needed, else the
/// packet and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Pkt<'_>, usize)>, BadPktLine> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = parse_len(&buf[..4])?;
    let pkt = match len {
        0 => return Ok(Some((Pkt::Flush, 4))),
        1 => return Ok(Some((Pkt::Delimiter, 4))),
        2 => return Ok(Some((Pkt::ResponseEnd, 4))),
        3 => return Err(BadPktLine("length 3".into())),
        len if len > MAX_PAYLOAD + 4 => {
            return Err(BadPktLine(format!("length {len} exceeds 65520")))
        }
        len => len,
    };
    if buf.len() < pkt {
        return Ok(None);
    }
    Ok(Some((Pkt::Data(&buf[4..pkt]), pkt)))
}

fn parse_len(hex: &[u8]) -> Result<usize, BadPktLine> {
    let mut len = 0usize;
    for &c in hex {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => {
                return Err(BadPktLine(format!(
                    "length {:?} is not hex",
                    String::from_utf8_lossy(hex)
                )))
            }
        };
        len = len * 16 + usize::from(digit);
    }
    Ok(len)
}

/// Appends `payload` as one pkt-line. Panics if it is longer than [`MAX_PAYLOAD`] (a bug).
pub fn write(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(payload.len() <= MAX_PAYLOAD, "pkt-line payload too long");
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// Appends a flush packet.
pub fn write_flush(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0000");
}

/// Appends `data` on side-band `band`, split into packets of at most `max_data` bytes.
pub fn write_side_band(out: &mut Vec<u8>, band: u8, data: &[u8], max_data: usize) {
    for chunk in data.chunks(max_data) {
        let mut payload = Vec::with_capacity(chunk.len() + 1);
        payload.push(band);
        payload.extend_from_slice(chunk);
        write(out, &payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_waits_for_more() {
        let mut out = Vec::new();
        write(&mut out, b"hello\n");
        write_flush(&mut out);
        assert_eq!(out, b"000ahello\n0000");
        assert_eq!(parse(&out).unwrap(), Some((Pkt::Data(b"hello\n"), 10)));
        assert_eq!(parse(&out[10..]).unwrap(), Some((Pkt::Flush, 4)));
        assert_eq!(parse(&out[..7]).unwrap(), None);
        assert_eq!(parse(b"00").unwrap(), None);
        assert!(parse(b"zzzz").is_err());
        assert!(parse(b"0003").is_err());
        assert!(parse(b"fff5").is_err());
    }

    #[test]
    fn side_band_splits() {
        let mut out = Vec::new();
        write_side_band(&mut out, 1, &[7u8; 2000], SIDE_BAND_DATA);
        let (first, used) = parse(&out).unwrap().unwrap();
        assert_eq!(first, Pkt::Data(&[&[1u8][..], &[7u8; 995][..]].concat()));
        assert_eq!(used, 1000);
    }
}
