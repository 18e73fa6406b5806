//! The HTTP origin and git bridge end to end, with the real git binary on loopback, on both
//! runtimes (each test body runs on tokio, then on smol).

mod support;

use std::io::Write;

use support::*;

#[test]
fn push_then_clone_partial_clone_and_ls_remote_v2() {
    on_each_runtime(|h| {
        let repo = h.create_repo("demo");
        let url = h.url(&repo);
        let work = work_repo(&h.scratch("work"), 3);
        git_ok(Some(&work), &["tag", "-a", "v1", "-m", "release 1"]);
        let pushed = git_run(Some(&work), &["push", &url, "main", "v1"]);
        assert!(
            pushed.status.success(),
            "{:?}: {}",
            h.flavor,
            String::from_utf8_lossy(&pushed.stderr)
        );
        let tip = head_oid(&work, "main");

        let clone = h.scratch("clone");
        git_ok(None, &["clone", "--quiet", &url, clone.to_str().unwrap()]);
        assert_eq!(head_oid(&clone, "HEAD"), tip, "{:?}", h.flavor);

        let partial = h.scratch("partial");
        git_ok(
            None,
            &[
                "clone",
                "--quiet",
                "--filter=blob:none",
                &url,
                partial.to_str().unwrap(),
            ],
        );
        assert_eq!(
            git_ok(
                Some(&partial),
                &["config", "remote.origin.partialclonefilter"]
            )
            .trim(),
            "blob:none"
        );
        assert_eq!(head_oid(&partial, "HEAD"), tip);

        let v0 = h.scratch("v0");
        git_ok(
            None,
            &[
                "-c",
                "protocol.version=0",
                "clone",
                "--quiet",
                "--filter=blob:none",
                &url,
                v0.to_str().unwrap(),
            ],
        );
        assert_eq!(head_oid(&v0, "HEAD"), tip);

        let listed = git_ok(
            None,
            &["-c", "protocol.version=2", "ls-remote", "--symref", &url],
        );
        assert!(
            listed.contains(&format!("{tip}\trefs/heads/main")),
            "{listed}"
        );
        assert!(listed.contains("ref: refs/heads/main\tHEAD"), "{listed}");
        assert!(listed.contains("refs/tags/v1"), "{listed}");

        let pushed = h.policy.pushed.lock().unwrap().clone();
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].0, repo);
        assert_eq!(pushed[0].1.len(), 2, "main and v1 landed");
        assert!(pushed[0]
            .1
            .iter()
            .any(|u| u.name == "refs/heads/main" && u.new == tip));
    });
}

