//! Group commit: writes that arrive while a commit is running share the next one.
//!
//! Every accepted event must be durable before its `OK true`, and a durable redb commit costs
//! one fsync. Committing each write on its own caps the store at one event per fsync however
//! many clients write at once. Here the first writer becomes the leader: it takes every write
//! queued so far, runs them in one transaction, commits once, and hands each writer its own
//! result; writes that queued meanwhile form the next batch. A lone writer pays nothing extra.
//! A leader leads only until its own write is committed, then hands over to a waiting writer,
//! so under steady load no writer's answer waits for more than a few batches of others.
//!
//! Nothing about durability changes: a writer returns only after the commit that holds its
//! write. If any write of a batch fails, the batch is abandoned (nothing of it is written) and
//! each write runs again in a transaction of its own, so one failing write fails only itself.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// The queue of writes (`J`) waiting for a commit, and who is committing.
pub struct GroupCommit<J> {
    state: Mutex<State<J>>,
    finished: Condvar,
    max_batch: usize,
}

struct State<J> {
    queued: Vec<(u64, J)>,
    leading: bool,
    next_ticket: u64,
    /// Tickets done whose writers have not looked yet, with their outcome.
    done: Vec<(u64, Result<(), String>)>,
    stats: GroupCommitStats,
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

impl<J> GroupCommit<J> {
    /// At most `max_batch` writes share one commit (bounds a leader's extra wait).
    pub fn new(max_batch: usize) -> GroupCommit<J> {
        GroupCommit {
            state: Mutex::new(State {
                queued: Vec::new(),
                leading: false,
                next_ticket: 0,
                done: Vec::new(),
                stats: GroupCommitStats::default(),
            }),
            finished: Condvar::new(),
            max_batch: max_batch.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> GroupCommitStats {
        self.lock().stats
    }

    /// Queues `job` and returns once a commit holding it is durable (`Ok`), or once it failed
    /// on its own. `commit` runs jobs in one transaction and commits it; it may be called
    /// twice for a job (in its batch, then alone if the batch failed), and whatever a job
    /// did in an abandoned transaction must vanish with it. Blocks: call it from a blocking
    /// thread.
    pub fn write(
        &self,
        commit: &dyn Fn(&[&J]) -> Result<(), String>,
        job: J,
    ) -> Result<(), String> {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queued.push((ticket, job));
        loop {
            if let Some(i) = state.done.iter().position(|(t, _)| *t == ticket) {
                return state.done.swap_remove(i).1;
            }
            if !state.leading {
                state.leading = true;
                state = self.lead(state, commit, ticket);
                continue;
            }
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// [`GroupCommit::write`] for a write with a value: `make_job` turns a sink for the
    /// value into the job, and the value is returned once the commit holding it is durable.
    pub fn write_returning<T: Send + 'static>(
        &self,
        commit: &dyn Fn(&[&J]) -> Result<(), String>,
        make_job: impl FnOnce(Box<dyn Fn(T) + Send>) -> J,
    ) -> Result<T, String> {
        let slot = Arc::new(Mutex::new(None));
        let sink = Arc::clone(&slot);
        let job = make_job(Box::new(move |value| {
            *sink.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        }));
        self.write(commit, job)?;
        let value = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        value.ok_or_else(|| "a committed write left no result".to_owned())
    }

    /// Commits batches, oldest writes first, until `own` is done (or nothing is queued), then
    /// steps down; the writers it woke find nobody leading and one of them takes over.
    fn lead<'a>(
        &'a self,
        mut state: MutexGuard<'a, State<J>>,
        commit: &dyn Fn(&[&J]) -> Result<(), String>,
        own: u64,
    ) -> MutexGuard<'a, State<J>> {
        while !state.queued.is_empty() && !state.done.iter().any(|(t, _)| *t == own) {
            let take = state.queued.len().min(self.max_batch);
            let batch: Vec<(u64, J)> = state.queued.drain(..take).collect();
            drop(state);
            // A write that panics fails its batch instead of leaving the queue leaderless.
            let outcomes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_batch(commit, &batch)
            }))
            .unwrap_or_else(|_| {
                let failed = || Err("a store write panicked".to_owned());
                batch.iter().map(|(t, _)| (*t, failed())).collect()
            });
            state = self.lock();
            let size = batch.len() as u64;
            state.stats.commits += 1;
            state.stats.writes += size;
            state.stats.largest_batch = state.stats.largest_batch.max(size);
            state.done.extend(outcomes);
            self.finished.notify_all();
        }
        state.leading = false;
        self.finished.notify_all();
        state
    }
}

