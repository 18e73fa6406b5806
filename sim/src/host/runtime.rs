//! A deterministic [`Runtime`] for graspd-host: one thread, virtual time, one seed.
//!
//! - **Clock.** `now()` is a fixed origin plus the virtual elapsed time; `wall_clock()` is a
//!   fixed date plus the same. No real clock is read after the origin is taken (an `Instant`
//!   cannot be made otherwise; only differences from it are ever observed).
//! - **Scheduler.** Spawned futures are tasks; a waker puts its task in the ready set. Each
//!   step polls one ready task chosen by the seeded generator, so every interleaving of ready
//!   tasks is possible and a seed picks one.
//! - **Blocking pool.** `spawn_blocking` jobs run on the simulator's thread, each at once and
//!   whole (a redb commit is atomic), after a seeded delay of virtual time; due jobs run in
//!   seeded order and sometimes before ready tasks, so jobs finish in any order relative to
//!   each other and to the tasks that wait for them.
//! - **Timers.** `sleep_until` registers a waker at a virtual instant; when nothing is ready
//!   and no job is due, time jumps to the next timer or job.
//! - **Crashes.** Tasks and jobs belong to a group (one per server incarnation); `kill(group)`
//!   drops its tasks and its jobs that have not run, as `kill -9` would.
//!
//! Nothing else of the OS is simulated: binding or connecting TCP and spawning processes
//! fail (the host world reaches the server through in-memory sockets and models git).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graspd_host::runtime::{BoxFuture, Child, Connection, TcpListener};
use graspd_host::Runtime;

use crate::rng::Rng;

/// The wall clock's value at virtual time zero (2023-11-14T22:13:20Z).
pub const WALL_ORIGIN_SECS: u64 = 1_700_000_000;

/// Which incarnation a task or job belongs to; group 0 is the world (clients).
pub type Group = u32;

/// How long blocking jobs take, in virtual milliseconds (uniform in the range).
#[derive(Clone, Copy, Debug)]
pub struct JobDelays {
    pub min_ms: u64,
    pub max_ms: u64,
}

type TaskId = u64;

struct Task {
    group: Group,
    /// `None` while the task is being polled.
    future: Option<BoxFuture<'static, ()>>,
}

struct Job {
    group: Group,
    work: Box<dyn FnOnce() + Send>,
    done: Arc<JobSlot>,
}

#[derive(Default)]
struct JobSlot {
    state: Mutex<(Option<io::Result<()>>, Option<Waker>)>,
}

struct State {
    elapsed: Duration,
    rng: Rng,
    delays: JobDelays,
    next_seq: u64,
    tasks: BTreeMap<TaskId, Task>,
    /// Timers by (deadline, sequence): the waker to call.
    timers: BTreeMap<(Duration, u64), Waker>,
    /// Jobs by (due time, sequence).
    jobs: BTreeMap<(Duration, u64), Job>,
    polls: u64,
}

struct Shared {
    origin: Instant,
    state: Mutex<State>,
    /// Woken tasks; its own lock, since wakers are called from inside polls.
    ready: Mutex<BTreeSet<TaskId>>,
}

/// The simulated runtime. Cheap to clone; each clone spawns into its own [`Group`].
#[derive(Clone)]
pub struct SimRuntime {
    shared: Arc<Shared>,
    group: Group,
}

impl std::fmt::Debug for SimRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRuntime")
            .field("group", &self.group)
            .field("elapsed", &self.elapsed())
            .finish()
    }
}

/// What one [`SimRuntime::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Polled,
    RanJob,
    /// Time moved forward to the next timer or job.
    Advanced,
    /// No task is ready, and no timer or job is pending.
    Idle,
}

