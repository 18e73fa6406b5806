//! The connect-time address check git fetches and the relay follower's connections make
//! (`resolve_checked`), with real name resolution, on tokio and on smol: a name that resolves
//! to loopback is refused unless private addresses are allowed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use graspd_host::resolve::{resolve_checked, ResolveError};
use graspd_host::Runtime;

type BlockOn<'a> = dyn Fn(Pin<Box<dyn Future<Output = ()> + '_>>) + 'a;

fn on_each_runtime(test: impl Fn(Arc<dyn Runtime>, &BlockOn<'_>)) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tokio_runtime: Arc<dyn Runtime> =
        Arc::new(graspd_tokio::TokioRuntime::new(rt.handle().clone()));
    test(tokio_runtime, &|f| rt.block_on(f));
    let smol_runtime: Arc<dyn Runtime> = Arc::new(graspd_smol::SmolRuntime);
    test(smol_runtime, &|f| smol::block_on(f));
}

#[test]
fn a_name_resolving_to_loopback_is_refused_unless_private_addresses_are_allowed() {
    on_each_runtime(|runtime, block_on| {
        block_on(Box::pin(async {
            let refused = resolve_checked(&*runtime, "localhost", 7777, false).await;
            let Err(error @ ResolveError::NotPublic { .. }) = refused else {
                panic!("localhost was not refused: {refused:?}")
            };
            let text = error.to_string();
            assert!(text.starts_with("localhost resolves to "), "{text}");
            assert!(text.contains("loopback"), "{text}");

            let allowed = resolve_checked(&*runtime, "localhost", 7777, true)
                .await
                .unwrap();
            assert!(!allowed.is_empty());
            for addr in allowed {
                assert!(addr.ip().is_loopback() && addr.port() == 7777, "{addr}");
            }
        }));
    });
}

#[test]
fn literals_are_checked_without_a_lookup() {
    on_each_runtime(|runtime, block_on| {
        block_on(Box::pin(async {
            for literal in [
                "127.0.0.1",
                "[::1]",
                "10.0.0.1",
                "64:ff9b::a00:1",
                "240.0.0.1",
            ] {
                let refused = resolve_checked(&*runtime, literal, 80, false).await;
                assert!(
                    matches!(refused, Err(ResolveError::NotPublic { .. })),
                    "{literal}: {refused:?}"
                );
            }
            let public = resolve_checked(&*runtime, "192.0.43.10", 443, false).await;
            assert_eq!(public, Ok(vec!["192.0.43.10:443".parse().unwrap()]));
            let bracketed = resolve_checked(&*runtime, "[::1]", 80, true).await;
            assert_eq!(bracketed, Ok(vec!["[::1]:80".parse().unwrap()]));
        }));
    });
}
