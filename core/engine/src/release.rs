//! What releasing a satisfied event does to the repositories on this server: which repos it is
//! authoritative for, which objects to copy into each, which refs to create, move or delete
//! (compare-and-swap, applied by the host as one transaction per repo), and HEAD.
//!
//! One pure planner for both ways git data arrives (a push, or a fetch from another server):
//! the host executes the plan, then reports success, and only then is the event served.

use std::collections::BTreeMap;

use crate::events::{GitEvent, PullRequest, RefName, RepoState, KIND_ANNOUNCEMENT};
use crate::ids::{EventId, Oid, RepoKey};
use crate::maintainers::MaintainerSet;
use crate::replaceable::supersedes;
use crate::satisfy;

/// One compare-and-swap ref change: `expected` is the value the ref must still have (`None`:
/// must not exist), `new` the value to set (`None`: delete).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RefEdit {
    pub name: RefName,
    pub expected: Option<Oid>,
    pub new: Option<Oid>,
}

fn is_branch_or_tag(name: &str) -> bool {
    name.starts_with("refs/heads/") || name.starts_with("refs/tags/")
}

/// The edits that make a repository's branches and tags exactly the state's: creations,
/// updates and deletions, sorted by ref name. Other namespaces (`refs/nostr/*`) are never
/// touched. Meant to be applied as one transaction, so no branch is ever missing in between.
#[must_use]
pub fn align_refs(current: &BTreeMap<RefName, Oid>, state: &RepoState) -> Vec<RefEdit> {
    let mut edits = Vec::new();
    for (name, old) in current.iter().filter(|(n, _)| is_branch_or_tag(n)) {
        if !state.refs.contains_key(name) {
            edits.push(RefEdit {
                name: name.clone(),
                expected: Some(*old),
                new: None,
            });
        }
    }
    for (name, new) in &state.refs {
        let old = current.get(name).copied();
        if old != Some(*new) {
            edits.push(RefEdit {
                name: name.clone(),
                expected: old,
                new: Some(*new),
            });
        }
    }
    edits.sort_by(|a, b| a.name.cmp(&b.name));
    edits
}

/// Whether a waiting announcement may be released on its own: its repository already holds
/// data (at least one branch or tag). An empty repository never releases it.
pub fn announcement_ready(repo_refs: &BTreeMap<RefName, Oid>) -> bool {
    repo_refs.keys().any(|n| is_branch_or_tag(n))
}

/// The ref a PR or PR update's commit is kept under: `refs/nostr/<event id hex>`.
pub fn pr_ref_name(id: &EventId) -> RefName {
    format!("refs/nostr/{}", id.to_hex())
}

/// A repository on this server that might take the event.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub repo: RepoKey,
    /// Its current refs, all namespaces.
    pub refs: &'a BTreeMap<RefName, Oid>,
    /// `(created_at, id)` of the state applied there, if any.
    pub applied_state: Option<(u64, EventId)>,
    /// The recursive maintainer set of the repo's owner for this identifier.
    pub maintainers: &'a MaintainerSet,
    /// The owner's announcement if it still waits in purgatory.
    pub waiting_announcement: Option<EventId>,
}

/// What to do to one repository; the host applies `edits` as one compare-and-swap transaction
/// after copying `objects` from `copy_from`, then points HEAD at `head` if set.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RepoUpdate {
    pub repo: RepoKey,
    pub copy_from: Option<RepoKey>,
    pub objects: Vec<Oid>,
    pub edits: Vec<RefEdit>,
    pub head: Option<RefName>,
    /// For states: what to record as this repo's applied state once the update succeeded.
    pub applied_state: Option<(u64, EventId)>,
}

/// Everything releasing one event does. Empty `edits` are kept: recording the applied state
/// and HEAD still matters after a push that already moved the refs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReleasePlan {
    pub event: EventId,
    pub updates: Vec<RepoUpdate>,
    /// Waiting announcements released together with this event, because their repository
    /// ends up with data.
    pub announcements: Vec<EventId>,
}

