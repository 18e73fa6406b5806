//! Configuration that cannot be honoured as given. Found once at start-up and logged at
//! `warn`, each line naming the flag and the fix, so an operator never gets a server that
//! silently ignores part of its configuration.

use graspd_core::acceptance::OwnService;
use graspd_core::follow::relay_url::{self, BadRelayUrl};
use nostr::types::url::{Host, Url};

use crate::Config;

/// What in `config` cannot be honoured, one human sentence each (with the fix).
pub fn warnings(config: &Config, own: &OwnService) -> Vec<String> {
    let mut out = Vec::new();
    public_url_warnings(config, &mut out);
    bootstrap_relay_warnings(config, own, &mut out);
    archive_warnings(config, &mut out);
    let engine = &config.engine;
    for (flag, value) in [
        ("--max-fetches-per-domain", engine.max_fetches_per_domain),
        ("--max-fetches-per-minute", engine.max_fetches_per_minute),
    ] {
        // The throttle needs room for one fetch, or nothing would ever be fetched.
        if value == 0 {
            out.push(format!(
                "{flag} 0 is taken as 1: with no fetches at all, events published elsewhere \
                 would never be released here; give a positive value"
            ));
        }
    }
    if engine.purgatory_expiry_secs == 0 {
        out.push(
            "--purgatory-expiry-secs 0: every announcement, state and PR expires as it arrives, \
             before any push can bring its data; give it a positive value (default 1800)"
                .to_owned(),
        );
    }
    out
}

fn public_url_warnings(config: &Config, out: &mut Vec<String>) {
    let public = config.public_url();
    let flag = if config.public_url.is_some() {
        "--public-url"
    } else {
        "--public-url (not set, so http://<--bind>)"
    };
    let Ok(url) = Url::parse(&public) else {
        return; // Not a URL at all: start-up fails with that error.
    };
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        out.push(format!(
            "{flag} {public} has a path, query or fragment, which graspd ignores: it serves \
             git at /<npub>/<identifier>.git and the relay at / of its origin, so announcements \
             must list {}://{}/<npub>/<identifier>.git; set --public-url to the bare origin",
            url.scheme(),
            authority(&url)
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        out.push(format!(
            "{flag} carries a user name or password, which announcements cannot list; set \
             --public-url to the origin users reach this server at"
        ));
    }
    let unspecified = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_unspecified(),
        Some(Host::Ipv6(ip)) => ip.is_unspecified(),
        _ => false,
    };
    if unspecified {
        out.push(format!(
            "{flag} {public} names no host a client can reach, so no announcement can list \
             this server; set --public-url to the URL users reach it at (e.g. \
             https://git.example.com)"
        ));
    }
}

/// `--archive-repo <npub>/<identifier>` entries the lists above the archive list refuse
/// (a deny, or an allow list that does not name them): they would never be mirrored.
fn archive_warnings(config: &Config, out: &mut Vec<String>) {
    use graspd_core::policy::{PolicyRefusal, RepoEntry, RepoMode};
    use nostr::nips::nip19::ToBech32;
    let policy = config.policy();
    for entry in &config.archive_repos {
        let RepoEntry::Repo(owner, identifier) = entry else {
            continue;
        };
        let (wins, fix) = match policy.repo_mode(owner, identifier) {
            Ok(RepoMode::Archive | RepoMode::Hosted) => continue,
            Err(PolicyRefusal::Author) => ("--deny-author", "take its owner off --deny-author"),
            Err(PolicyRefusal::Repo) => ("--deny-repo", "take it off --deny-repo"),
            Err(PolicyRefusal::NotAllowed) => ("--allow-repo", "add it to --allow-repo too"),
        };
        let npub = owner.to_bech32().unwrap_or_default();
        out.push(format!(
            "--archive-repo {npub}/{identifier} will never be mirrored: {wins} wins over the \
             archive list; {fix}"
        ));
    }
}

