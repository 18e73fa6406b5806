//! The relay follower against a real WebSocket relay on loopback, on tokio and on smol: history
//! paged until EOSE, then live events; duplicates and forged events never reach the callback.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use graspd_core::acceptance::OwnService;
use graspd_core::events::{self, GitEvent};
use graspd_core::follow::{FollowConfig, RelayFollower};
use graspd_host::follow::{
    spawn_follower, spawn_follower_async, tls_config, ClientLimits, FollowerHandle, HistoryLimits,
};
use graspd_host::Runtime;
use nostr::prelude::*;
use serde_json::{json, Value};

/// A relay that answers every history REQ with its stored events (newest first, honouring
/// `until` and `limit`), every live REQ with EOSE, and then pushes `live` once.
struct FakeRelay {
    stored: Vec<Event>,
    live: Vec<Event>,
    /// Every REQ received, as JSON text.
    reqs: Mutex<Vec<String>>,
    /// Drop the connection once, right after answering the first history REQ.
    drop_once_after_history: std::sync::atomic::AtomicBool,
}

/// A test CA and a certificate for 127.0.0.1 it signed, made by the `openssl` binary:
/// (CA cert DER, leaf cert DER, leaf key PKCS#8 DER).
fn test_certificates() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "graspd-follow-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("the openssl binary is needed for the TLS test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=graspd test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=relay.test",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-outform",
        "DER",
        "-out",
        "leaf.der",
    ]);
    run(&["x509", "-in", "ca.pem", "-outform", "DER", "-out", "ca.der"]);
    run(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "leaf.key", "-outform", "DER", "-out", "key.der",
    ]);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let certificates = (read("ca.der"), read("leaf.der"), read("key.der"));
    let _ = std::fs::remove_dir_all(&dir);
    certificates
}

fn tls_acceptor(cert: &[u8], key: &[u8]) -> futures_rustls::TlsAcceptor {
    use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use futures_rustls::rustls::ServerConfig;
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
        )
        .unwrap();
    futures_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn serve_relay(
    runtime: Arc<dyn Runtime>,
    relay: Arc<FakeRelay>,
    tls: Option<futures_rustls::TlsAcceptor>,
) -> SocketAddr {
    let listener = runtime
        .bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let spawner = Arc::clone(&runtime);
    runtime.spawn(Box::pin(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let relay = Arc::clone(&relay);
            let tls = tls.clone();
            spawner.spawn(Box::pin(async move {
                let stream: graspd_host::runtime::Connection = match tls {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => Box::new(tls),
                        Err(_) => return,
                    },
                    None => stream,
                };
                let Ok(mut ws) = async_tungstenite::accept_async(stream).await else {
                    return;
                };
                let mut pushed_live = false;
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    relay.reqs.lock().unwrap().push(text.to_string());
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    if value[0] != "REQ" {
                        continue;
                    }
                    let sub = value[1].as_str().unwrap().to_owned();
                    let limit = value[2]["limit"].as_u64().unwrap_or(u64::MAX);
                    let until = value[2]["until"].as_u64().unwrap_or(u64::MAX);
                    let mut out = Vec::new();
                    if limit > 0 {
                        let mut matching: Vec<&Event> = relay
                            .stored
                            .iter()
                            .filter(|e| e.created_at.as_secs() <= until)
                            .collect();
                        matching.sort_by_key(|e| std::cmp::Reverse(e.created_at));
                        for e in matching.into_iter().take(limit as usize) {
                            out.push(json!(["EVENT", sub, e]).to_string());
                        }
                    }
                    out.push(json!(["EOSE", sub]).to_string());
                    if limit == 0 && !pushed_live {
                        pushed_live = true;
                        for e in &relay.live {
                            out.push(json!(["EVENT", sub, e]).to_string());
                        }
                    }
                    for frame in out {
                        if ws.send(Message::text(frame)).await.is_err() {
                            return;
                        }
                    }
                    if limit > 0 && relay.drop_once_after_history.swap(false, Ordering::SeqCst) {
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            }));
        }
    }));
    addr
}

fn signed(keys: &Keys, kind: u16, created_at: u64, tags: Vec<Vec<String>>) -> Event {
    let tags: Vec<Tag> = tags.into_iter().map(|t| Tag::parse(t).unwrap()).collect();
    EventBuilder::new(Kind::from_u16(kind), "")
        .tags(tags)
        .custom_created_at(Timestamp::from_secs(created_at))
        .finalize(keys)
        .unwrap()
}

/// Runs a test body to completion on the runtime under test.
type BlockOn<'a> = &'a dyn Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>);

