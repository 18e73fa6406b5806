//! Push types until `push.rs` (rules) provides them.

use crate::events::RefName;
use crate::ids::Oid;

/// One receive-pack command `<old> <new> <ref>`; zero oids mean create/delete.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RefUpdate {
    pub old: Oid,
    pub new: Oid,
    pub name: RefName,
}

/// Whether one ref update of a push may proceed, with the reason shown to the git user.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RefDecision {
    Accept,
    Reject(String),
}