impl SimRuntime {
    pub fn new(rng: Rng, delays: JobDelays) -> SimRuntime {
        SimRuntime {
            shared: Arc::new(Shared {
                origin: Instant::now(),
                state: Mutex::new(State {
                    elapsed: Duration::ZERO,
                    rng,
                    delays,
                    next_seq: 0,
                    tasks: BTreeMap::new(),
                    timers: BTreeMap::new(),
                    jobs: BTreeMap::new(),
                    polls: 0,
                }),
                ready: Mutex::new(BTreeSet::new()),
            }),
            group: 0,
        }
    }

    /// A handle spawning into `group`.
    pub fn in_group(&self, group: Group) -> SimRuntime {
        SimRuntime {
            shared: Arc::clone(&self.shared),
            group,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ready(&self) -> MutexGuard<'_, BTreeSet<TaskId>> {
        self.shared.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.state().elapsed
    }

    /// Tasks polled so far.
    pub fn polls(&self) -> u64 {
        self.state().polls
    }

    /// Live tasks of `group`.
    pub fn tasks_in(&self, group: Group) -> usize {
        self.state()
            .tasks
            .values()
            .filter(|t| t.group == group)
            .count()
    }

    /// Drops every task of `group` and its jobs that have not run (a crash). Dropping runs
    /// destructors that may call back into the runtime, so it happens outside the lock.
    pub fn kill(&self, group: Group) {
        let (tasks, jobs) = {
            let mut state = self.state();
            let ids: Vec<TaskId> = state
                .tasks
                .iter()
                .filter(|(_, t)| t.group == group)
                .map(|(id, _)| *id)
                .collect();
            let tasks: Vec<Task> = ids.iter().filter_map(|id| state.tasks.remove(id)).collect();
            let keys: Vec<(Duration, u64)> = state
                .jobs
                .iter()
                .filter(|(_, j)| j.group == group)
                .map(|(k, _)| *k)
                .collect();
            let jobs: Vec<Job> = keys.iter().filter_map(|k| state.jobs.remove(k)).collect();
            (tasks, jobs)
        };
        drop(tasks);
        drop(jobs);
    }

    /// Does one thing: polls a ready task, runs a due job, or moves time to the next timer or
    /// job (waking what is due). Never moves time past `limit`.
    pub fn step(&self, limit: Duration) -> Step {
        let ready_len = self.ready().len();
        let (job, task) = {
            let mut state = self.state();
            let now = state.elapsed;
            let due: Vec<(Duration, u64)> = state
                .jobs
                .range(..=(now, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            // A due job runs first sometimes even when tasks are ready: a commit can land
            // between any two polls.
            let run_job = !due.is_empty() && (ready_len == 0 || state.rng.percent(25));
            if run_job {
                let key = due[state.rng.index(due.len())];
                (state.jobs.remove(&key), None)
            } else if ready_len > 0 {
                let pick = state.rng.index(ready_len);
                (None, Some(pick))
            } else {
                (None, None)
            }
        };
        if let Some(job) = job {
            let result = catch_unwind(AssertUnwindSafe(job.work))
                .map_err(|_| io::Error::other("blocking job panicked"));
            let waker = {
                let mut slot = job.done.state.lock().unwrap_or_else(|e| e.into_inner());
                slot.0 = Some(result);
                slot.1.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            return Step::RanJob;
        }
        if let Some(pick) = task {
            let id = {
                let mut ready = self.ready();
                let id = *ready.iter().nth(pick).expect("pick is below the length");
                ready.remove(&id);
                id
            };
            self.poll_task(id);
            return Step::Polled;
        }
        self.advance(limit)
    }

    fn poll_task(&self, id: TaskId) {
        let future = {
            let mut state = self.state();
            state.polls += 1;
            match state.tasks.get_mut(&id) {
                Some(task) => task.future.take(),
                None => None,
            }
        };
        let Some(mut future) = future else { return };
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            shared: Arc::downgrade(&self.shared),
        }));
        let mut cx = Context::from_waker(&waker);
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(()) => {
                self.state().tasks.remove(&id);
            }
            Poll::Pending => {
                let mut state = self.state();
                match state.tasks.get_mut(&id) {
                    Some(task) => task.future = Some(future),
                    // Killed while it ran: drop it outside the lock.
                    None => {
                        drop(state);
                        drop(future);
                    }
                }
            }
        }
    }