/// Why an event cannot be released now.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum NotReleasable {
    /// These objects are not in the source repository yet: keep waiting.
    Missing(Vec<Oid>),
    /// No repository here has the author in its maintainer set: keep waiting (an announcement
    /// may still arrive that makes it authoritative).
    NotAuthorised,
    /// Every repository that authorises it already applied a newer state: drop it.
    Superseded,
    /// A PR that no repository here takes.
    NoTarget,
    /// Announcements and deletions carry no git data; announcements go out with a state.
    NothingToApply,
    /// A state listing a ref value that is not a full object id: no repository can equal it.
    NeverSatisfiable,
}

/// Plans the release of `event`, whose data is in `source`, over the repositories `targets`
/// (the repos on this server with the event's identifier; `source` should be among them).
/// `present(repo, oid)` says whether an object is in a repository.
pub fn plan_release(
    event: &GitEvent,
    source: &RepoKey,
    targets: &[Target<'_>],
    present: impl Fn(&RepoKey, &Oid) -> bool,
) -> Result<ReleasePlan, NotReleasable> {
    if matches!(event, GitEvent::State(s) if s.never_satisfiable) {
        return Err(NotReleasable::NeverSatisfiable);
    }
    let missing = satisfy::missing(event, |o| present(source, o));
    if !missing.is_empty() {
        return Err(NotReleasable::Missing(missing));
    }
    let mut targets: Vec<&Target<'_>> = targets.iter().collect();
    targets.sort_by(|a, b| a.repo.cmp(&b.repo));
    targets.dedup_by(|a, b| a.repo == b.repo);
    match event {
        GitEvent::State(state) => plan_state(state, source, &targets, &present),
        GitEvent::Pr(pr) => plan_pr(pr, source, &targets, &present),
        GitEvent::Announcement(_) | GitEvent::Deletion(_) => Err(NotReleasable::NothingToApply),
    }
}

fn copy_plan(
    repo: &RepoKey,
    source: &RepoKey,
    required: &[Oid],
    present: &impl Fn(&RepoKey, &Oid) -> bool,
) -> (Option<RepoKey>, Vec<Oid>) {
    let objects: Vec<Oid> = required
        .iter()
        .copied()
        .filter(|o| !present(repo, o))
        .collect();
    let from = (!objects.is_empty()).then(|| source.clone());
    (from, objects)
}

fn plan_state(
    state: &RepoState,
    source: &RepoKey,
    targets: &[&Target<'_>],
    present: &impl Fn(&RepoKey, &Oid) -> bool,
) -> Result<ReleasePlan, NotReleasable> {
    let required = satisfy::required_objects(&GitEvent::State(state.clone()));
    let this = (state.created_at, &state.id);
    let head = state.head.clone().filter(|h| state.refs.contains_key(h));
    let mut authorised_anywhere = false;
    let mut plan = ReleasePlan {
        event: state.id,
        updates: Vec::new(),
        announcements: Vec::new(),
    };
    for t in targets {
        if t.repo.identifier != state.identifier || !t.maintainers.contains(&state.author) {
            continue;
        }
        authorised_anywhere = true;
        if let Some((at, id)) = &t.applied_state {
            if !supersedes(this, (*at, id)) {
                continue;
            }
        }
        let (copy_from, objects) = copy_plan(&t.repo, source, &required, present);
        plan.updates.push(RepoUpdate {
            repo: t.repo.clone(),
            copy_from,
            objects,
            edits: align_refs(t.refs, state),
            head: head.clone(),
            applied_state: Some((state.created_at, state.id)),
        });
        if let Some(ann) = t.waiting_announcement {
            if !state.refs.is_empty() {
                plan.announcements.push(ann);
            }
        }
    }
    match (plan.updates.is_empty(), authorised_anywhere) {
        (false, _) => Ok(plan),
        (true, true) => Err(NotReleasable::Superseded),
        (true, false) => Err(NotReleasable::NotAuthorised),
    }
}

/// A PR goes into the repo it was pushed to and into every repo whose owner's maintainer set
/// contains an owner the PR names (the same project hosted under several maintainers).
fn plan_pr(
    pr: &PullRequest,
    source: &RepoKey,
    targets: &[&Target<'_>],
    present: &impl Fn(&RepoKey, &Oid) -> bool,
) -> Result<ReleasePlan, NotReleasable> {
    let name = pr_ref_name(&pr.id);
    let mut plan = ReleasePlan {
        event: pr.id,
        updates: Vec::new(),
        announcements: Vec::new(),
    };
    for t in targets {
        let named = pr.repos.iter().any(|c| {
            c.kind == KIND_ANNOUNCEMENT
                && c.identifier == t.repo.identifier
                && t.maintainers.contains(&c.author)
        });
        if !(named || t.repo == *source) {
            continue;
        }
        let current = t.refs.get(&name).copied();
        let edits = if current == Some(pr.commit) {
            Vec::new()
        } else {
            vec![RefEdit {
                name: name.clone(),
                expected: current,
                new: Some(pr.commit),
            }]
        };
        let (copy_from, objects) = copy_plan(&t.repo, source, &[pr.commit], present);
        plan.updates.push(RepoUpdate {
            repo: t.repo.clone(),
            copy_from,
            objects,
            edits,
            head: None,
            applied_state: None,
        });
    }
    if plan.updates.is_empty() {
        return Err(NotReleasable::NoTarget);
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::KIND_PR;
    use crate::ids::Identifier;
    use std::collections::BTreeSet;

    use crate::maintainers::maintainer_set;
    use crate::testkit::{announcement, ident, keys, oid, parsed, pk, refs, sign, state};

    fn edit(name: &str, expected: Option<u8>, new: Option<u8>) -> RefEdit {
        RefEdit {
            name: name.to_owned(),
            expected: expected.map(oid),
            new: new.map(oid),
        }
    }

    #[test]
    fn align_refs_table() {
        let nostr_ref = "refs/nostr/".to_owned() + &"ab".repeat(32);
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, &[(&str, u8)], &[(&str, u8)], Vec<RefEdit>)] = &[
            (
                "no-op",
                &[("refs/heads/main", 1)],
                &[("refs/heads/main", 1)],
                vec![],
            ),
            (
                "create into an empty repo",
                &[],
                &[("refs/heads/main", 1), ("refs/tags/v1", 2)],
                vec![
                    edit("refs/heads/main", None, Some(1)),
                    edit("refs/tags/v1", None, Some(2)),
                ],
            ),
            (
                "fast-forward or force: compare-and-swap on the old value",
                &[("refs/heads/main", 1)],
                &[("refs/heads/main", 3)],
                vec![edit("refs/heads/main", Some(1), Some(3))],
            ),
            (
                "deleted branch",
                &[("refs/heads/main", 1), ("refs/heads/dev", 2)],
                &[("refs/heads/main", 1)],
                vec![edit("refs/heads/dev", Some(2), None)],
            ),
            (
                "annotated tag points at the tag object",
                &[("refs/heads/main", 1)],
                &[("refs/heads/main", 1), ("refs/tags/v1", 9)],
                vec![edit("refs/tags/v1", None, Some(9))],
            ),
            (
                "empty state deletes every branch and tag",
                &[("refs/heads/main", 1), ("refs/tags/v1", 9)],
                &[],
                vec![
                    edit("refs/heads/main", Some(1), None),
                    edit("refs/tags/v1", Some(9), None),
                ],
            ),
            (
                "refs/nostr is never touched",
                &[(nostr_ref.as_str(), 5), ("refs/heads/a", 1)],
                &[("refs/heads/b", 1)],
                vec![
                    edit("refs/heads/a", Some(1), None),
                    edit("refs/heads/b", None, Some(1)),
                ],
            ),
        ];
        for (name, current, wanted, want) in cases {
            let s = state(1, "r", 1, wanted, None);
            assert_eq!(&align_refs(&refs(current), &s), want, "{name}");
        }
    }

    /// A repository on this server, for plans: its refs, its applied state, its owner's set.
    struct Repo {
        key: RepoKey,
        refs: BTreeMap<RefName, Oid>,
        applied: Option<(u64, EventId)>,
        maintainers: MaintainerSet,
        waiting: Option<EventId>,
        objects: BTreeSet<Oid>,
    }

    impl Repo {
        fn target(&self) -> Target<'_> {
            Target {
                repo: self.key.clone(),
                refs: &self.refs,
                applied_state: self.applied,
                maintainers: &self.maintainers,
                waiting_announcement: self.waiting,
            }
        }
    }

    /// Repos for `owners` with identifier "r", maintainer sets from `anns` (owner, maintainers).
    fn server(owners: &[u8], anns: &[(u8, &[u8])]) -> Vec<Repo> {
        let anns: BTreeMap<RepoKey, _> = anns
            .iter()
            .map(|(o, ms)| {
                (
                    RepoKey::new(pk(*o), ident("r")),
                    announcement(*o, "r", ms, 1),
                )
            })
            .collect();
        owners
            .iter()
            .map(|o| Repo {
                key: RepoKey::new(pk(*o), ident("r")),
                refs: BTreeMap::new(),
                applied: None,
                maintainers: maintainer_set(&anns, &pk(*o), &ident("r")),
                waiting: None,
                objects: BTreeSet::new(),
            })
            .collect()
    }

    fn plan(event: &GitEvent, source: usize, repos: &[Repo]) -> Result<ReleasePlan, NotReleasable> {
        let targets: Vec<Target<'_>> = repos.iter().map(Repo::target).collect();
        plan_release(event, &repos[source].key, &targets, |repo, o| {
            repos
                .iter()
                .any(|r| r.key == *repo && r.objects.contains(o))
        })
    }

    /// Executes a plan against the in-memory repos, as the host would.
    fn apply(plan: &ReleasePlan, repos: &mut [Repo]) {
        for u in &plan.updates {
            let copied: Vec<Oid> = u.objects.clone();
            let r = repos.iter_mut().find(|r| r.key == u.repo).unwrap();
            r.objects.extend(copied);
            for e in &u.edits {
                assert_eq!(r.refs.get(&e.name).copied(), e.expected, "compare-and-swap");
                match e.new {
                    Some(n) => r.refs.insert(e.name.clone(), n),
                    None => r.refs.remove(&e.name),
                };
            }
            if u.applied_state.is_some() {
                r.applied = u.applied_state;
            }
        }
    }

    #[test]
    fn seed_002_state_a_released_from_server_1_while_state_b_waits_on_server_3() {
        // Owner 1 lists maintainers 2 and 3; maintainer 2 hosts the project here too.
        let mut repos = server(&[1, 2], &[(1, &[2, 3]), (2, &[1])]);
        let a = GitEvent::State(state(
            2,
            "r",
            10,
            &[("refs/heads/main", 0xA1)],
            Some("refs/heads/main"),
        ));
        let b = GitEvent::State(state(
            3,
            "r",
            20,
            &[("refs/heads/main", 0xB1)],
            Some("refs/heads/main"),
        ));

        // The fetch from server 1 lands A's commit in owner 1's repo; server 3 is down.
        repos[0].objects.insert(oid(0xA1));
        let plan_a = plan(&a, 0, &repos).expect("A is satisfiable");
        assert_eq!(
            plan_a.updates.len(),
            2,
            "authoritative for both owners' repos"
        );
        let (u1, u2) = (&plan_a.updates[0], &plan_a.updates[1]);
        let (k1, k2) = (&repos[0].key, &repos[1].key);
        let (first, second) = if u1.repo == *k1 { (u1, u2) } else { (u2, u1) };
        assert_eq!(first.repo, *k1);
        assert_eq!(
            (first.copy_from.as_ref(), first.objects.as_slice()),
            (None, &[][..])
        );
        assert_eq!(second.repo, *k2);
        assert_eq!(second.copy_from.as_ref(), Some(k1));
        assert_eq!(second.objects, vec![oid(0xA1)]);
        for u in [first, second] {
            assert_eq!(u.edits, vec![edit("refs/heads/main", None, Some(0xA1))]);
            assert_eq!(u.head.as_deref(), Some("refs/heads/main"));
        }
        assert_eq!(
            plan(&b, 0, &repos),
            Err(NotReleasable::Missing(vec![oid(0xB1)]))
        );
        apply(&plan_a, &mut repos);

        // Server 3 comes back: B is newer, moves main with compare-and-swap in both repos.
        repos[0].objects.insert(oid(0xB1));
        let plan_b = plan(&b, 0, &repos).expect("B is satisfiable and newer");
        assert_eq!(plan_b.updates.len(), 2);
        for u in &plan_b.updates {
            assert_eq!(
                u.edits,
                vec![edit("refs/heads/main", Some(0xA1), Some(0xB1))]
            );
        }
        apply(&plan_b, &mut repos);

        // A late, older state from the owner is superseded everywhere.
        let old = GitEvent::State(state(1, "r", 5, &[("refs/heads/main", 0xA1)], None));
        assert_eq!(plan(&old, 0, &repos), Err(NotReleasable::Superseded));
    }

    #[test]
    fn authority_follows_each_owners_maintainer_set() {
        // 1 lists 2; 2 lists nobody; 4 is unrelated. Directional: 1 has no rights on 2's repo.
        let repos = server(&[1, 2, 4], &[(1, &[2])]);
        let by =
            |author: u8| GitEvent::State(state(author, "r", 1, &[("refs/heads/main", 1)], None));
        let mut repos = repos;
        repos[0].objects.insert(oid(1));
        let owners =
            |p: ReleasePlan| -> Vec<RepoKey> { p.updates.into_iter().map(|u| u.repo).collect() };
        let key = |n: u8| RepoKey::new(pk(n), ident("r"));
        let mut want2 = vec![key(1), key(2)];
        want2.sort();
        assert_eq!(owners(plan(&by(2), 0, &repos).unwrap()), want2);
        assert_eq!(owners(plan(&by(1), 0, &repos).unwrap()), vec![key(1)]);
        assert_eq!(plan(&by(5), 0, &repos), Err(NotReleasable::NotAuthorised));
    }

    #[test]
    fn equal_timestamps_go_to_the_lowest_id() {
        let mut repos = server(&[1], &[]);
        repos[0].objects.extend([oid(1), oid(2)]);
        let x = state(1, "r", 7, &[("refs/heads/main", 1)], None);
        let y = state(1, "r", 7, &[("refs/heads/main", 2)], None);
        let (low, high) = if x.id < y.id { (x, y) } else { (y, x) };
        repos[0].applied = Some((7, high.id));
        assert!(plan(&GitEvent::State(low.clone()), 0, &repos).is_ok());
        repos[0].applied = Some((7, low.id));
        assert_eq!(
            plan(&GitEvent::State(high), 0, &repos),
            Err(NotReleasable::Superseded)
        );
    }

    #[test]
    fn head_is_set_only_to_a_branch_the_state_has() {
        let mut repos = server(&[1], &[]);
        repos[0].objects.insert(oid(1));
        let cases = [
            (Some("refs/heads/main"), Some("refs/heads/main")),
            (Some("refs/heads/gone"), None),
            (None, None),
        ];
        for (head, want) in cases {
            let s = GitEvent::State(state(1, "r", 1, &[("refs/heads/main", 1)], head));
            let p = plan(&s, 0, &repos).unwrap();
            assert_eq!(p.updates[0].head.as_deref(), want, "HEAD tag {head:?}");
        }
    }

    #[test]
    fn announcement_goes_out_with_its_first_data_never_with_an_empty_state() {
        let mut repos = server(&[1], &[]);
        let ann = announcement(1, "r", &[], 1);
        repos[0].waiting = Some(ann.id);
        let empty = GitEvent::State(state(1, "r", 1, &[], None));
        assert_eq!(plan(&empty, 0, &repos).unwrap().announcements, vec![]);
        repos[0].objects.insert(oid(1));
        let full = GitEvent::State(state(1, "r", 2, &[("refs/heads/main", 1)], None));
        assert_eq!(plan(&full, 0, &repos).unwrap().announcements, vec![ann.id]);
        assert!(!announcement_ready(&refs(&[])));
        assert!(!announcement_ready(&refs(&[("refs/nostr/x", 1)])));
        assert!(announcement_ready(&refs(&[("refs/tags/v1", 1)])));
        assert_eq!(
            plan(&GitEvent::Announcement(ann), 0, &repos),
            Err(NotReleasable::NothingToApply)
        );
    }

    #[test]
    fn a_never_satisfiable_state_is_never_planned() {
        let mut repos = server(&[1], &[]);
        repos[0].objects.insert(oid(1));
        let mut s = state(1, "r", 1, &[("refs/heads/main", 1)], None);
        s.never_satisfiable = true;
        assert_eq!(
            plan(&GitEvent::State(s.clone()), 0, &repos),
            Err(NotReleasable::NeverSatisfiable)
        );
        s.refs = Default::default();
        assert_eq!(
            plan(&GitEvent::State(s), 0, &repos),
            Err(NotReleasable::NeverSatisfiable),
            "not even when it lists no readable ref"
        );
    }

    fn pr_to(owners: &[u8], commit: u8, created_at: u64) -> GitEvent {
        let tags: Vec<String> = owners
            .iter()
            .map(|o| format!("30617:{}:r", pk(*o).to_hex()))
            .collect();
        let c = oid(commit).to_string();
        let mut t: Vec<Vec<&str>> = tags.iter().map(|a| vec!["a", a.as_str()]).collect();
        t.push(vec!["c", c.as_str()]);
        let t: Vec<&[&str]> = t.iter().map(Vec::as_slice).collect();
        parsed(&sign(&keys(9), KIND_PR, created_at, &t))
    }

    #[test]
    fn pr_goes_to_the_pushed_repo_and_the_tagged_owners_repos() {
        // Repos of 1, 2, 3, 4. 2 lists 1 (so a PR to 1 belongs in 2's repo too); 3 is
        // listed by 1 but does not list 1 (directional: no copy); 4 is unrelated.
        let mut repos = server(&[1, 2, 3, 4], &[(1, &[3]), (2, &[1])]);
        let pr = pr_to(&[1], 7, 1);
        assert_eq!(
            plan(&pr, 3, &repos),
            Err(NotReleasable::Missing(vec![oid(7)]))
        );
        // The contributor pushed the tip to 4's repo (before publishing the event).
        let GitEvent::Pr(p) = &pr else { unreachable!() };
        let name = pr_ref_name(&p.id);
        repos[3].objects.insert(oid(7));
        repos[3].refs.insert(name.clone(), oid(7));
        let plan = plan(&pr, 3, &repos).unwrap();
        type Row = (RepoKey, Option<RepoKey>, Vec<Oid>, Vec<RefEdit>);
        let mut got: Vec<Row> = plan
            .updates
            .into_iter()
            .map(|u| (u.repo, u.copy_from, u.objects, u.edits))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let key = |n: u8| RepoKey::new(pk(n), ident("r"));
        let create = RefEdit {
            name: name.clone(),
            expected: None,
            new: Some(oid(7)),
        };
        let mut want = vec![
            (key(1), Some(key(4)), vec![oid(7)], vec![create.clone()]),
            (key(2), Some(key(4)), vec![oid(7)], vec![create]),
            (key(4), None, vec![], vec![]),
        ];
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want);
    }

    #[test]
    fn pr_ref_with_another_commit_is_moved_to_the_events_commit() {
        let mut repos = server(&[1], &[]);
        let pr = pr_to(&[1], 7, 1);
        let GitEvent::Pr(p) = &pr else { unreachable!() };
        repos[0].objects.extend([oid(7), oid(8)]);
        repos[0].refs.insert(pr_ref_name(&p.id), oid(8));
        let plan = plan(&pr, 0, &repos).unwrap();
        assert_eq!(
            plan.updates[0].edits,
            vec![RefEdit {
                name: pr_ref_name(&p.id),
                expected: Some(oid(8)),
                new: Some(oid(7)),
            }]
        );
    }

    #[test]
    fn pr_for_a_repo_not_hosted_here_has_no_target() {
        let repos = server(&[1], &[]);
        let pr = pr_to(&[5], 7, 1);
        let targets: Vec<Target<'_>> = repos.iter().map(Repo::target).collect();
        let elsewhere = RepoKey::new(pk(6), Identifier::new("r").unwrap());
        let got = plan_release(&pr, &elsewhere, &targets, |_, _| true);
        assert_eq!(got, Err(NotReleasable::NoTarget));
    }
}
