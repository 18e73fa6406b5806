//! Group commit: writes that arrive while a commit is running share the next one.
//!
//! Every accepted event must be durable before its `OK true`, and a durable redb commit costs
//! one fsync. Committing each write on its own caps the store at one event per fsync however
//! many clients write at once. Here a write is queued ([`GroupCommit::submit`]); the writer
//! that finds nobody committing becomes the [`Leader`]: it takes every write queued so far,
//! runs them in one transaction, commits once, answers each writer, and goes on with the
//! writes that queued meanwhile until none is left. A lone writer pays nothing extra.
//!
//! A writer waits for its answer on a channel ([`Pending`]), so waiting holds no thread: only
//! the leader needs one, and under pipelined clients hundreds of writes wait on one committing
//! thread instead of a thread each. A caller that waits on its own thread
//! ([`Pending::wait`]) leads only until its own write is committed, then hands what is still
//! queued to a thread of its own.
//!
//! Nothing about durability changes: a writer is answered only after the commit that holds its
//! write. If any write of a batch fails, the batch is abandoned (nothing of it is written) and
//! each write runs again in a transaction of its own, so one failing write fails only itself.

use std::sync::{Arc, Mutex, MutexGuard};

/// Runs jobs in one transaction and commits it; whatever a job did in an abandoned
/// transaction vanishes with it.
pub type Commit<J> = Box<dyn Fn(&[&J]) -> Result<(), String> + Send>;

/// The queue of writes (`J`) waiting for a commit, and whether someone is committing.
pub struct GroupCommit<J> {
    state: Mutex<State<J>>,
    max_batch: usize,
}

struct State<J> {
    queued: Vec<Queued<J>>,
    leading: bool,
    stats: GroupCommitStats,
}

struct Queued<J> {
    job: J,
    answer: async_channel::Sender<Result<(), String>>,
}

/// What the queue did, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Transactions committed (or abandoned) for batches.
    pub commits: u64,
    /// Writes that went through the queue.
    pub writes: u64,
    pub largest_batch: u64,
}

impl<J: Send + 'static> GroupCommit<J> {
    /// At most `max_batch` writes share one commit (bounds a batch's extra wait).
    pub fn new(max_batch: usize) -> GroupCommit<J> {
        GroupCommit {
            state: Mutex::new(State {
                queued: Vec::new(),
                leading: false,
                stats: GroupCommitStats::default(),
            }),
            max_batch: max_batch.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> GroupCommitStats {
        self.lock().stats
    }

    /// Queues `job`; `commit` is how this writer would commit if it leads. The answer comes
    /// once a commit holding the job is durable, or once the job failed on its own.
    pub fn submit(self: &Arc<Self>, commit: Commit<J>, job: J) -> Pending<()> {
        let (answer, answered) = async_channel::bounded(1);
        let mut state = self.lock();
        state.queued.push(Queued { job, answer });
        let leader = (!state.leading).then(|| {
            state.leading = true;
            Leader(Some(Box::new(LeadOn {
                queue: Arc::clone(self),
                commit,
            })))
        });
        Pending {
            answered,
            value: Arc::new(Mutex::new(Some(()))),
            leader,
        }
    }

    /// [`GroupCommit::submit`] for a write with a value: `make_job` turns a sink for the value
    /// into the job, and the value is given once the commit holding it is durable.
    pub fn submit_returning<T: Send + 'static>(
        self: &Arc<Self>,
        commit: Commit<J>,
        make_job: impl FnOnce(Box<dyn Fn(T) + Send>) -> J,
    ) -> Pending<T> {
        let value = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&value);
        let job = make_job(Box::new(move |v| {
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
        }));
        let Pending {
            answered, leader, ..
        } = self.submit(commit, job);
        Pending {
            answered,
            value,
            leader,
        }
    }

    /// Commits batches, oldest writes first, until nothing is queued (then steps down and
    /// returns false) or `enough` says so (then returns true, still leading).
    fn lead(&self, commit: &Commit<J>, enough: &dyn Fn() -> bool) -> bool {
        let mut state = self.lock();
        loop {
            if state.queued.is_empty() {
                state.leading = false;
                return false;
            }
            if enough() {
                return true;
            }
            let take = state.queued.len().min(self.max_batch);
            let batch: Vec<Queued<J>> = state.queued.drain(..take).collect();
            drop(state);
            // A write that panics fails its batch instead of leaving the queue leaderless.
            let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_batch(commit, &batch)
            }))
            .unwrap_or_else(|_| vec![Err("a store write panicked".to_owned()); batch.len()]);
            for (queued, outcome) in batch.iter().zip(outcomes) {
                // A writer that stopped waiting has no one to tell.
                let _ = queued.answer.try_send(outcome);
            }
            state = self.lock();
            let size = batch.len() as u64;
            state.stats.commits += 1;
            state.stats.writes += size;
            state.stats.largest_batch = state.stats.largest_batch.max(size);
        }
    }
}

