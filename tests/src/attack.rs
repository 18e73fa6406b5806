//! Hostile clients, for the tests and the benchmark: what an anonymous abuser sends to hold a
//! server's git processes, sockets and memory.
//!
//! Each comes from a loopback address of its own ([`attacker`]: 127.0.0.2, 127.0.0.3, ...).
//! Linux delivers all of 127.0.0.0/8 on the loopback interface and graspd counts its
//! per-address limits by the TCP peer, so legitimate traffic from 127.0.0.1 (the `git` binary,
//! [`crate::nostr::RelayClient::connect`]) keeps its own allowance, as a real user's would.

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// The legitimate clients' address (what `git` and [`crate::nostr::RelayClient::connect`] use).
pub const LEGITIMATE: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The `n`th attacker's address (`n` from 1): 127.0.0.(1 + n).
pub fn attacker(n: u8) -> IpAddr {
    assert!(n >= 1, "127.0.0.1 is the legitimate clients' address");
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n))
}

/// A TCP connection to `to` from `source`.
pub fn connect_from(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    connect(source, to, None)
}

/// [`connect_from`] with a tiny receive buffer, as a client that never reads would set it: the
/// server's writes stall after a few KiB instead of filling a large loopback window.
pub fn connect_from_not_reading(source: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    connect(source, to, Some(4096))
}

fn connect(
    source: IpAddr,
    to: SocketAddr,
    receive_buffer: Option<usize>,
) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(10))?;
    Ok(socket.into())
}

/// One git pkt-line.
pub fn pkt(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// The placeholder ref a stalled push creates: `refs/nostr/<id>` is taken without a key.
pub fn stalled_push_ref() -> String {
    format!("refs/nostr/{}", "ab".repeat(32))
}

/// Opens a receive-pack POST to `path` (`/<npub>/<id>.git/git-receive-pack`), with `headers`
/// besides its own, that creates [`stalled_push_ref`] at `new`, sends the start of a pack and
/// then nothing: the connection stays open until the server ends it.
pub fn stalled_push(
    source: IpAddr,
    addr: SocketAddr,
    path: &str,
    new: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<TcpStream> {
    let mut stream = connect_from(source, addr)?;
    let zero = "0".repeat(40);
    let placeholder = stalled_push_ref();
    let mut body = pkt(format!("{zero} {new} {placeholder}\0report-status\n").as_bytes());
    body.extend_from_slice(b"0000");
    body.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x03");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Content-Length: {}\r\n",
        body.len() + 10_000_000
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    Ok(stream)
}

/// A protocol v0 fetch request (stateless): want `oid`, done.
pub fn fetch_request(oid: &str) -> Vec<u8> {
    let mut request = pkt(format!("want {oid}\n").as_bytes());
    request.extend_from_slice(b"0000");
    request.extend_from_slice(&pkt(b"done\n"));
    request
}

/// Sends a whole upload-pack POST for `oid` to `path` (`/<npub>/<id>.git/git-upload-pack`)
/// and never reads the answer: the server's git process blocks on a full socket.
pub fn never_reading_fetch(
    source: IpAddr,
    addr: SocketAddr,
    path: &str,
    oid: &str,
) -> std::io::Result<TcpStream> {
    let mut stream = connect_from_not_reading(source, addr)?;
    post(
        &mut stream,
        addr,
        path,
        &[("Content-Type", "application/x-git-upload-pack-request")],
        &fetch_request(oid),
    )?;
    Ok(stream)
}

/// Writes one HTTP/1.1 POST (keep-alive) with `body` to `stream`; reads nothing.
pub fn post(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

/// The HTTP status the server answered on `stream` (reading its first line), if it answered
/// within `timeout`.
pub fn status_within(stream: &mut TcpStream, timeout: Duration) -> Option<u16> {
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Whether the server answered or closed `stream` within `timeout`.
pub fn answered_or_closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            // An answer (its first bytes), or 0 for a close.
            Ok(_answered_or_closed) => return true,
            // A signal (the harness reaps children on SIGCHLD) cut the wait short: wait on.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    }
}

/// What `write` produces, gzip'd by the `gzip` tool.
pub fn gzip(write: impl FnOnce(&mut dyn Write) + Send + 'static) -> Vec<u8> {
    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = gzip.stdin.take().unwrap();
    let writer = std::thread::spawn(move || write(&mut stdin));
    let out = gzip.wait_with_output().unwrap();
    writer.join().unwrap();
    out.stdout
}

/// A gzip'd upload-pack request (protocol v0, stateless) that inflates to `mib` MiB: want
/// `oid` (a ref tip), then the same `have` of an object nobody has, over and over, with no
/// end. git reads it all, answering nothing, so only the server's limits end it. About 1 KB
/// on the wire per MiB inflated.
pub fn gzip_bomb(oid: &str, mib: usize) -> Vec<u8> {
    let mut start = pkt(format!("want {oid}\n").as_bytes());
    start.extend_from_slice(b"0000");
    gzip(move |out| {
        out.write_all(&start).unwrap();
        let have = pkt(format!("have {}\n", "dead".repeat(10)).as_bytes());
        let haves = have.repeat((1 << 20) / have.len());
        let mut written = start.len();
        while written < mib << 20 {
            out.write_all(&haves).unwrap();
            written += haves.len();
        }
    })
}

/// Opens a WebSocket to `addr` from `source` below any WebSocket library: it answers no ping
/// and says nothing. `Err` carries the refusal (`HTTP/1.1 429 ...`) or the transport error.
pub fn raw_websocket(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = connect_from(source, addr)?;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    while !response.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        response.push(byte[0]);
    }
    if !response.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&response).into_owned(),
        ));
    }
    Ok(stream)
}