    fn advance(&self, limit: Duration) -> Step {
        let wakers = {
            let mut state = self.state();
            let next_timer = state.timers.keys().next().map(|(t, _)| *t);
            let next_job = state.jobs.keys().next().map(|(t, _)| *t);
            let Some(next) = [next_timer, next_job].into_iter().flatten().min() else {
                return Step::Idle;
            };
            let next = next.min(limit).max(state.elapsed);
            state.elapsed = next;
            let due: Vec<(Duration, u64)> = state
                .timers
                .range(..=(next, u64::MAX))
                .map(|(k, _)| *k)
                .collect();
            due.iter()
                .filter_map(|k| state.timers.remove(k))
                .collect::<Vec<Waker>>()
        };
        for waker in wakers {
            waker.wake();
        }
        Step::Advanced
    }

    /// Moves virtual time to `to` without running anything (when the world is idle until a
    /// scheduled action). Timers due by then fire at the next step.
    pub fn set_elapsed_at_least(&self, to: Duration) {
        let mut state = self.state();
        if state.elapsed < to {
            state.elapsed = to;
        }
    }

    /// True if a task is ready or a job is due now.
    pub fn busy(&self) -> bool {
        if !self.ready().is_empty() {
            return true;
        }
        let state = self.state();
        state
            .jobs
            .keys()
            .next()
            .is_some_and(|(t, _)| *t <= state.elapsed)
    }

    /// The next timer or job deadline, if any.
    pub fn next_deadline(&self) -> Option<Duration> {
        let state = self.state();
        let next_timer = state.timers.keys().next().map(|(t, _)| *t);
        let next_job = state.jobs.keys().next().map(|(t, _)| *t);
        [next_timer, next_job].into_iter().flatten().min()
    }

    fn register_timer(&self, at: Duration, previous: Option<u64>, waker: Waker) -> Option<u64> {
        let mut state = self.state();
        if let Some(seq) = previous {
            state.timers.remove(&(at, seq));
        }
        if at <= state.elapsed {
            return None;
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.timers.insert((at, seq), waker);
        Some(seq)
    }

    fn offset(&self, instant: Instant) -> Duration {
        instant.saturating_duration_since(self.shared.origin)
    }
}

struct TaskWaker {
    id: TaskId,
    shared: std::sync::Weak<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(shared) = self.shared.upgrade() {
            shared
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(self.id);
        }
    }
}

/// A virtual-time sleep; dropping it removes its timer.
struct Sleep {
    runtime: SimRuntime,
    at: Duration,
    timer: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.runtime.elapsed() >= self.at {
            self.timer = None;
            return Poll::Ready(());
        }
        let (at, previous) = (self.at, self.timer.take());
        self.timer = self
            .runtime
            .register_timer(at, previous, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(seq) = self.timer.take() {
            self.runtime.state().timers.remove(&(self.at, seq));
        }
    }
}

struct JobWait(Arc<JobSlot>);