/// The batch in one transaction; if that fails, each job alone. Outcomes in batch order.
fn run_batch<J>(commit: &Commit<J>, batch: &[Queued<J>]) -> Vec<Result<(), String>> {
    let jobs: Vec<&J> = batch.iter().map(|q| &q.job).collect();
    match commit(&jobs) {
        Ok(()) => vec![Ok(()); batch.len()],
        Err(error) if batch.len() == 1 => vec![Err(error)],
        Err(_) => batch.iter().map(|q| commit(&[&q.job])).collect(),
    }
}

/// Leading one queue, whatever its jobs' type.
trait Lead: Send {
    /// See [`GroupCommit::lead`].
    fn lead(&self, enough: &dyn Fn() -> bool) -> bool;
}

struct LeadOn<J> {
    queue: Arc<GroupCommit<J>>,
    commit: Commit<J>,
}

impl<J: Send + 'static> Lead for LeadOn<J> {
    fn lead(&self, enough: &dyn Fn() -> bool) -> bool {
        self.queue.lead(&self.commit, enough)
    }
}

/// The duty to commit what is queued, given to the writer that found nobody committing. It
/// blocks while it commits: run it on a thread that may block. Dropped unrun, it runs on a
/// thread of its own, so no write is ever left queued without a leader.
#[must_use = "a leader must run, or the writes queued behind it wait until it is dropped"]
pub struct Leader(Option<Box<dyn Lead>>);

impl Leader {
    /// Commits until nothing is queued.
    pub fn run(mut self) {
        if let Some(lead) = self.0.take() {
            lead.lead(&|| false);
        }
    }