fn bootstrap_relay_warnings(config: &Config, own: &OwnService, out: &mut Vec<String>) {
    let follow = config.follow.config();
    for raw in &follow.bootstrap_relays {
        // The follower's own test (`RelayFollower::new` drops what fails it without a word).
        match relay_url::followable(raw, follow.allow_private_relays, own) {
            Ok(_) => {}
            Err(BadRelayUrl::Own) => out.push(format!(
                "--bootstrap-relay {raw} is this server's own relay (--public-url), which is \
                 never followed; remove it, or name another server's relay"
            )),
            Err(BadRelayUrl::Private) => out.push(format!(
                "--bootstrap-relay {raw} is on a loopback or private address and will not be \
                 followed; pass --allow-private-relays (GRASPD_ALLOW_PRIVATE_RELAYS=true) to \
                 follow it"
            )),
            Err(why) => out.push(format!(
                "--bootstrap-relay {raw} is never followed ({why}); give a ws:// or wss:// \
                 relay URL"
            )),
        }
    }
    if follow.bootstrap_relays.len() > follow.max_relays {
        out.push(format!(
            "{} --bootstrap-relay values given, but at most {} relays are followed; the rest \
             are ignored",
            follow.bootstrap_relays.len(),
            follow.max_relays
        ));
    }
}

/// Logs each of [`warnings`] at `warn`, once, at start-up.
pub fn log_warnings(config: &Config, own: &OwnService) {
    for warning in warnings(config, own) {
        tracing::warn!("configuration: {warning}");
    }
}

fn authority(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn warnings_for(args: &[&str]) -> Vec<String> {
        let config = Config::parse_from(std::iter::once("graspd").chain(args.iter().copied()));
        let own = OwnService::new(&config.public_url()).unwrap();
        warnings(&config, &own)
    }

    #[test]
    fn a_sound_configuration_has_no_warnings() {
        assert!(warnings_for(&[]).is_empty());
        assert!(warnings_for(&[
            "--public-url",
            "https://git.example.com",
            "--bootstrap-relay",
            "wss://relay.example.com",
        ])
        .is_empty());
        assert!(warnings_for(&[
            "--bootstrap-relay",
            "ws://127.0.0.1:7001",
            "--allow-private-relays"
        ])
        .is_empty());
    }

    #[test]
    fn each_unhonourable_setting_names_its_flag_and_fix() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["--bootstrap-relay", "ws://127.0.0.1:7001"],
                &[
                    "--bootstrap-relay ws://127.0.0.1:7001",
                    "--allow-private-relays",
                ],
            ),
            (
                &["--bootstrap-relay", "ws://127.0.0.1:7334"],
                &["own relay", "remove it"],
            ),
            (
                &["--bootstrap-relay", "https://relay.example.com"],
                &["not a ws:// or wss:// URL"],
            ),
            (
                &["--public-url", "https://git.example.com/grasp"],
                &[
                    "--public-url",
                    "https://git.example.com/<npub>/<identifier>.git",
                ],
            ),
            (
                &["--bind", "0.0.0.0:7334"],
                &["--public-url", "no host a client can reach"],
            ),
            (
                &["--max-fetches-per-domain", "0"],
                &["--max-fetches-per-domain 0 is taken as 1"],
            ),
            (
                &["--max-fetches-per-minute", "0"],
                &["--max-fetches-per-minute 0 is taken as 1"],
            ),
            (
                &["--bootstrap-relay", "wss://u:p@relay.example.com"],
                &["never followed (carries a user name or password)"],
            ),
            (
                &["--purgatory-expiry-secs", "0"],
                &["--purgatory-expiry-secs 0"],
            ),
        ];
        for (args, wanted) in cases {
            let got = warnings_for(args).join("\n");
            for w in *wanted {
                assert!(got.contains(w), "{args:?}: {got:?} lacks {w:?}");
            }
        }
    }

    #[test]
    fn an_archive_entry_a_deny_or_an_allow_list_refuses_is_reported() {
        const NPUB: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
        let entry = format!("{NPUB}/linux");
        let archive = ["--archive-repo", entry.as_str()];
        assert!(warnings_for(&archive).is_empty());
        let cases: [(&[&str], &str); 3] = [
            (&["--deny-author", NPUB], "--deny-author wins"),
            (&["--deny-repo", "linux"], "--deny-repo wins"),
            (&["--allow-repo", "other"], "add it to --allow-repo too"),
        ];
        for (above, wanted) in cases {
            let args: Vec<&str> = archive.iter().chain(above).copied().collect();
            let got = warnings_for(&args).join("\n");
            assert!(
                got.contains(&format!("--archive-repo {entry} will never be mirrored")),
                "{got}"
            );
            assert!(got.contains(wanted), "{args:?}: {got:?} lacks {wanted:?}");
        }
    }
}