#[test]
fn upload_pack_advertises_grasp_capabilities() {
    on_each_runtime(|h| {
        let repo = h.create_repo("caps");
        let work = work_repo(&h.scratch("work"), 1);
        git_ok(Some(&work), &["push", "--quiet", &h.url(&repo), "main"]);
        let path = format!(
            "/{}/caps.git/info/refs?service=git-upload-pack",
            h.url(&repo).split('/').nth(3).unwrap()
        );
        let (head, body) = http(
            h.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(status_of(&head), 200);
        assert_eq!(
            header(&head, "content-type"),
            Some("application/x-git-upload-pack-advertisement")
        );
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.starts_with("001e# service=git-upload-pack\n0000"),
            "{text}"
        );
        for cap in [
            "allow-tip-sha1-in-want",
            "allow-reachable-sha1-in-want",
            "filter",
            "symref=HEAD:refs/heads/main",
        ] {
            assert!(text.contains(cap), "{cap} missing from {text}");
        }
        // Protocol v2: no preamble, `fetch=... filter` capability.
        let (_, body) = http(
            h.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nGit-Protocol: version=2\r\nConnection: close\r\n\r\n"),
            b"",
        );
        let text = String::from_utf8_lossy(&body);
        assert!(text.starts_with("000eversion 2\n"), "{text}");
        assert!(text.contains("filter"), "{text}");
        // A gzip-encoded protocol v2 request (ls-refs) is decoded and answered.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"0014command=ls-refs\n00010000").unwrap();
        let gz = gz.finish().unwrap();
        let tip = head_oid(&work, "main");
        let rpc = path.replace("info/refs?service=git-upload-pack", "git-upload-pack");
        let (head, body) = http(
            h.addr,
            &format!(
                "POST {rpc} HTTP/1.1\r\nHost: x\r\nGit-Protocol: version=2\r\nContent-Encoding: gzip\r\n\
                 Content-Type: application/x-git-upload-pack-request\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                gz.len()
            ),
            &gz,
        );
        assert_eq!(status_of(&head), 200, "{head}");
        assert_eq!(
            header(&head, "content-type"),
            Some("application/x-git-upload-pack-result")
        );
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(&format!("{tip} refs/heads/main")), "{text}");
        // HEAD answers the same headers without running git.
        let (head, body) = http(
            h.addr,
            &format!("HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(status_of(&head), 200);
        assert!(body.is_empty());
    });
}

#[test]
fn rejected_push_shows_remote_rejected_with_the_reason() {
    on_each_runtime(|h| {
        let repo = h.create_repo("guarded");
        let url = h.url(&repo);
        let work = work_repo(&h.scratch("work"), 2);
        let out = git_run(
            Some(&work),
            &[
                "push",
                &url,
                "main:refs/heads/reject-me",
                "main:refs/heads/fine",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!(
                "! [remote rejected] main -> reject-me ({REJECT_REASON})"
            )),
            "{:?}: {stderr}",
            h.flavor
        );
        assert!(
            stderr.contains(
                "! [remote rejected] main -> fine (another ref in this push was rejected)"
            ),
            "{stderr}"
        );
        assert!(!stderr.contains("bad band"), "{stderr}");
        let refs = h.block_on(h.git.inspect(&repo, &[])).unwrap().refs;
        assert!(refs.is_empty(), "nothing may land: {refs:?}");
        assert!(h.policy.pushed.lock().unwrap().is_empty());

        // Without side-band (an old client's request), the report is plain pkt-lines.
        let status = git_run(
            Some(&work),
            &[
                "-c",
                "push.negotiate=false",
                "push",
                "--porcelain",
                &url,
                "main:refs/heads/reject-2",
            ],
        );
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(
            stdout.contains("!\trefs/heads/main:refs/heads/reject-2\t[remote rejected]"),
            "{stdout}"
        );
    });
}

#[test]
fn cors_options_and_root_documents() {
    on_each_runtime(|h| {
        let (head, body) = http(
            h.addr,
            "OPTIONS /any/thing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status_of(&head), 204);
        assert!(body.is_empty());
        for (name, value) in [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "GET, POST, OPTIONS, HEAD"),
            (
                "access-control-allow-headers",
                "Content-Type, Git-Protocol, Content-Encoding, Authorization, Accept",
            ),
        ] {
            assert_eq!(header(&head, name), Some(value), "{head}");
        }
        let (head, body) =
            http(h.addr, "GET / HTTP/1.1\r\nHost: x\r\nAccept: application/nostr+json\r\nConnection: close\r\n\r\n", b"");
        assert_eq!(status_of(&head), 200);
        assert_eq!(
            header(&head, "content-type"),
            Some("application/nostr+json")
        );
        assert_eq!(header(&head, "access-control-allow-origin"), Some("*"));
        assert!(String::from_utf8_lossy(&body).contains("supported_nips"));
        let (head, body) = http(
            h.addr,
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(
            header(&head, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(String::from_utf8_lossy(&body).contains("graspd"));
        let (head, body) = http(
            h.addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status_of(&head), 200);
        assert_eq!(body, b"graspd_test_metric 1\n");
        let (head, _) = http(
            h.addr,
            "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status_of(&head), 404);
        assert_eq!(
            header(&head, "access-control-allow-origin"),
            Some("*"),
            "CORS on errors too"
        );
    });
}

#[test]
fn path_tricks_and_missing_repos_are_refused() {
    on_each_runtime(|h| {
        let repo = h.create_repo("real");
        let npub = h.url(&repo).split('/').nth(3).unwrap().to_owned();
        let cases = [
            (
                format!("/{npub}/..%2F.git/info/refs?service=git-upload-pack"),
                400,
            ),
            (
                format!("/{npub}/..%2F..%2Fetc.git/info/refs?service=git-upload-pack"),
                400,
            ),
            (
                format!("/{npub}/%2E%2E.git/info/refs?service=git-upload-pack"),
                400,
            ),
            (
                format!("/{npub}/a%5Cb.git/info/refs?service=git-upload-pack"),
                400,
            ),
            (
                format!("/{npub}/a%00b.git/info/refs?service=git-upload-pack"),
                400,
            ),
            (
                "/npub1bad/real.git/info/refs?service=git-upload-pack".to_owned(),
                400,
            ),
            // The repository page's path: a bad identifier is refused as on git's paths.
            (format!("/{npub}/..%2F.git"), 400),
            (
                format!("/{npub}/missing.git/info/refs?service=git-upload-pack"),
                404,
            ),
            (format!("/{npub}/real.git/info/refs"), 403),
            (format!("/{npub}/real.git/HEAD"), 404),
            (
                format!("/{npub}/../{npub}/real.git/info/refs?service=git-upload-pack"),
                404,
            ),
        ];
        for (path, expected) in cases {
            let (head, _) = http(
                h.addr,
                &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                b"",
            );
            assert_eq!(status_of(&head), expected, "{path}: {head}");
        }
        let (head, _) = http(h.addr, &format!("GET /{npub}/real.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), b"");
        assert_eq!(status_of(&head), 200);
        let clone = git_run(
            None,
            &[
                "clone",
                &format!("http://{}/{npub}/missing.git", h.addr),
                h.scratch("c").to_str().unwrap(),
            ],
        );
        assert!(!clone.status.success());
    });
}

#[test]
fn oversized_bodies_get_413() {
    on_each_runtime(|h| {
        let repo = h.create_repo("big");
        let npub = h.url(&repo).split('/').nth(3).unwrap().to_owned();
        let work = work_repo(&h.scratch("work"), 1);
        git_ok(Some(&work), &["push", "--quiet", &h.url(&repo), "main"]);
        // A fetch request git reads to its end (it answers nothing before `done`): the limit,
        // checked as the body streams to git, is what ends it.
        let endless_negotiation = |bytes: usize| {
            let line = |text: String| format!("{:04x}{text}", text.len() + 4).into_bytes();
            let mut body = line(format!("want {}\n", head_oid(&work, "main")));
            body.extend_from_slice(b"0000");
            let have = line(format!("have {}\n", "dead".repeat(10)));
            while body.len() < bytes {
                body.extend_from_slice(&have);
            }
            body
        };
        let big = endless_negotiation(MAX_BODY as usize + 1);
        // Declared length over the cap: refused before reading.
        let (head, body) = http(
            h.addr,
            &format!("POST /{npub}/big.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", big.len()),
            &big,
        );
        assert_eq!(status_of(&head), 413, "{head}");
        assert!(String::from_utf8_lossy(&body).contains("limit"));
        // Chunked: refused once the count passes the cap.
        let mut chunked = Vec::new();
        for chunk in big.chunks(64 * 1024) {
            write!(chunked, "{:x}\r\n", chunk.len()).unwrap();
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let (head, _) = http(
            h.addr,
            &format!("POST /{npub}/big.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"),
            &chunked,
        );
        assert_eq!(status_of(&head), 413, "{head}");
        // Gzip that inflates past the cap.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&endless_negotiation(8 * MAX_BODY as usize))
            .unwrap();
        let gz = gz.finish().unwrap();
        let (head, _) = http(
            h.addr,
            &format!("POST /{npub}/big.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", gz.len()),
            &gz,
        );
        assert_eq!(status_of(&head), 413, "{head}");
    });
}

#[test]
fn chunked_pushes_work() {
    on_each_runtime(|h| {
        // A push with a pack bigger than git's post buffer goes chunked.
        let repo = h.create_repo("chunky");
        let url = h.url(&repo);
        let work = work_repo(&h.scratch("work"), 1);
        let noise = noise(1_500_000);
        std::fs::write(work.join("noise.bin"), noise).unwrap();
        git_ok(Some(&work), &["add", "."]);
        git_ok(Some(&work), &["commit", "--quiet", "-m", "noise"]);
        git_ok(
            Some(&work),
            &[
                "-c",
                "http.postBuffer=65536",
                "push",
                "--quiet",
                &url,
                "main",
            ],
        );
        let clone = h.scratch("clone");
        git_ok(None, &["clone", "--quiet", &url, clone.to_str().unwrap()]);
        assert_eq!(head_oid(&clone, "HEAD"), head_oid(&work, "main"));
    });
}

#[test]
fn websocket_upgrade_reaches_the_relay() {
    on_each_runtime(|h| {
        h.block_on(async {
            use async_tungstenite::tungstenite::Message;
            use futures_util::StreamExt;
            let stream = async_net::TcpStream::connect(h.addr).await.unwrap();
            let (mut ws, response) =
                async_tungstenite::client_async(format!("ws://{}/", h.addr), stream)
                    .await
                    .unwrap();
            assert_eq!(response.status(), 101);
            ws.send(Message::text("[\"REQ\",\"x\",{}]")).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed, Message::text("[\"REQ\",\"x\",{}]"));
        });
    });
}

#[test]
fn oversized_push_gets_413_and_lands_nothing() {
    on_each_runtime(|h| {
        let repo = h.create_repo("huge");
        let work = work_repo(&h.scratch("work"), 1);
        std::fs::write(work.join("noise.bin"), noise(3 * MAX_BODY as usize)).unwrap();
        git_ok(Some(&work), &["add", "."]);
        git_ok(Some(&work), &["commit", "--quiet", "-m", "too big"]);
        let out = git_run(Some(&work), &["push", &h.url(&repo), "main"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("413"), "{:?}: {stderr}", h.flavor);
        assert!(h
            .block_on(h.git.inspect(&repo, &[]))
            .unwrap()
            .refs
            .is_empty());
        assert!(h.policy.pushed.lock().unwrap().is_empty());
    });
}

#[test]
fn server_stops_when_shutdown_completes() {
    on_each_runtime(|h| {
        let site = graspd_host::http::Site {
            git: h.git.clone(),
            handlers: graspd_host::http::Handlers {
                relay: std::sync::Arc::new(EchoRelay),
                push: h.policy.clone(),
                metrics: std::sync::Arc::new(String::new),
            },
            body: graspd_host::http::body::BodyLimits {
                max_bytes: MAX_BODY,
                max_upload_request_bytes: MAX_BODY,
                ..Default::default()
            },
            public_url: String::new(),
            clients: Default::default(),
            grasp06: false,
        };
        let runtime = h.git.runtime().clone();
        h.block_on(async move {
            let server =
                graspd_host::http::Server::bind(runtime, "127.0.0.1:0".parse().unwrap(), site)
                    .await
                    .unwrap();
            let addr = server.local_addr().unwrap();
            server.run(Box::pin(std::future::ready(()))).await;
            // Binding the same address again proves the listener is gone (a connect probe
            // can flake: on loopback, connect may pick the same ephemeral port and
            // self-connect).
            assert!(
                std::net::TcpListener::bind(addr).is_ok(),
                "listener still open after shutdown"
            );
        });
    });
}

#[test]
fn concurrent_clones_and_pushes() {
    on_each_runtime(|h| {
        let repo = h.create_repo("busy");
        let url = h.url(&repo);
        let work = work_repo(&h.scratch("work"), 3);
        git_ok(Some(&work), &["push", "--quiet", &url, "main"]);
        let tip = head_oid(&work, "main");
        std::thread::scope(|scope| {
            let clones: Vec<_> = (0..8)
                .map(|i| {
                    let (url, dir) = (url.clone(), h.scratch(&format!("clone{i}")));
                    scope.spawn(move || {
                        git_ok(None, &["clone", "--quiet", &url, dir.to_str().unwrap()]);
                        head_oid(&dir, "HEAD")
                    })
                })
                .collect();
            let pushes: Vec<_> = (0..4)
                .map(|i| {
                    let (url, work) = (url.clone(), work.clone());
                    scope.spawn(move || {
                        git_ok(
                            Some(&work),
                            &["push", "--quiet", &url, &format!("main:refs/heads/b{i}")],
                        );
                    })
                })
                .collect();
            for clone in clones {
                assert_eq!(clone.join().unwrap(), tip);
            }
            for push in pushes {
                push.join().unwrap();
            }
        });
        let refs = h.block_on(h.git.inspect(&repo, &[])).unwrap().refs;
        assert_eq!(refs.len(), 5, "{:?}: {refs:?}", h.flavor);
        assert_eq!(h.policy.pushed.lock().unwrap().len(), 5);
    });
}
