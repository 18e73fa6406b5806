//! Reloading the operator's curation lists while the server runs: on SIGHUP, and when the
//! `--config` file changes (checked every `--config-poll-secs` on the runtime's timer; no
//! file-system notifications). A new version goes to the engine as an input
//! ([`Node::set_policy`]); one that does not parse is logged and counted, and the lists in
//! force stay.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::Node;
use crate::policy_file::{Fingerprint, PolicySource};
use crate::runtime::{unblock, Runtime};

/// What started a reload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Hangup,
    Poll,
}

impl Node {
    /// Watches SIGHUP and, every `poll` (if any), the policy file of `source`, whose version
    /// in force is `current`. Runs until the process ends.
    pub fn spawn_policy_reloader(
        self: &Arc<Self>,
        source: PolicySource,
        current: Option<Fingerprint>,
        poll: Option<Duration>,
    ) {
        // One pending SIGHUP is enough: a reload reads the file as it is then.
        let (hangup, hangups) = async_channel::bounded(1);
        watch_hangups(&*self.runtime, hangup);
        let node = Arc::clone(self);
        self.runtime.spawn(Box::pin(async move {
            node.reload_policy(Arc::new(source), current, poll, hangups)
                .await
        }));
    }

    async fn reload_policy(
        self: Arc<Self>,
        source: Arc<PolicySource>,
        mut current: Option<Fingerprint>,
        poll: Option<Duration>,
        hangups: async_channel::Receiver<()>,
    ) {
        loop {
            let trigger = next_trigger(&*self.runtime, poll, &hangups).await;
            let reader = Arc::clone(&source);
            let Ok(Some(version)) = unblock(&*self.runtime, move || reader.read()).await else {
                continue;
            };
            // A poll acts only on a new version (so a bad file is reported once); SIGHUP
            // always reloads.
            if trigger == Trigger::Poll && current.as_ref() == Some(&version.fingerprint) {
                continue;
            }
            current = Some(version.fingerprint.clone());
            let why = match trigger {
                Trigger::Hangup => "SIGHUP",
                Trigger::Poll => "file changed",
            };
            match source.policy(Some(&version)) {
                Ok(policy) => {
                    let sizes = policy.sizes();
                    self.set_policy(policy);
                    self.metrics.policy_reload(true);
                    info!(
                        trigger = why,
                        deny_authors = sizes.deny_authors,
                        deny_repos = sizes.deny_repos,
                        allow_repos = sizes.allow_repos,
                        archive_repos = sizes.archive_repos,
                        "policy reloaded"
                    );
                }
                Err(error) => {
                    self.metrics.policy_reload(false);
                    warn!(trigger = why, %error, "policy file refused; the lists in force stay");
                }
            }
        }
    }
}

/// Completes at the next SIGHUP, or after `poll`.
async fn next_trigger(
    runtime: &dyn Runtime,
    poll: Option<Duration>,
    hangups: &async_channel::Receiver<()>,
) -> Trigger {
    let hangup = async {
        match hangups.recv().await {
            Ok(()) => Trigger::Hangup,
            // No SIGHUP watch (it could not be set up): polling alone.
            Err(_) => std::future::pending().await,
        }
    };
    match poll {
        Some(every) => {
            let tick = async {
                runtime.sleep(every).await;
                Trigger::Poll
            };
            futures_lite::future::or(hangup, tick).await
        }
        None => hangup.await,
    }
}

/// Sends on `hangup` at each SIGHUP (a self-pipe with a reactor of its own, so it works under
/// any runtime).
#[cfg(unix)]
fn watch_hangups(runtime: &dyn Runtime, hangup: async_channel::Sender<()>) {
    use async_signal::{Signal, Signals};
    use futures_lite::StreamExt;
    match Signals::new([Signal::Hup]) {
        Ok(mut signals) => runtime.spawn(Box::pin(async move {
            while signals.next().await.is_some() {
                let _ = hangup.try_send(());
            }
        })),
        Err(error) => {
            warn!(%error, "cannot watch SIGHUP; the policy file is re-read only when it changes")
        }
    }
}

#[cfg(not(unix))]
fn watch_hangups(_runtime: &dyn Runtime, _hangup: async_channel::Sender<()>) {}
