//! The receive-pack request's command list (parsed before git runs, so the push can be
//! decided), and git's report-status answer for pushes we refuse without running git.

use std::fmt;

use graspd_core::Oid;

use super::pktline::{self, Pkt};

/// One ref update a push asks for. `old`/`new` are [`Oid::ZERO`] for a creation/deletion.
pub use graspd_core::RefUpdate;

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

/// Most ref updates one push may carry, unless configured otherwise.
pub const MAX_COMMANDS: usize = 10_000;

/// Parses a push's command list as it arrives. Each [`CommandParser::feed`] resumes at the
/// first pkt-line not yet parsed, so a list sent in small pieces costs time linear in its
/// size, never quadratic.
#[derive(Debug)]
pub struct CommandParser {
    buf: Vec<u8>,
    /// Where the first pkt-line not yet parsed starts in `buf`.
    at: usize,
    updates: Vec<RefUpdate>,
    capabilities: Option<PushCapabilities>,
    max_commands: usize,
}

impl CommandParser {
    pub fn new(max_commands: usize) -> CommandParser {
        CommandParser {
            buf: Vec::new(),
            at: 0,
            updates: Vec::new(),
            capabilities: None,
            max_commands,
        }
    }

    /// Adds `bytes`; the commands once the flush after them has arrived. What follows the
    /// flush (the start of the pack) stays in [`CommandParser::received`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<PushCommands>, BadPush> {
        self.buf.extend_from_slice(bytes);
        loop {
            let Some((pkt, used)) =
                pktline::parse(&self.buf[self.at..]).map_err(|e| BadPush(e.to_string()))?
            else {
                return Ok(None);
            };
            let line = match pkt {
                Pkt::Flush => {
                    self.at += used;
                    return Ok(Some(PushCommands {
                        updates: std::mem::take(&mut self.updates),
                        capabilities: self.capabilities.unwrap_or_default(),
                        header_len: self.at,
                    }));
                }
                Pkt::Data(line) => line,
                other => return Err(BadPush(format!("unexpected {other:?} in the command list"))),
            };
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            if !line.starts_with(b"shallow ") {
                let (command, caps) = match line.iter().position(|&b| b == 0) {
                    Some(nul) => (&line[..nul], Some(&line[nul + 1..])),
                    None => (line, None),
                };
                if self.capabilities.is_none() {
                    self.capabilities = Some(parse_capabilities(caps.unwrap_or_default()));
                }
                if self.updates.len() == self.max_commands {
                    return Err(BadPush(format!(
                        "more than {} ref updates in one push; push fewer refs at a time",
                        self.max_commands
                    )));
                }
                self.updates.push(parse_update(command)?);
            }
            self.at += used;
        }
    }

    /// Ref updates parsed so far.
    pub fn commands(&self) -> usize {
        self.updates.len()
    }

    /// Every byte fed so far.
    pub fn received(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of the command list parsed so far: each is parsed once.
    pub fn parsed(&self) -> usize {
        self.at
    }

    pub fn into_received(self) -> Vec<u8> {
        self.buf
    }
}

/// Parses the command list at the start of `buf`; `Ok(None)` if the flush has not arrived yet.
pub fn parse_commands(buf: &[u8]) -> Result<Option<PushCommands>, BadPush> {
    CommandParser::new(MAX_COMMANDS).feed(buf)
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
    fn parsing_resumes_where_it_stopped() {
        let req = request();
        let mut parser = CommandParser::new(MAX_COMMANDS);
        let mut parsed_before = 0;
        let mut done = None;
        for (i, byte) in req.iter().enumerate() {
            match parser.feed(std::slice::from_ref(byte)).unwrap() {
                Some(commands) => {
                    done = Some((i, commands));
                    break;
                }
                // Never behind what it parsed before, never past what it was given.
                None => {
                    assert!(parser.parsed() >= parsed_before && parser.parsed() <= i + 1);
                    parsed_before = parser.parsed();
                }
            }
        }
        let (i, commands) = done.expect("the flush arrives");
        assert_eq!(i + 1, commands.header_len);
        assert_eq!(Some(commands), parse_commands(&req).unwrap());
        // A complete first line is parsed as soon as it has arrived, not again later.
        let first_line =
            usize::from_str_radix(std::str::from_utf8(&req[..4]).unwrap(), 16).unwrap();
        let mut parser = CommandParser::new(MAX_COMMANDS);
        assert_eq!(parser.feed(&req[..first_line + 2]).unwrap(), None);
        assert_eq!(parser.parsed(), first_line);
    }

    #[test]
    fn too_many_commands_are_refused_with_the_limit() {
        let mut req = Vec::new();
        for i in 0..3 {
            pktline::write(&mut req, format!("{Z} {A} refs/heads/b{i}\n").as_bytes());
        }
        pktline::write_flush(&mut req);
        let error = CommandParser::new(2).feed(&req).unwrap_err();
        assert!(
            error.to_string().contains("more than 2 ref updates"),
            "{error}"
        );
        assert!(CommandParser::new(3).feed(&req).unwrap().is_some());
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
