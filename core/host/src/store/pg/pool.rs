//! A small bounded pool of PostgreSQL connections.
//!
//! At most `size` connections are open; a caller waits for one at most [`WAIT`]. A
//! connection that broke (the server restarted, the network dropped) is dropped on return and
//! a new one is made on the next demand, so the store recovers by itself once the database is
//! back. Each connection keeps the statements prepared on it (`statements.rs`).

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::{Client, Config, NoTls};

use super::statements::Statements;

/// The longest a caller waits with no connection coming free before its operation fails
/// (the wait starts again whenever one is returned but taken by another caller).
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Pool {
    config: Config,
    size: usize,
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    idle: Vec<Connection>,
    /// Connections handed out or idle.
    open: usize,
}

impl Pool {
    pub fn new(config: Config, size: usize) -> Pool {
        Pool {
            config,
            size: size.max(1),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: an idle one, a new one while fewer than `size` are open, else the next
    /// one returned (failing after [`WAIT`] with none returned).
    pub fn get(&self) -> Result<Pooled<'_>, String> {
        let mut state = self.lock();
        loop {
            if let Some(connection) = state.idle.pop() {
                return Ok(Pooled {
                    pool: self,
                    connection: Some(connection),
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.config.connect(NoTls) {
                    Ok(mut client) => Ok(Pooled {
                        pool: self,
                        connection: Some(Connection {
                            statements: Statements::for_connection(&mut client),
                            client,
                        }),
                    }),
                    Err(error) => {
                        self.lock().open -= 1;
                        self.returned.notify_one();
                        Err(format!("cannot connect: {}", with_causes(&error)))
                    }
                };
            }
            let (next, waited) = self
                .returned
                .wait_timeout(state, WAIT)
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if waited.timed_out() && state.idle.is_empty() && state.open >= self.size {
                return Err(format!(
                    "no database connection came free within {}s (all {} in use)",
                    WAIT.as_secs(),
                    self.size
                ));
            }
        }
    }
}

/// An open connection and the statements prepared on it.
struct Connection {
    client: Client,
    statements: Statements,
}

/// A connection lent by the pool; it goes back when dropped.
pub struct Pooled<'a> {
    pool: &'a Pool,
    connection: Option<Connection>,
}

impl Pooled<'_> {
    /// The connection and its prepared statements, to run them on it (`statements.rs`).
    pub fn with_statements(&mut self) -> (&mut Client, &mut Statements) {
        let connection = self.connection.as_mut().expect("present until dropped");
        (&mut connection.client, &mut connection.statements)
    }
}

impl Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self
            .connection
            .as_ref()
            .expect("present until dropped")
            .client
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self
            .connection
            .as_mut()
            .expect("present until dropped")
            .client
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if connection.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(connection);
        }
        drop(state);
        self.pool.returned.notify_one();
    }
}

/// An error with its causes (`error connecting to server: Connection refused (os error 111)`).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(&format!(": {next}"));
        cause = next.source();
    }
    text
}
