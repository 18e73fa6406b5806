//! Statements prepared once per connection and reused.
//!
//! Running SQL text costs two round trips (parse and describe, then bind and execute) and a
//! parse and plan on the server every time; a statement prepared once costs one round trip
//! per run. Each pooled connection keeps the statements prepared on it by their text (the
//! text is the key: the store's SQL is fixed, but for filters, whose shapes are few). The
//! cache is bounded; when full it is emptied, which closes its statements on the server.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, Error, GenericClient, Row, Statement};

/// Statements kept per connection at most.
const CAPACITY: usize = 256;

/// The statements prepared on one connection, by their SQL.
pub struct Statements(HashMap<Box<str>, Statement>);

impl Statements {
    /// None yet, for a new connection. A prepared statement is planned for its parameters at
    /// each run, as text is: a filter's plan depends on its values (a plan made once for any
    /// values scanned the whole time index for one author's announcement).
    pub fn for_connection(client: &mut Client) -> Statements {
        if let Err(error) = client.batch_execute("SET plan_cache_mode = force_custom_plan") {
            tracing::warn!(%error, "cannot plan prepared statements per run; filters may be slower");
        }
        Statements(HashMap::new())
    }

    /// The statement for `sql`, prepared on `client`'s connection the first time.
    fn get(&mut self, client: &mut impl GenericClient, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.0.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        if self.0.len() >= CAPACITY {
            self.0.clear();
        }
        self.0.insert(sql.into(), statement.clone());
        Ok(statement)
    }
}

/// A connection or transaction that runs SQL through its connection's prepared statements.
pub struct Cached<'a, C> {
    pub client: &'a mut C,
    statements: &'a mut Statements,
}

impl<'a, C: GenericClient> Cached<'a, C> {
    pub fn new(client: &'a mut C, statements: &'a mut Statements) -> Cached<'a, C> {
        Cached { client, statements }
    }

    pub fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query(&statement, params)
    }

    pub fn query_opt(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query_opt(&statement, params)
    }

    pub fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.query_one(&statement, params)
    }

    pub fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        let statement = self.statements.get(self.client, sql)?;
        self.client.execute(&statement, params)
    }
}