/// [`raw_websocket`] that then sends the header of a 125-byte text frame and none of its
/// payload: a client slow to say anything. The caller may dribble up to 125 payload bytes
/// (the mask is zero), or just hold it.
pub fn slow_websocket(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = raw_websocket(source, addr)?;
    stream.write_all(&[0x81, 0x80 | 125, 0, 0, 0, 0])?;
    Ok(stream)
}

/// Whether the server closed `stream` (reading and discarding whatever it sent, without
/// waiting: pings stay unanswered).
pub fn closed_by_server(stream: &mut TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let _ = stream.set_nonblocking(false);
    closed
}

/// What a running attack did so far.
#[derive(Debug, Default)]
pub struct Tally {
    /// Connections or requests the attack opened.
    pub opened: AtomicU64,
    /// Of those, refused by a limit (429, 503, `OK false`).
    pub refused: AtomicU64,
    /// Held connections the server ended (a timeout, an idle close).
    pub ended: AtomicU64,
    /// Connections held open right now.
    pub held: AtomicU64,
    /// The most held open at once.
    pub most_held: AtomicU64,
    /// Answers the attack got that were not refusals (`OK true`, 200).
    pub answered: AtomicU64,
}

impl Tally {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn set_held(&self, held: usize) {
        self.held.store(held as u64, Ordering::Relaxed);
        self.most_held.fetch_max(held as u64, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = Tally::get;
        write!(
            f,
            "opened {}, refused {}, ended by the server {}, held at most {}, answered {}",
            g(&self.opened),
            g(&self.refused),
            g(&self.ended),
            g(&self.most_held),
            g(&self.answered)
        )
    }
}

/// An attack running on background threads until [`Attack::stop`] (or drop).
pub struct Attack {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub tally: Arc<Tally>,
}

/// How often a holding attack looks at its connections and tops them up.
const HOLD_TICK: Duration = Duration::from_millis(200);
/// How long an attacker waits after a refusal before trying again.
const REFUSED_PAUSE: Duration = Duration::from_millis(500);

impl Attack {
    /// Runs `work(stop, tally)` on `threads` threads.
    pub fn spawn<F>(threads: usize, work: F) -> Attack
    where
        F: Fn(usize, &AtomicBool, &Tally) + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let work = Arc::new(work);
        let threads = (0..threads)
            .map(|n| {
                let (stop, tally, work) = (stop.clone(), tally.clone(), work.clone());
                std::thread::spawn(move || work(n, &stop, &tally))
            })
            .collect();
        Attack {
            stop,
            threads,
            tally,
        }
    }

