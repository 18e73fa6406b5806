//! Follow-to-release latency (GRASP-02): server B follows server A's relay. A repository is
//! announced and pushed on A only; B learns the announcement and the state from A's relay,
//! fetches the data from A and serves the state ([`crate::sync::measure`] with
//! [`Learns::ByFollowingA`](crate::sync::Learns)).

use graspd_tests::{Flavor, Server, ServerOptions};

/// B, following `a` from start-up, with its defaults otherwise (no shortened sync delays).
pub fn follower_of(flavor: Flavor, a: &Server) -> Server {
    Server::start_with(flavor, follower_options(a))
}

/// The options of a server following `a`.
pub fn follower_options(a: &Server) -> ServerOptions {
    ServerOptions::default()
        .arg("--bootstrap-relay")
        .arg(a.ws_url())
        .arg("--allow-private-relays")
}