fn run(runtime: Arc<dyn Runtime>, block_on: BlockOn<'_>, tls: bool) {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let certificate = tls.then(test_certificates);
    let owner = Keys::generate();
    let coordinate = format!("30617:{}:demo", owner.public_key().to_hex());
    // History: 7 issues tagging the repository, read in pages of 3; one forged.
    let mut stored: Vec<Event> = (0..7)
        .map(|i| {
            signed(
                &Keys::generate(),
                1621,
                1_000 + i,
                vec![vec!["a".into(), coordinate.clone()]],
            )
        })
        .collect();
    let mut forged = signed(
        &Keys::generate(),
        1621,
        900,
        vec![vec!["a".into(), coordinate.clone()]],
    );
    forged.content = "tampered".into();
    stored.push(forged);
    // Live: one new event and one the history already had.
    let fresh = signed(
        &Keys::generate(),
        1621,
        2_000,
        vec![vec!["a".into(), coordinate.clone()]],
    );
    let relay = Arc::new(FakeRelay {
        stored: stored.clone(),
        live: vec![fresh.clone(), stored[0].clone()],
        reqs: Mutex::new(Vec::new()),
        drop_once_after_history: false.into(),
    });

    let received: Arc<Mutex<Vec<Event>>> = Arc::default();
    let runtime2 = Arc::clone(&runtime);
    let relay2 = Arc::clone(&relay);
    let received2 = Arc::clone(&received);
    block_on(Box::pin(async move {
        let acceptor = certificate
            .as_ref()
            .map(|(_, cert, key)| tls_acceptor(cert, key));
        let addr = serve_relay(Arc::clone(&runtime2), relay2, acceptor).await;
        let scheme = if tls { "wss" } else { "ws" };
        let announcement = signed(
            &owner,
            30617,
            1,
            vec![
                vec!["d".into(), "demo".into()],
                vec![
                    "relays".into(),
                    "ws://grasp.test".into(),
                    format!("{scheme}://{addr}"),
                ],
            ],
        );
        let GitEvent::Announcement(announcement) = events::parse(&announcement).unwrap().unwrap()
        else {
            panic!("not an announcement")
        };
        let follower = RelayFollower::new(
            FollowConfig {
                allow_private_relays: true,
                ..FollowConfig::default()
            },
            OwnService::new("http://grasp.test").unwrap(),
        );
        let mut roots = futures_rustls::rustls::RootCertStore::empty();
        if let Some((ca, _, _)) = &certificate {
            roots.add(ca.clone().into()).unwrap();
        }
        let handle = FollowerHandle::with_tls(
            Arc::clone(&runtime),
            follower,
            ClientLimits {
                history: HistoryLimits {
                    page_limit: 3,
                    max_pages: 10,
                    ..HistoryLimits::default()
                },
                ..ClientLimits::default()
            },
            tls_config(roots),
        );
        let sink = Arc::clone(&received2);
        let relay_url = format!("{scheme}://{addr}");
        spawn_follower(
            Arc::clone(&runtime2),
            handle.clone(),
            move |event, relay| {
                // Each event comes with the relay it came from.
                assert_eq!(&*relay, relay_url);
                sink.lock().unwrap().push(event)
            },
        );
        handle.announcement(announcement);

        let deadline = Instant::now() + Duration::from_secs(20);
        while received2.lock().unwrap().len() < 8 || handle.stats().relays_connected < 1 {
            assert!(
                Instant::now() < deadline,
                "follower did not learn the events in 20 s"
            );
            runtime2
                .sleep_until(Instant::now() + Duration::from_millis(20))
                .await;
        }
        // Let the trailing duplicate and the forged event arrive: whichever of the live
        // push and the last history page comes second brings the duplicate, and the forged
        // event is the last of that page, so either may still be on its way.
        let settle = Instant::now() + Duration::from_secs(20);
        while handle.metrics().duplicates.load(Ordering::Relaxed) < 1
            || handle.metrics().invalid_events.load(Ordering::Relaxed) < 1
        {
            assert!(
                Instant::now() < settle,
                "the duplicate or the forged event was never seen"
            );
            runtime2
                .sleep_until(Instant::now() + Duration::from_millis(20))
                .await;
        }
        let metrics = handle.metrics();
        assert_eq!(metrics.invalid_events.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.events_learned.load(Ordering::Relaxed), 8);
        assert_eq!(metrics.relays_connected.load(Ordering::Relaxed), 1);
        let per_relay = metrics.per_relay();
        assert_eq!(per_relay.len(), 1);
        assert_eq!(per_relay[0].1.learned, 8);
        assert_eq!(handle.stats().repositories_followed, 1);
    }));

    let got = received.lock().unwrap();
    let mut ids: Vec<EventId> = got.iter().map(|e| e.id).collect();
    ids.sort();
    let mut want: Vec<EventId> = stored[..7].iter().map(|e| e.id).chain([fresh.id]).collect();
    want.sort();
    assert_eq!(ids, want, "exactly the valid events, once each");

    let reqs = relay.reqs.lock().unwrap();
    let live = reqs
        .iter()
        .find(|r| r.contains(r#""limit":0"#))
        .expect("a live REQ");
    assert!(
        live.contains(&coordinate) && live.contains(r##""#d":["demo"]"##),
        "{live}"
    );
    // History was paged backwards with `until`.
    assert!(
        reqs.iter().any(|r| r.contains(r#""until":1004"#)),
        "{reqs:?}"
    );
}

#[test]
fn follows_a_relay_on_tokio() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runtime: Arc<dyn Runtime> = Arc::new(graspd_tokio::TokioRuntime::new(rt.handle().clone()));
    run(runtime, &|f| rt.block_on(f), false);
}

#[test]
fn follows_a_relay_on_smol() {
    let runtime: Arc<dyn Runtime> = Arc::new(graspd_smol::SmolRuntime);
    run(runtime, &|f| smol::block_on(f), false);
}

#[test]
fn follows_a_wss_relay_on_tokio() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let runtime: Arc<dyn Runtime> = Arc::new(graspd_tokio::TokioRuntime::new(rt.handle().clone()));
    run(runtime, &|f| rt.block_on(f), true);
}

#[test]
fn follows_a_wss_relay_on_smol() {
    let runtime: Arc<dyn Runtime> = Arc::new(graspd_smol::SmolRuntime);
    run(runtime, &|f| smol::block_on(f), true);
}

/// A relay that drops the connection after a complete history: the follower reconnects after
/// the initial backoff and reads only the recent history again (`since`); nothing is passed on
/// twice.
#[test]
fn reconnects_and_rereads_only_recent_history() {
    let runtime: Arc<dyn Runtime> = Arc::new(graspd_smol::SmolRuntime);
    let owner = Keys::generate();
    let coordinate = format!("30617:{}:demo", owner.public_key().to_hex());
    let stored: Vec<Event> = (0..5)
        .map(|i| {
            signed(
                &Keys::generate(),
                1621,
                1_000 + i,
                vec![vec!["a".into(), coordinate.clone()]],
            )
        })
        .collect();
    let relay = Arc::new(FakeRelay {
        stored: stored.clone(),
        live: Vec::new(),
        reqs: Mutex::new(Vec::new()),
        drop_once_after_history: true.into(),
    });
    smol::block_on(async {
        let addr = serve_relay(Arc::clone(&runtime), Arc::clone(&relay), None).await;
        let announcement = signed(
            &owner,
            30617,
            1,
            vec![
                vec!["d".into(), "demo".into()],
                vec!["relays".into(), format!("ws://{addr}")],
            ],
        );
        let Ok(Some(GitEvent::Announcement(announcement))) = events::parse(&announcement) else {
            panic!("not an announcement")
        };
        let follower = RelayFollower::new(
            FollowConfig {
                allow_private_relays: true,
                backoff_initial: Duration::from_millis(50),
                ..FollowConfig::default()
            },
            OwnService::new("http://grasp.test").unwrap(),
        );
        let handle = FollowerHandle::new(Arc::clone(&runtime), follower, ClientLimits::default());
        let learned: Arc<Mutex<Vec<EventId>>> = Arc::default();
        let sink = Arc::clone(&learned);
        spawn_follower_async(Arc::clone(&runtime), handle.clone(), move |e, _relay| {
            let sink = Arc::clone(&sink);
            Box::pin(async move {
                sink.lock().unwrap().push(e.id);
                true
            })
        });
        handle.announcement(announcement);
        let deadline = Instant::now() + Duration::from_secs(20);
        while handle.metrics().duplicates.load(Ordering::Relaxed) < 5 {
            assert!(Instant::now() < deadline, "no second history read in 20 s");
            runtime
                .sleep_until(Instant::now() + Duration::from_millis(20))
                .await;
        }
        assert_eq!(learned.lock().unwrap().len(), 5);
        assert_eq!(handle.stats().reconnects, 1);
        assert_eq!(handle.metrics().reconnects.load(Ordering::Relaxed), 1);
        assert_eq!(handle.relay_statuses()[0].consecutive_failures, 0);
        assert_eq!(handle.metrics().per_relay()[0].1.connects, 2);
    });
    let reqs = relay.reqs.lock().unwrap();
    let histories: Vec<&String> = reqs.iter().filter(|r| r.contains("-h\"")).collect();
    assert!(!histories[0].contains("since"), "{histories:?}");
    assert!(histories[1].contains("since"), "{histories:?}");
}

/// Throughput of one relay connection on loopback (history of 20 000 events, no rate bound).
/// `cargo test --release -p graspd-host --test follow -- --ignored --nocapture`
#[test]
#[ignore = "measurement"]
fn measure_history_throughput() {
    let runtime: Arc<dyn Runtime> = Arc::new(graspd_smol::SmolRuntime);
    let owner = Keys::generate();
    let coordinate = format!("30617:{}:demo", owner.public_key().to_hex());
    let author = Keys::generate();
    let stored: Vec<Event> = (0..20_000)
        .map(|i| {
            signed(
                &author,
                1621,
                1_000 + i,
                vec![vec!["a".into(), coordinate.clone()]],
            )
        })
        .collect();
    let relay = Arc::new(FakeRelay {
        stored,
        live: Vec::new(),
        reqs: Mutex::new(Vec::new()),
        drop_once_after_history: false.into(),
    });
    smol::block_on(async {
        let addr = serve_relay(Arc::clone(&runtime), Arc::clone(&relay), None).await;
        let announcement = signed(
            &owner,
            30617,
            1,
            vec![
                vec!["d".into(), "demo".into()],
                vec!["relays".into(), format!("ws://{addr}")],
            ],
        );
        let Ok(Some(GitEvent::Announcement(announcement))) = events::parse(&announcement) else {
            panic!("not an announcement")
        };
        let follower = RelayFollower::new(
            FollowConfig {
                allow_private_relays: true,
                ..FollowConfig::default()
            },
            OwnService::new("http://grasp.test").unwrap(),
        );
        let handle = FollowerHandle::new(
            Arc::clone(&runtime),
            follower,
            ClientLimits {
                events_per_second: 1_000_000,
                ..ClientLimits::default()
            },
        );
        spawn_follower(Arc::clone(&runtime), handle.clone(), |_, _| {});
        let start = Instant::now();
        handle.announcement(announcement);
        while handle.metrics().events_learned.load(Ordering::Relaxed) < 20_000 {
            assert!(start.elapsed() < Duration::from_secs(300));
            runtime
                .sleep_until(Instant::now() + Duration::from_millis(5))
                .await;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "20000 events in {secs:.2} s: {:.0} events/s",
            20_000.0 / secs
        );
    });
}

/// A relay named by a host name that resolves to loopback (`localhost`): without
/// `--allow-private-relays` it is never connected to; with it, the name is resolved, every
/// address checked, and one of those addresses connected to and followed.
#[test]
fn a_relay_name_resolving_to_loopback_is_followed_only_when_private_relays_are_allowed() {
    let runtime: Arc<dyn Runtime> = Arc::new(graspd_smol::SmolRuntime);
    let owner = Keys::generate();
    let coordinate = format!("30617:{}:demo", owner.public_key().to_hex());
    let issue = signed(
        &Keys::generate(),
        1621,
        1_000,
        vec![vec!["a".into(), coordinate]],
    );
    let relay = Arc::new(FakeRelay {
        stored: vec![issue.clone()],
        live: Vec::new(),
        reqs: Mutex::new(Vec::new()),
        drop_once_after_history: false.into(),
    });
    smol::block_on(async {
        let addr = serve_relay(Arc::clone(&runtime), Arc::clone(&relay), None).await;
        let by_name = format!("ws://localhost:{}", addr.port());
        let announcement = signed(
            &owner,
            30617,
            1,
            vec![
                vec!["d".into(), "demo".into()],
                vec!["relays".into(), "ws://grasp.test".into(), by_name],
            ],
        );
        let GitEvent::Announcement(announcement) = events::parse(&announcement).unwrap().unwrap()
        else {
            panic!("not an announcement")
        };
        for allow_private_relays in [false, true] {
            let follower = RelayFollower::new(
                FollowConfig {
                    allow_private_relays,
                    ..FollowConfig::default()
                },
                OwnService::new("http://grasp.test").unwrap(),
            );
            let handle =
                FollowerHandle::new(Arc::clone(&runtime), follower, ClientLimits::default());
            let received: Arc<Mutex<Vec<EventId>>> = Arc::default();
            let sink = Arc::clone(&received);
            spawn_follower(
                Arc::clone(&runtime),
                handle.clone(),
                move |event, _relay| sink.lock().unwrap().push(event.id),
            );
            handle.announcement(announcement.clone());
            // Our own origin is ignored either way; localhost only without the flag.
            let ignored = handle.stats().relay_urls_ignored;
            if !allow_private_relays {
                assert_eq!(ignored, 2, "localhost is refused");
                assert_eq!(handle.stats().relays_connected, 0);
                assert!(relay.reqs.lock().unwrap().is_empty(), "never connected");
                continue;
            }
            assert_eq!(ignored, 1);
            let deadline = Instant::now() + Duration::from_secs(20);
            while received.lock().unwrap().is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "the relay was not followed in 20 s"
                );
                runtime
                    .sleep_until(Instant::now() + Duration::from_millis(20))
                    .await;
            }
            assert_eq!(*received.lock().unwrap(), [issue.id]);
        }
    });
}