    /// Keeps `count` connections from `open` open, reopening those the server ends, pausing
    /// after a refusal (`open` fails). `tick` runs on every held connection each round (to
    /// dribble on it, or to see whether the server closed it: [`closed_by_server`]) and says
    /// whether it is still open.
    pub fn hold(
        count: usize,
        open: impl Fn() -> std::io::Result<TcpStream> + Send + Sync + 'static,
        tick: impl Fn(&mut TcpStream) -> bool + Send + Sync + 'static,
    ) -> Attack {
        Attack::spawn(1, move |_, stop, tally| {
            let mut held: Vec<TcpStream> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let before = held.len();
                held.retain_mut(|s| tick(s));
                for _ in held.len()..before {
                    Tally::add(&tally.ended);
                }
                while held.len() < count && !stop.load(Ordering::Relaxed) {
                    Tally::add(&tally.opened);
                    match open() {
                        Ok(s) => held.push(s),
                        Err(_refused) => {
                            Tally::add(&tally.refused);
                            std::thread::sleep(REFUSED_PAUSE);
                            break;
                        }
                    }
                }
                tally.set_held(held.len());
                std::thread::sleep(HOLD_TICK);
            }
        })
    }

    /// Stops the attack and waits for its threads; returns what it did.
    pub fn stop(mut self) -> Arc<Tally> {
        self.halt();
        self.tally.clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Up to `per_address` stalled pushes (see [`stalled_push`]) from each of `sources`, reopened
/// as the server ends them.
pub fn stalled_pushes(
    sources: &[IpAddr],
    addr: SocketAddr,
    path: &str,
    new: &str,
    per_address: usize,
) -> Vec<Attack> {
    sources
        .iter()
        .map(|&source| {
            let (path, new) = (path.to_owned(), new.to_owned());
            Attack::hold(
                per_address,
                move || {
                    let mut push = stalled_push(source, addr, &path, &new, &[])?;
                    // A refusal (429, 503) is answered at once.
                    match answered_or_closed_within(&mut push, Duration::from_millis(50)) {
                        true => Err(std::io::Error::other("refused")),
                        false => Ok(push),
                    }
                },
                |s| !closed_by_server(s),
            )
        })
        .collect()
}

/// `per_address` WebSockets from each of `sources` that answer no ping; `slow` ones also
/// dribble a byte of a frame every [`HOLD_TICK`] (see [`slow_websocket`]) until it is whole
/// but one. Reopened as the server closes them.
pub fn websocket_flood(
    sources: &[IpAddr],
    addr: SocketAddr,
    per_address: usize,
    slow: bool,
) -> Vec<Attack> {
    sources
        .iter()
        .map(|&source| {
            if slow {
                let sent = Mutex::new(std::collections::BTreeMap::new());
                Attack::hold(
                    per_address,
                    move || slow_websocket(source, addr),
                    move |s| {
                        let port = s.local_addr().map_or(0, |a| a.port());
                        let mut sent = sent.lock().unwrap();
                        let n = sent.entry(port).or_insert(0u8);
                        if *n < 124 && s.write_all(b"x").is_ok() {
                            *n += 1;
                        }
                        !closed_by_server(s)
                    },
                )
            } else {
                Attack::hold(
                    per_address,
                    move || raw_websocket(source, addr),
                    |s| !closed_by_server(s),
                )
            }
        })
        .collect()
}

/// How many EVENTs a spamming connection keeps unanswered.
const SPAM_WINDOW: usize = 32;

/// EVENTs from `source` over `connections` WebSockets as fast as the server answers, each
/// keeping [`SPAM_WINDOW`] unanswered: `next(connection, n)` gives each one's `n`th event
/// (JSON, so it may be malformed or badly signed). Returns the attack and the ids the server
/// acknowledged with `OK true`, which it must keep like anyone's.
pub fn event_spam(
    source: IpAddr,
    ws_url: &str,
    connections: usize,
    next: impl Fn(usize, u64) -> serde_json::Value + Send + Sync + 'static,
) -> (Attack, Arc<Mutex<Vec<String>>>) {
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let kept = accepted.clone();
    let ws_url = ws_url.to_owned();
    let attack = Attack::spawn(connections, move |connection, stop, tally| {
        let mut relay = match crate::nostr::RelayClient::try_connect_from(&ws_url, source) {
            Ok(relay) => relay,
            Err(_refused) => {
                Tally::add(&tally.refused);
                return;
            }
        };
        let (mut sent, mut answered) = (0u64, 0u64);
        let mut drain_until = None;
        loop {
            if drain_until.is_none() && stop.load(Ordering::Relaxed) {
                drain_until = Some(std::time::Instant::now() + Duration::from_secs(30));
            }
            if drain_until.is_none() {
                while sent - answered < SPAM_WINDOW as u64 {
                    let event = next(connection, sent);
                    if relay.try_send(serde_json::json!(["EVENT", event])).is_err() {
                        return;
                    }
                    Tally::add(&tally.opened);
                    sent += 1;
                }
            }
            if answered == sent || drain_until.is_some_and(|d| std::time::Instant::now() > d) {
                if drain_until.is_some() {
                    return;
                }
                continue;
            }
            let Ok(reply) = relay.try_recv(std::time::Instant::now() + Duration::from_millis(200))
            else {
                return;
            };
            let Some(reply) = reply else { continue };
            if reply[0] != "OK" {
                continue;
            }
            answered += 1;
            if reply[2] == true {
                Tally::add(&tally.answered);
                let id = reply[1].as_str().unwrap_or_default().to_owned();
                kept.lock().unwrap().push(id);
            } else {
                Tally::add(&tally.refused);
            }
        }
    });
    (attack, accepted)
}
