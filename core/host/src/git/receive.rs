//! The receive-pack request's command list (parsed before git runs, so the push can be
//! decided), and git's report-status answer for pushes we refuse without running git.

use std::fmt;

use graspd_core::Oid;

use super::pktline::{self, Pkt};

/// One ref update a push asks for. `old`/`new` are [`Oid::ZERO`] for a creation/deletion.
// The lead switches this to `graspd_core::push::RefUpdate` once the engine has it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RefUpdate {
    pub old: Oid,
    pub new: Oid,
    pub name: String,
}

/// What the client asked for in the first command's capability list that matters to us.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct PushCapabilities {
    pub report_status: bool,
    pub side_band_64k: bool,
    pub side_band: bool,
}

/// The parsed head of a receive-pack request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PushCommands {
    pub updates: Vec<RefUpdate>,
    pub capabilities: PushCapabilities,
    /// Bytes of the request up to and including the flush after the commands (shallow lines
    /// included); the pack follows.
    pub header_len: usize,
}

/// Why a receive-pack request is malformed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BadPush(pub String);

impl fmt::Display for BadPush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed push request: {}", self.0)
    }
}

impl std::error::Error for BadPush {}

/// Most ref updates one push may carry.
pub const MAX_COMMANDS: usize = 10_000;

/// Parses the command list at the start of `buf`; `Ok(None)` if the flush has not arrived yet.
pub fn parse_commands(buf: &[u8]) -> Result<Option<PushCommands>, BadPush> {
    let mut at = 0;
    let mut updates = Vec::new();
    let mut capabilities = None;
    loop {
        let Some((pkt, used)) = pktline::parse(&buf[at..]).map_err(|e| BadPush(e.to_string()))?
        else {
            return Ok(None);
        };
        at += used;
        let line = match pkt {
            Pkt::Flush => break,
            Pkt::Data(line) => line,
            other => return Err(BadPush(format!("unexpected {other:?} in the command list"))),
        };
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        if line.starts_with(b"shallow ") {
            continue;
        }
        let (command, caps) = match line.iter().position(|&b| b == 0) {
            Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
            None => (line, None),
        };
        if capabilities.is_none() {
            capabilities = Some(parse_capabilities(caps.unwrap_or_default()));
        }
        if updates.len() == MAX_COMMANDS {
            return Err(BadPush(format!("more than {MAX_COMMANDS} ref updates")));
        }
        updates.push(parse_update(command)?);
    }
    Ok(Some(PushCommands {
        updates,
        capabilities: capabilities.unwrap_or_default(),
        header_len: at,
    }))
}

fn parse_update(command: &[u8]) -> Result<RefUpdate, BadPush> {
    let text = std::str::from_utf8(command).map_err(|_| BadPush("command is not UTF-8".into()))?;
    let mut parts = text.splitn(3, ' ');
    let (Some(old), Some(new), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(BadPush(format!(
            "command {text:?} is not '<old> <new> <ref>'"
        )));
    };
    let oid = |s: &str| Oid::from_hex(s).map_err(|e| BadPush(format!("{e}: {s:?}")));
    if name.is_empty() || name.contains(['\n', '\0']) {
        return Err(BadPush(format!("bad ref name {name:?}")));
    }
    Ok(RefUpdate {
        old: oid(old)?,
        new: oid(new)?,
        name: name.to_owned(),
    })
}

fn parse_capabilities(caps: &[u8]) -> PushCapabilities {
    let mut out = PushCapabilities::default();
    for cap in caps.split(|&b| b == b' ') {
        match cap {
            b"report-status" | b"report-status-v2" => out.report_status = true,
            b"side-band-64k" => out.side_band_64k = true,
            b"side-band" => out.side_band = true,
            _ => {}
        }
    }
    out
}

/// The receive-pack response git would send for these per-ref outcomes (`unpack ok`, then
/// `ok <ref>` / `ng <ref> <reason>`), wrapped in side-band 1 if the client asked for it, so
/// the user sees `! [remote rejected] <ref> (<reason>)`.
pub fn report_status(
    capabilities: PushCapabilities,
    outcomes: &[(&str, Result<(), String>)],
) -> Vec<u8> {
    let mut report = Vec::new();
    if capabilities.report_status {
        pktline::write(&mut report, b"unpack ok\n");
        for (name, outcome) in outcomes {
            let line = match outcome {
                Ok(()) => format!("ok {name}\n"),
                Err(reason) => format!("ng {name} {}\n", one_line(reason)),
            };
            pktline::write(&mut report, line.as_bytes());
        }
        pktline::write_flush(&mut report);
    }
    let max_data = if capabilities.side_band_64k {
        pktline::SIDE_BAND_64K_DATA
    } else if capabilities.side_band {
        pktline::SIDE_BAND_DATA
    } else {
        return report;
    };
    let mut out = Vec::new();
    pktline::write_side_band(&mut out, 1, &report, max_data);
    pktline::write_flush(&mut out);
    out
}

/// Reasons travel inside one pkt-line: no newlines, bounded length.
fn one_line(reason: &str) -> String {
    let flat: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.chars().take(1000).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const Z: &str = "0000000000000000000000000000000000000000";

    fn request() -> Vec<u8> {
        let mut out = Vec::new();
        pktline::write(
            &mut out,
            format!("{Z} {A} refs/heads/main\0report-status side-band-64k agent=git/2\n")
                .as_bytes(),
        );
        pktline::write(&mut out, format!("{A} {Z} refs/heads/old").as_bytes());
        pktline::write_flush(&mut out);
        out.extend_from_slice(b"PACK...");
        out
    }

    #[test]
    fn parses_commands_then_stops_at_the_pack() {
        let req = request();
        let parsed = parse_commands(&req).unwrap().unwrap();
        assert_eq!(parsed.updates.len(), 2);
        assert_eq!(parsed.updates[0].name, "refs/heads/main");
        assert!(parsed.updates[0].old.is_zero());
        assert!(parsed.updates[1].new.is_zero());
        assert_eq!(&req[parsed.header_len..], b"PACK...");
        assert_eq!(
            parsed.capabilities,
            PushCapabilities {
                report_status: true,
                side_band_64k: true,
                side_band: false
            }
        );
        assert_eq!(parse_commands(&req[..parsed.header_len - 1]).unwrap(), None);
        assert!(parse_commands(b"0010not a command0000").is_err());
    }

    #[test]
    fn report_is_side_band_wrapped() {
        let caps = PushCapabilities {
            report_status: true,
            side_band_64k: true,
            side_band: false,
        };
        let out = report_status(caps, &[("refs/heads/x", Err("no\nway".into()))]);
        let (pkt, used) = pktline::parse(&out).unwrap().unwrap();
        let Pkt::Data(data) = pkt else { panic!() };
        assert_eq!(data[0], 1);
        assert_eq!(
            &data[1..],
            b"000eunpack ok\n001bng refs/heads/x no way\n0000"
        );
        assert_eq!(&out[used..], b"0000");
    }
}
