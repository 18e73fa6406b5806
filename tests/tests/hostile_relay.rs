//! The relay against anonymous clients that try to exhaust it: many or idle WebSockets,
//! oversized frames, descriptor exhaustion. Each scenario runs against both server binaries.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use graspd_tests::fixtures::hosted_repo;
use graspd_tests::http::request;
use graspd_tests::nostr::{eventually, keys, EventBuilder, Kind, Message, RelayClient, Tag};
use graspd_tests::{both_runtimes, Flavor, Server, ServerOptions};
use serde_json::json;

/// Generous bound for things that happen "at once" on a loaded 2-core CI machine.
const SOON: Duration = Duration::from_secs(30);

fn close_code(message: &Message) -> Option<u16> {
    match message {
        Message::Close(Some(frame)) => Some(frame.code.into()),
        _ => None,
    }
}

/// Reads until a close frame arrives (or the deadline); returns it.
fn close_frame(client: &mut RelayClient, timeout: Duration) -> Option<Message> {
    let deadline = Instant::now() + timeout;
    while let Some(message) = client.next_message(deadline) {
        if let Message::Close(_) = message {
            return Some(message);
        }
    }
    None
}

fn websockets_are_capped_per_address_and_in_total(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--max-websockets", 6)
            .flag("--max-websockets-per-address", 3)
            .flag("--trusted-proxy", "127.0.0.1"),
    );
    let url = server.ws_url();
    let mut local: Vec<RelayClient> = (0..3).map(|_| RelayClient::connect(&url)).collect();
    let (status, retry_after) = RelayClient::try_connect(&url, &[]).err().expect("refused");
    assert_eq!(status, 429, "a fourth WebSocket from one address");
    assert!(retry_after.is_some(), "429 without Retry-After");
    // Behind the trusted proxy, the forwarded address is the client.
    let forwarded: Vec<RelayClient> = (0..3)
        .map(|_| {
            RelayClient::try_connect(&url, &[("x-forwarded-for", "1.2.3.4, 203.0.113.7")])
                .expect("another address has its own allowance")
        })
        .collect();
    let (status, _) = RelayClient::try_connect(&url, &[("x-forwarded-for", "203.0.113.8")])
        .err()
        .expect("the server is full");
    assert_eq!(status, 503, "a seventh WebSocket with the server cap at 6");
    // Plain HTTP is still served while the WebSocket caps are full.
    let nip11 = request(
        server.addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
        b"",
    );
    assert_eq!(nip11.status, 200);
    // A closed WebSocket gives its slot back.
    local.pop();
    assert!(
        eventually(SOON, || RelayClient::try_connect(&url, &[]).is_ok()),
        "the slot of a closed WebSocket was not freed"
    );
    assert!(local[0].query(json!({"kinds": [1]})).is_empty());
    // At least the one above; the reconnect loop may be refused again before the slot frees.
    assert!(server
        .metric(r#"graspd_refusals_total{limit="websockets_per_address"}"#)
        .is_some_and(|n| n >= 1.0));
    assert!(server
        .metric(r#"graspd_refusals_total{limit="websockets_total"}"#)
        .is_some_and(|n| n >= 1.0));
    drop(forwarded);

    // Without --trusted-proxy, forwarding headers are the client's own words: ignored.
    let untrusting = Server::start_with(
        flavor,
        ServerOptions::default().flag("--max-websockets-per-address", 2),
    );
    let url = untrusting.ws_url();
    let _held: Vec<RelayClient> = ["198.51.100.1", "198.51.100.2"]
        .iter()
        .map(|a| RelayClient::try_connect(&url, &[("x-forwarded-for", a)]).unwrap())
        .collect();
    let (status, _) = RelayClient::try_connect(&url, &[("x-forwarded-for", "198.51.100.3")])
        .err()
        .expect("a spoofed X-Forwarded-For does not buy a new allowance");
    assert_eq!(status, 429);
}

fn idle_websockets_are_pinged_then_closed(flavor: Flavor) {
    let server = Server::start_with(
        flavor,
        ServerOptions::default()
            .flag("--websocket-ping-secs", 1)
            .flag("--websocket-idle-secs", 3),
    );
    let mut silent = RelayClient::connect(&server.ws_url());
    let mut alive = RelayClient::connect(&server.ws_url());
    alive.subscribe("live", json!({"kinds": [1621]}));
    // `alive` keeps reading (its WebSocket layer answers pings); `silent` reads nothing.
    let closed = eventually(SOON, || {
        alive.recv_until(Instant::now() + Duration::from_millis(100));
        server.metric(r#"graspd_refusals_total{limit="websocket_idle"}"#) == Some(1.0)
    });
    assert!(
        closed,
        "a silent WebSocket was not closed\n{}",
        server.log()
    );
    let first = silent.next_message(Instant::now() + SOON);
    assert!(
        matches!(first, Some(Message::Ping(_))),
        "the silent client was not pinged first: {first:?}"
    );
    let close = close_frame(&mut silent, SOON).expect("a close frame");
    assert_eq!(close_code(&close), Some(1000), "{close:?}");
    // The client that answers pings outlived the idle timeout and still works.
    assert!(alive.query(json!({"kinds": [1]})).is_empty());
    assert_eq!(server.metric("graspd_websockets_open"), Some(1.0));
}

fn shutdown_closes_and_counts_websockets(flavor: Flavor) {
    let mut server = Server::start(flavor);
    let mut clients: Vec<RelayClient> = (0..5)
        .map(|_| RelayClient::connect(&server.ws_url()))
        .collect();
    for client in &mut clients {
        assert!(client.query(json!({"kinds": [1]})).is_empty());
    }
    assert!(server.terminate(SOON), "the server did not stop");
    let log = server.log();
    assert!(
        log.contains("shutting down: no new connections open=5"),
        "open WebSockets not counted at shutdown:\n{log}"
    );
    assert!(
        !log.contains("still open after the grace period"),
        "WebSockets held the shutdown to its grace period:\n{log}"
    );
    for client in &mut clients {
        let close = close_frame(client, SOON).expect("a close frame at shutdown");
        assert_eq!(close_code(&close), Some(1001), "{close:?}");
    }
}

fn oversized_frame_gets_notice_and_close_1009(flavor: Flavor) {
    let server = Server::start(flavor);
    let mut client = RelayClient::connect(&server.ws_url());
    let sent = client.try_send_text(&"x".repeat(2 * 1024 * 1024));
    assert!(sent.is_ok(), "the server reset the connection: {sent:?}");
    let deadline = Instant::now() + SOON;
    let notice = client.next_message(deadline).expect("a NOTICE");
    let Message::Text(text) = &notice else {
        panic!("expected a NOTICE, got {notice:?}");
    };
    let notice: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(notice[0], "NOTICE", "{notice}");
    assert!(
        notice[1].as_str().unwrap().starts_with("invalid: "),
        "{notice}"
    );
    let close = client.next_message(deadline).expect("a close frame");
    assert_eq!(close_code(&close), Some(1009), "{close:?}");
    assert_eq!(
        server.metric(r#"graspd_refusals_total{limit="websocket_oversized_frame"}"#),
        Some(1.0)
    );
}

/// With few file descriptors, idle WebSockets cannot take them all (the cap is fitted to the
/// limit), and when the descriptors do run out the accept loop backs off and logs a summary
/// instead of a line per failure.
fn descriptor_exhaustion_is_bounded_and_quiet(flavor: Flavor) {
    let server = Server::start_with(flavor, ServerOptions::default().open_files(128));
    let url = server.ws_url();
    assert!(
        server.log().contains("--max-websockets lowered to fit"),
        "{}",
        server.log()
    );
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        match RelayClient::try_connect(&url, &[]) {
            Ok(client) => held.push(client),
            Err((503, _)) => refused += 1,
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert!(refused > 0, "100 WebSockets fit in 128 descriptors");
    let nip11 = request(
        server.addr,
        "GET",
        "/",
        &[("Accept", "application/nostr+json")],
        b"",
    );
    assert_eq!(nip11.status, 200, "idle WebSockets locked everyone out");
    // Now exhaust the descriptors with bare TCP connections for a few seconds.
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(server.addr).ok())
        .collect();
    assert!(
        eventually(SOON, || server.log().contains("accept failed")),
        "descriptors were not exhausted\n{}",
        server.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    drop(flood);
    drop(held);
    let lines = server
        .log()
        .lines()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert!(lines <= 2, "{lines} log lines for failed accepts");
    assert!(
        eventually(SOON, || request(server.addr, "GET", "/metrics", &[], b"")
            .status
            == 200),
        "the server did not recover"
    );
    let failures = server
        .metric(r#"graspd_refusals_total{limit="accept_failed"}"#)
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{failures}");
}

/// Resident and peak memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Clients that ask for 40 MB of stored events again and again and never read: the server
/// produces frames only as fast as each socket takes them, so its memory stays flat.
fn clients_that_never_read_do_not_grow_memory(flavor: Flavor) {
    const EVENTS: usize = 100;
    const CONTENT_BYTES: usize = 400 * 1024;
    let server = Server::start(flavor);
    let coordinate = hosted_repo(&server);
    let mut writer = RelayClient::connect(&server.ws_url());
    let padding = "x".repeat(CONTENT_BYTES);
    for n in 0..EVENTS {
        let issue = EventBuilder::new(Kind::from(1621), format!("{n} {padding}"))
            .tags([Tag::parse(["a", coordinate.as_str()]).unwrap()])
            .sign_with_keys(&keys(2))
            .unwrap();
        let reply = writer.publish(&issue);
        assert!(reply.accepted, "{reply:?}");
    }
    // One client reading everything sets the baseline (store cache, allocator pools).
    assert_eq!(writer.query(json!({"kinds": [1621]})).len(), EVENTS);
    let pid = server.pid().expect("running");
    let (baseline, _) = memory_kib(pid);
    let mut hogs: Vec<RelayClient> = (0..4)
        .map(|_| RelayClient::connect(&server.ws_url()))
        .collect();
    for hog in &mut hogs {
        for sub in 0..8 {
            hog.send(json!(["REQ", format!("all-{sub}"), {"kinds": [1621]}]));
        }
    }
    // Each REQ asks for 40 MB; the sockets hold a few MB at most.
    let mut peak = baseline;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        peak = peak.max(memory_kib(pid).0);
        std::thread::sleep(Duration::from_millis(50));
    }
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "RSS baseline {} MiB, peak {} MiB",
        baseline / 1024,
        peak / 1024
    );
    assert!(
        grown_mib < 100,
        "RSS grew by {grown_mib} MiB with four clients that do not read"
    );
    // A client that reads is still served in full meanwhile.
    let mut reader = RelayClient::connect(&server.ws_url());
    assert_eq!(reader.query(json!({"kinds": [1621]})).len(), EVENTS);
    drop(hogs);
}

/// `"ids": []` (or any empty list) matches no event: it is not read as "any id".
fn empty_value_lists_match_nothing(flavor: Flavor) {
    let server = Server::start(flavor);
    hosted_repo(&server);
    let mut client = RelayClient::connect(&server.ws_url());
    assert!(
        client.query(json!({})).len() >= 2,
        "the announcement and state are served"
    );
    for filter in [
        json!({"ids": []}),
        json!({"authors": []}),
        json!({"kinds": []}),
        json!({"#d": []}),
    ] {
        assert_eq!(
            client.query(filter.clone()),
            Vec::<serde_json::Value>::new(),
            "{filter}"
        );
    }
}

both_runtimes!(
    websockets_are_capped_per_address_and_in_total,
    idle_websockets_are_pinged_then_closed,
    shutdown_closes_and_counts_websockets,
    oversized_frame_gets_notice_and_close_1009,
    descriptor_exhaustion_is_bounded_and_quiet,
    clients_that_never_read_do_not_grow_memory,
    empty_value_lists_match_nothing,
);
