//! Stand-in engines for testing the simulator itself: each must be caught.

use std::collections::BTreeMap;
use std::time::Duration;

use graspd_core::{EventId, Oid, RepoKey, Time};

use crate::params::Params;
use crate::scenario::Via;
use crate::sut::{
    Command, EngineFactory, EngineUnderTest, Input, Output, RefEdit, Stats, Ticket, Verdict,
};

/// Acknowledges every event and then does nothing: never fetches, never releases, never
/// expires. The liveness check must catch it.
#[derive(Default)]
pub struct Sloth {
    waiting: BTreeMap<EventId, ()>,
}

impl EngineUnderTest for Sloth {
    fn restore_accepted(&mut self, _event: &nostr::event::Event) {}
    fn restore_waiting(
        &mut self,
        _now: Time,
        event: &nostr::event::Event,
        _via: Via,
        _remaining: Duration,
    ) {
        self.waiting.insert(event.id, ());
    }
    fn handle_event(&mut self, _now: Time, event: &nostr::event::Event, _via: Via) -> Verdict {
        if self.waiting.insert(event.id, ()).is_some() {
            Verdict::Duplicate
        } else {
            Verdict::Waiting(Ticket(0))
        }
    }
    fn decide_push(
        &mut self,
        _repo: &RepoKey,
        _current: &BTreeMap<String, Oid>,
        updates: &[RefEdit],
    ) -> Vec<Result<(), String>> {
        updates
            .iter()
            .map(|_| Err("sloth refuses".into()))
            .collect()
    }
    fn handle_input(&mut self, _now: Time, _input: Input) {}
    fn handle_timeout(&mut self, _now: Time) {}
    fn poll_timeout(&mut self) -> Option<(Time, String)> {
        None
    }
    fn poll_command(&mut self) -> Option<Command> {
        None
    }
    fn poll_output(&mut self) -> Option<Output> {
        None
    }
    fn stats(&self) -> Stats {
        Stats {
            waiting: Some(self.waiting.len()),
            domains: Some(0),
        }
    }
}

pub struct SlothFactory;

impl EngineFactory for SlothFactory {
    fn build(&self, _params: &Params) -> Box<dyn EngineUnderTest> {
        Box::new(Sloth::default())
    }
    fn name(&self) -> &'static str {
        "sloth"
    }
}