/// The batch in one transaction; if that fails, each job alone.
fn run_batch<J>(
    commit: &dyn Fn(&[&J]) -> Result<(), String>,
    batch: &[(u64, J)],
) -> Vec<(u64, Result<(), String>)> {
    let jobs: Vec<&J> = batch.iter().map(|(_, job)| job).collect();
    match commit(&jobs) {
        Ok(()) => batch.iter().map(|(t, _)| (*t, Ok(()))).collect(),
        Err(error) if batch.len() == 1 => vec![(batch[0].0, Err(error))],
        Err(_) => batch.iter().map(|(t, job)| (*t, commit(&[job]))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The job ids of each commit, in order.
    type Commits = Arc<Mutex<Vec<Vec<u64>>>>;

    /// Commits by recording job ids; a batch holding a job in `failing` fails.
    fn recorder(failing: &'static [u64]) -> (Commits, impl Fn(&[&u64]) -> Result<(), String>) {
        let commits = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&commits);
        let commit = move |jobs: &[&u64]| {
            let tx: Vec<u64> = jobs.iter().map(|j| **j).collect();
            if tx.iter().any(|id| failing.contains(id)) {
                return Err("failing job".to_owned());
            }
            log.lock().unwrap().push(tx);
            Ok(())
        };
        (commits, commit)
    }

    /// `writers` threads write their id at once; returns each one's outcome.
    fn concurrently(
        queue: &Arc<GroupCommit<u64>>,
        commit: impl Fn(&[&u64]) -> Result<(), String> + Send + Sync + 'static,
        writers: u64,
    ) -> Vec<(u64, Result<(), String>)> {
        let commit = Arc::new(commit);
        let threads: Vec<_> = (0..writers)
            .map(|id| {
                let (queue, commit) = (Arc::clone(queue), Arc::clone(&commit));
                std::thread::spawn(move || (id, queue.write(&*commit, id)))
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }

    #[test]
    fn a_lone_write_is_one_commit() {
        let queue = GroupCommit::new(8);
        let (commits, commit) = recorder(&[]);
        assert_eq!(queue.write(&commit, 1), Ok(()));
        assert_eq!(*commits.lock().unwrap(), vec![vec![1]]);
        assert_eq!(queue.stats().commits, 1);
    }

    #[test]
    fn concurrent_writes_each_commit_exactly_once_in_bounded_batches() {
        let queue = Arc::new(GroupCommit::new(16));
        let (commits, commit) = recorder(&[]);
        for (id, outcome) in concurrently(&queue, commit, 64) {
            assert_eq!(outcome, Ok(()), "write {id}");
        }
        let mut committed: Vec<u64> = commits.lock().unwrap().concat();
        committed.sort_unstable();
        assert_eq!(committed, (0..64).collect::<Vec<_>>());
        let stats = queue.stats();
        assert_eq!(stats.writes, 64);
        assert!(stats.largest_batch <= 16, "{stats:?}");
    }

    /// While the leader commits its own write, another writer queues; the leader returns
    /// after its own commit, and the other writer then leads and commits its write itself.
    #[test]
    fn a_leader_hands_over_once_its_own_write_is_committed() {
        type Committed = Arc<Mutex<Vec<(u64, std::thread::ThreadId)>>>;
        fn recording(committed: &Committed) -> impl Fn(&[&u64]) -> Result<(), String> {
            let committed = Arc::clone(committed);
            move |jobs: &[&u64]| {
                let me = std::thread::current().id();
                committed
                    .lock()
                    .unwrap()
                    .extend(jobs.iter().map(|j| (**j, me)));
                Ok(())
            }
        }
        let queue = Arc::new(GroupCommit::new(8));
        let committed: Committed = Arc::default();
        let second = Mutex::new(None);
        let record = recording(&committed);
        let first_commit = |jobs: &[&u64]| {
            if jobs.contains(&&0) {
                let (q, record) = (Arc::clone(&queue), recording(&committed));
                *second.lock().unwrap() = Some(std::thread::spawn(move || {
                    (std::thread::current().id(), q.write(&record, 1))
                }));
                while queue.lock().queued.is_empty() {
                    std::thread::yield_now();
                }
            }
            record(jobs)
        };
        assert_eq!(queue.write(&first_commit, 0), Ok(()));
        let (second_thread, outcome) = second.lock().unwrap().take().unwrap().join().unwrap();
        assert_eq!(outcome, Ok(()));
        let committed = committed.lock().unwrap().clone();
        assert_eq!(
            committed,
            [(0, std::thread::current().id()), (1, second_thread)]
        );
    }

    #[test]
    fn a_failing_write_fails_alone_and_the_rest_of_its_batch_commits() {
        let queue = Arc::new(GroupCommit::new(64));
        let (commits, commit) = recorder(&[7]);
        for (id, outcome) in concurrently(&queue, commit, 32) {
            assert_eq!(outcome.is_err(), id == 7, "write {id}: {outcome:?}");
        }
        let committed: Vec<u64> = commits.lock().unwrap().concat();
        assert!(!committed.contains(&7));
        assert_eq!(committed.len(), 31);
    }
}