impl Future for JobWait {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slot = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        match slot.0.take() {
            Some(result) => Poll::Ready(result),
            None => {
                slot.1 = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Runtime for SimRuntime {
    fn now(&self) -> Instant {
        self.shared.origin + self.elapsed()
    }

    fn wall_clock(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(WALL_ORIGIN_SECS) + self.elapsed()
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        let id = {
            let mut state = self.state();
            let id = state.next_seq;
            state.next_seq += 1;
            state.tasks.insert(
                id,
                Task {
                    group: self.group,
                    future: Some(future),
                },
            );
            id
        };
        self.ready().insert(id);
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<'static, ()> {
        Box::pin(Sleep {
            runtime: self.clone(),
            at: self.offset(deadline),
            timer: None,
        })
    }

    fn bind_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn TcpListener>>> {
        Box::pin(async move { Err(unsupported(&format!("binding {addr}"))) })
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Connection>> {
        Box::pin(async move { Err(unsupported(&format!("connecting to {addr}"))) })
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send>) -> BoxFuture<'static, io::Result<()>> {
        let done = Arc::new(JobSlot::default());
        {
            let mut state = self.state();
            let JobDelays { min_ms, max_ms } = state.delays;
            let delay = state.rng.range(min_ms, max_ms);
            let due = state.elapsed + Duration::from_millis(delay);
            let seq = state.next_seq;
            state.next_seq += 1;
            state.jobs.insert(
                (due, seq),
                Job {
                    group: self.group,
                    work,
                    done: Arc::clone(&done),
                },
            );
        }
        Box::pin(JobWait(done))
    }

    fn spawn_process(&self, command: std::process::Command) -> io::Result<Child> {
        Err(unsupported(&format!(
            "spawning {:?}",
            command.get_program()
        )))
    }

    fn shutdown_signal(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }
}

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("the simulated runtime has no OS: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_all(rt: &SimRuntime) {
        while rt.step(Duration::from_secs(3600)) != Step::Idle {}
    }

    #[test]
    fn sleeps_wake_in_virtual_time_order() {
        let rt = SimRuntime::new(
            Rng::new(1),
            JobDelays {
                min_ms: 0,
                max_ms: 5,
            },
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        for ms in [30u64, 10, 20] {
            let (r, log) = (rt.clone(), Arc::clone(&log));
            rt.spawn(Box::pin(async move {
                r.sleep(Duration::from_millis(ms)).await;
                log.lock().unwrap().push((ms, r.elapsed()));
            }));
        }
        run_all(&rt);
        let log = log.lock().unwrap().clone();
        assert_eq!(
            log,
            vec![
                (10, Duration::from_millis(10)),
                (20, Duration::from_millis(20)),
                (30, Duration::from_millis(30))
            ]
        );
    }

    #[test]
    fn blocking_jobs_finish_in_seeded_order_and_the_same_seed_repeats() {
        let order = |seed| {
            let rt = SimRuntime::new(
                Rng::new(seed),
                JobDelays {
                    min_ms: 0,
                    max_ms: 50,
                },
            );
            let log = Arc::new(Mutex::new(Vec::new()));
            for n in 0..8 {
                let (r, log) = (rt.clone(), Arc::clone(&log));
                rt.spawn(Box::pin(async move {
                    let inner = Arc::clone(&log);
                    graspd_host::runtime::unblock(&r, move || inner.lock().unwrap().push(n))
                        .await
                        .unwrap();
                }));
            }
            run_all(&rt);
            let log = log.lock().unwrap().clone();
            log
        };
        assert_eq!(order(3), order(3));
        let orders: BTreeSet<Vec<i32>> = (0..20).map(order).collect();
        assert!(orders.len() > 1, "jobs always finished in the same order");
    }

    #[test]
    fn kill_drops_a_groups_tasks_and_unrun_jobs() {
        let rt = SimRuntime::new(
            Rng::new(5),
            JobDelays {
                min_ms: 10,
                max_ms: 10,
            },
        );
        let ran = Arc::new(Mutex::new(false));
        let node = rt.in_group(1);
        let flag = Arc::clone(&ran);
        let inner = node.clone();
        node.spawn(Box::pin(async move {
            graspd_host::runtime::unblock(&inner, move || *flag.lock().unwrap() = true)
                .await
                .unwrap();
        }));
        assert_eq!(rt.step(Duration::from_secs(1)), Step::Polled);
        rt.kill(1);
        run_all(&rt);
        assert!(!*ran.lock().unwrap());
        assert_eq!(rt.tasks_in(1), 0);
    }
}
