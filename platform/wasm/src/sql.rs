//! The `sql` import of the connector worlds. This crate only carries calls across: what answers them
//! is a [`SqlHost`] that the connector runtime (`sluice-connect`, over its database drivers) hands to
//! the instance in [`crate::InstanceConfig::sql`]. Every call runs through
//! `HostState::uncharged`, so the time a guest spends waiting on its database is not charged to its
//! CPU bound (up to `HOST_WAIT_MS_PER_CALL_MAX` per call). An instance made without a `SqlHost` (a
//! connector whose config declares no database) gets `unknown-connection` for every name.

use crate::bindings::sql::{self, Connection, Failure, Rows, SqlError, Value};
use crate::host::HostState;

pub use crate::bindings::sql::{
    Column as SqlColumn, Connection as SqlConnection, Dialect as SqlDialect, Failure as SqlFailure, Rows as SqlRows,
    SqlError as SqlCallError, Value as SqlValue,
};

/// What answers a connector's `sql` calls. Shared by the instance and the runtime, which owns the
/// managed connection's transaction (it begins it before a sink's `put` and commits it, with the
/// input position, after), hence `&self`: an implementation locks inside.
pub trait SqlHost: Send + Sync {
    fn open(&self, name: &str) -> Result<Connection, SqlError>;
    fn close(&self, handle: u32);
    fn query(&self, handle: u32, statement: &str, params: Vec<Value>) -> Result<Rows, SqlError>;
    fn execute(&self, handle: u32, statement: &str, params: Vec<Value>) -> Result<u64, SqlError>;
    fn execute_batch(&self, handle: u32, statement: &str, rows: Vec<Vec<Value>>) -> Result<Vec<u64>, SqlError>;
    fn begin(&self, handle: u32) -> Result<(), SqlError>;
    fn commit(&self, handle: u32) -> Result<(), SqlError>;
    fn rollback(&self, handle: u32) -> Result<(), SqlError>;
}

fn no_databases() -> SqlError {
    SqlError {
        failure: Failure::UnknownConnection,
        sqlstate: None,
        message: "this connector's config declares no database connection (set connection.url)".to_owned(),
    }
}

impl HostState {
    /// Runs one `sql` call on the instance's [`SqlHost`], uncharged.
    fn sql_call<R>(&mut self, call: impl FnOnce(&dyn SqlHost) -> Result<R, SqlError>) -> Result<R, SqlError> {
        let Some(host) = self.sql.clone() else { return Err(no_databases()) };
        self.uncharged(|_| call(host.as_ref()))
    }
}

impl sql::Host for HostState {
    fn open(&mut self, name: String) -> Result<Connection, SqlError> {
        self.sql_call(|sql| sql.open(&name))
    }

    fn close(&mut self, handle: u32) {
        if let Some(host) = self.sql.clone() {
            self.uncharged(|_| host.close(handle));
        }
    }

    fn query(&mut self, handle: u32, statement: String, params: Vec<Value>) -> Result<Rows, SqlError> {
        self.sql_call(|sql| sql.query(handle, &statement, params))
    }

    fn execute(&mut self, handle: u32, statement: String, params: Vec<Value>) -> Result<u64, SqlError> {
        self.sql_call(|sql| sql.execute(handle, &statement, params))
    }

    fn execute_batch(&mut self, handle: u32, statement: String, rows: Vec<Vec<Value>>) -> Result<Vec<u64>, SqlError> {
        self.sql_call(|sql| sql.execute_batch(handle, &statement, rows))
    }

    fn begin(&mut self, handle: u32) -> Result<(), SqlError> {
        self.sql_call(|sql| sql.begin(handle))
    }

    fn commit(&mut self, handle: u32) -> Result<(), SqlError> {
        self.sql_call(|sql| sql.commit(handle))
    }

    fn rollback(&mut self, handle: u32) -> Result<(), SqlError> {
        self.sql_call(|sql| sql.rollback(handle))
    }
}