    /// Commits until `enough` says so, then hands what is still queued to a thread of its
    /// own.
    fn run_until(mut self, enough: &dyn Fn() -> bool) {
        if let Some(lead) = self.0.take() {
            if lead.lead(enough) {
                hand_over(lead);
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(lead) = self.0.take() {
            hand_over(lead);
        }
    }
}

fn hand_over(lead: Box<dyn Lead>) {
    let spawned = std::thread::Builder::new()
        .name("graspd-commit".into())
        .spawn(move || {
            lead.lead(&|| false);
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "no thread to commit queued store writes on");
    }
}

/// A queued write: its value once the commit holding it is durable.
#[must_use = "a write's outcome must be waited for"]
pub struct Pending<T> {
    answered: async_channel::Receiver<Result<(), String>>,
    value: Arc<Mutex<Option<T>>>,
    leader: Option<Leader>,
}

impl<T> Pending<T> {
    /// The duty to commit, if this write found nobody committing; whoever takes it must run
    /// it (on a thread that may block) for this write to be answered.
    pub fn take_leader(&mut self) -> Option<Leader> {
        self.leader.take()
    }

    /// Waits on this thread: leads first if this write found nobody committing.
    pub fn wait(mut self) -> Result<T, String> {
        if let Some(leader) = self.leader.take() {
            let answered = self.answered.clone();
            leader.run_until(&move || !answered.is_empty());
        }
        let outcome = self.answered.recv_blocking();
        self.outcome(outcome)
    }

    /// Waits without a thread. A leader not taken runs on a thread of its own.
    pub async fn committed(mut self) -> Result<T, String> {
        drop(self.leader.take());
        let outcome = self.answered.recv().await;
        self.outcome(outcome)
    }

    fn outcome(
        &self,
        answer: Result<Result<(), String>, async_channel::RecvError>,
    ) -> Result<T, String> {
        answer.map_err(|_| "the store write was abandoned".to_owned())??;
        let value = self.value.lock().unwrap_or_else(|e| e.into_inner()).take();
        value.ok_or_else(|| "a committed write left no result".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// The job ids of each commit, in order, with the thread that committed them.
    type Commits = Arc<Mutex<Vec<(Vec<u64>, std::thread::ThreadId)>>>;

    /// Commits by recording job ids; a batch holding a job in `failing` fails.
    fn recorder(failing: &'static [u64]) -> (Commits, impl Fn() -> Commit<u64> + Clone) {
        let commits: Commits = Arc::default();
        let log = Arc::clone(&commits);
        let make = move || -> Commit<u64> {
            let log = Arc::clone(&log);
            Box::new(move |jobs: &[&u64]| {
                let tx: Vec<u64> = jobs.iter().map(|j| **j).collect();
                if tx.iter().any(|id| failing.contains(id)) {
                    return Err("failing job".to_owned());
                }
                log.lock().unwrap().push((tx, std::thread::current().id()));
                Ok(())
            })
        };
        (commits, make)
    }

    fn ids(commits: &Commits) -> Vec<Vec<u64>> {
        commits
            .lock()
            .unwrap()
            .iter()
            .map(|(ids, _)| ids.clone())
            .collect()
    }

    /// `writers` threads write their id at once, each waiting on its thread; returns each
    /// one's outcome.
    fn concurrently(
        queue: &Arc<GroupCommit<u64>>,
        commit: impl Fn() -> Commit<u64> + Clone + Send + 'static,
        writers: u64,
    ) -> Vec<(u64, Result<(), String>)> {
        let threads: Vec<_> = (0..writers)
            .map(|id| {
                let (queue, commit) = (Arc::clone(queue), commit.clone());
                std::thread::spawn(move || (id, queue.submit(commit(), id).wait()))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn a_lone_write_is_one_commit() {
        let queue = Arc::new(GroupCommit::new(8));
        let (commits, commit) = recorder(&[]);
        assert_eq!(queue.submit(commit(), 1).wait(), Ok(()));
        assert_eq!(ids(&commits), vec![vec![1]]);
        assert_eq!(queue.stats().commits, 1);
    }

    #[test]
    fn concurrent_writes_each_commit_exactly_once_in_bounded_batches() {
        let queue = Arc::new(GroupCommit::new(16));
        let (commits, commit) = recorder(&[]);
        for (id, outcome) in concurrently(&queue, commit, 64) {
            assert_eq!(outcome, Ok(()), "write {id}");
        }
        let mut committed: Vec<u64> = ids(&commits).concat();
        committed.sort_unstable();
        assert_eq!(committed, (0..64).collect::<Vec<_>>());
        let stats = queue.stats();
        assert_eq!(stats.writes, 64);
        assert!(stats.largest_batch <= 16, "{stats:?}");
    }

    /// Writes waited for without a thread: only the first is asked to lead, and its leader
    /// commits everything queued behind it, in one batch, answering every writer.
    #[test]
    fn writes_waited_for_without_a_thread_are_committed_by_the_one_leader() {
        let queue = Arc::new(GroupCommit::new(8));
        let (commits, commit) = recorder(&[]);
        let mut pending: Vec<Pending<()>> = (0..3).map(|id| queue.submit(commit(), id)).collect();
        let leaders: Vec<Option<Leader>> = pending.iter_mut().map(|p| p.take_leader()).collect();
        assert_eq!(
            leaders.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, false]
        );
        assert!(
            ids(&commits).is_empty(),
            "nothing committed before the leader runs"
        );
        for leader in leaders.into_iter().flatten() {
            leader.run();
        }
        assert_eq!(ids(&commits), vec![vec![0, 1, 2]]);
        for p in pending {
            assert_eq!(p.committed().now_or_never(), Some(Ok(())));
        }
        // The queue is led again by the next writer.
        let mut next = queue.submit(commit(), 3);
        assert!(next.take_leader().is_some());
    }

    /// A writer waiting on its own thread leads until its own write is committed; a write
    /// queued meanwhile is committed by a thread of its own, not left waiting.
    #[test]
    fn a_waiting_leader_hands_over_once_its_own_write_is_committed() {
        let queue = Arc::new(GroupCommit::new(8));
        let (commits, record) = recorder(&[]);
        let second: Arc<Mutex<Option<Pending<()>>>> = Arc::default();
        let first_commit: Commit<u64> = {
            let (queue, second, record) = (Arc::clone(&queue), Arc::clone(&second), record.clone());
            let record = record();
            Box::new(move |jobs: &[&u64]| {
                if jobs.contains(&&0) {
                    *second.lock().unwrap() = Some(queue.submit(Box::new(|_: &[&u64]| Ok(())), 1));
                }
                record(jobs)
            })
        };
        assert_eq!(queue.submit(first_commit, 0).wait(), Ok(()));
        let mut second = second
            .lock()
            .unwrap()
            .take()
            .expect("queued during the commit");
        assert!(second.take_leader().is_none(), "queued while a leader ran");
        assert_eq!(second.wait(), Ok(()));
        assert_eq!(ids(&commits), vec![vec![0], vec![1]]);
        let threads: Vec<_> = commits.lock().unwrap().iter().map(|(_, t)| *t).collect();
        assert_eq!(threads[0], std::thread::current().id());
        assert_ne!(threads[1], std::thread::current().id(), "handed over");
    }

    #[test]
    fn a_failing_write_fails_alone_and_the_rest_of_its_batch_commits() {
        let queue = Arc::new(GroupCommit::new(64));
        let (commits, commit) = recorder(&[7]);
        for (id, outcome) in concurrently(&queue, commit, 32) {
            assert_eq!(outcome.is_err(), id == 7, "write {id}: {outcome:?}");
        }
        let committed: Vec<u64> = ids(&commits).concat();
        assert!(!committed.contains(&7));
        assert_eq!(committed.len(), 31);
    }
}
