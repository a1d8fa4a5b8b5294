//! The ScyllaDB (or Cassandra) services store, through the `scylla` driver.
//!
//! Owns the services' keyspace: it creates the keyspace and one table per
//! [`Table`] at start-up when they are missing, prepares every statement
//! once, and maps the store boundary onto CQL. It must not depend on any
//! service: it knows tables, keys and bytes only.
//!
//! # Schema
//!
//! - Record tables: `(key text PRIMARY KEY, value blob, version bigint)`.
//!   Every write is a lightweight transaction (LWT) that sets `value` and
//!   `version` together, with `USING TTL` when the record expires (seconds,
//!   rounded up, plus one: see `ttl_seconds`; TTL 0 means none).
//! - Index tables: `(partition text, sort text, value blob,
//!   PRIMARY KEY (partition, sort)) WITH CLUSTERING ORDER BY (sort ASC)`,
//!   written with plain (non-LWT) statements.
//!
//! Record tables are LWT-only and index tables plain-only. Mixing LWT and
//! non-LWT writes on one table breaks linearizability: plain writes carry
//! client or coordinator timestamps that Paxos does not order against its
//! ballots.
//!
//! # Why records are created with `UPDATE ... IF version = null`
//!
//! `INSERT ... IF NOT EXISTS` also writes a row marker. A later
//! `UPDATE ... USING TTL` gives the columns a TTL but cannot touch the
//! marker, so a record inserted without TTL (or a longer one) and replaced
//! with a shorter TTL would outlive its expiry as a row of nulls: `IF NOT
//! EXISTS` would still see it and the key would never be free again.
//! Creating records with `UPDATE` writes no marker, so a record lives exactly
//! as long as its cells and an expired record is absent for every statement,
//! as in the embedded store. In LWT conditions `null = null` holds on both
//! ScyllaDB and Cassandra, so `IF version = null` applies exactly when no
//! live record exists.
//!
//! # Consistency
//!
//! - Conditions (the Paxos rounds of every record write): `SERIAL`, so state
//!   transitions are linearizable across datacenters too, not only within
//!   one (`LOCAL_SERIAL`).
//! - Everything else, including the commit of an LWT and every read:
//!   `LOCAL_QUORUM` (the same as `QUORUM` in a single datacenter). A read in
//!   another datacenter may be stale; that is harmless because services
//!   re-check with a conditional write, which runs at `SERIAL`.
//! - A conditional write that fails with [`StoreError::Unavailable`] (a
//!   timeout, for example) has an unknown outcome: the caller re-reads.
//!
//! # `[applied]`
//!
//! ScyllaDB answers an LWT with `[applied]` plus the condition's columns;
//! Cassandra answers with `[applied]` alone on success and `[applied]` plus
//! the current values on failure. `applied` therefore finds the column by
//! name in the result's column specs and never decodes the row into a fixed
//! shape.
//!
//! # Keyspace
//!
//! Created with `tablets = {'enabled': false}`: recent ScyllaDB releases do
//! not support LWT in tablets keyspaces. Cassandra and older ScyllaDB reject
//! that option (Cassandra 5.0: a syntax error, "Unknown property
//! 'tablets'"), so creation is retried without it on a syntax, invalid or
//! configuration error. A keyspace that already exists is left as it is,
//! with whatever replication and tablets setting it has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError,
    SchemaAgreementError,
};
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use scylla::value::{CqlValue, Row as CqlRow};

use super::config::StoreConfig;
use super::{Row, RowRange, ServiceStore, StoreError, Table, Versioned};

/// Longest TTL ScyllaDB and Cassandra accept (20 years, in seconds).
const MAX_TTL_SECONDS: u64 = 630_720_000;

/// Deadline of one schema statement: DDL waits for the cluster to agree.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// The column every LWT result carries.
const APPLIED: &str = "[applied]";

/// The statements prepared for each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// Records: read one record.
    Get,
    /// Records: create if absent.
    Insert,
    /// Records: replace if the version matches.
    Replace,
    /// Records: delete whatever version is live.
    DeleteAny,
    /// Records: delete if the version matches.
    DeleteVersion,
    /// Index: write one row.
    PutRow,
    /// Index: delete one row.
    DeleteRow,
    /// Index: one partition's rows, with the bounds that are present.
    Rows {
        descending: bool,
        /// `sort > ?`.
        above: bool,
        upper: Upper,
    },
}

/// The upper bound of a rows query. CQL takes at most one per column, so a
/// descending read with both `after` and `up_to` binds the stricter one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Upper {
    None,
    /// `sort < ?`.
    Below,
    /// `sort <= ?`.
    UpTo,
}

impl Kind {
    const RECORD: [Kind; 5] = [
        Kind::Get,
        Kind::Insert,
        Kind::Replace,
        Kind::DeleteAny,
        Kind::DeleteVersion,
    ];

    fn index() -> impl Iterator<Item = Kind> {
        let reads = [false, true].into_iter().flat_map(|descending| {
            [false, true].into_iter().flat_map(move |above| {
                [Upper::None, Upper::Below, Upper::UpTo]
                    .into_iter()
                    .map(move |upper| Kind::Rows {
                        descending,
                        above,
                        upper,
                    })
            })
        });
        [Kind::PutRow, Kind::DeleteRow].into_iter().chain(reads)
    }

    /// Whether running the statement twice has the effect of running it
    /// once: lets the driver retry it and run it speculatively. LWTs are
    /// not (a retried insert would report "exists" for its own write).
    fn idempotent(self) -> bool {
        matches!(
            self,
            Kind::Get | Kind::PutRow | Kind::DeleteRow | Kind::Rows { .. }
        )
    }

    /// The statement's CQL against `ks.t`.
    fn cql(self, ks: &str, t: &str) -> String {
        match self {
            Kind::Get => format!("SELECT value, version FROM {ks}.{t} WHERE key = ?"),
            Kind::Insert => format!(
                "UPDATE {ks}.{t} USING TTL ? SET value = ?, version = 1 \
                 WHERE key = ? IF version = null"
            ),
            Kind::Replace => format!(
                "UPDATE {ks}.{t} USING TTL ? SET value = ?, version = ? \
                 WHERE key = ? IF version = ?"
            ),
            Kind::DeleteAny => format!("DELETE FROM {ks}.{t} WHERE key = ? IF EXISTS"),
            Kind::DeleteVersion => {
                format!("DELETE FROM {ks}.{t} WHERE key = ? IF version = ?")
            }
            Kind::PutRow => {
                format!("INSERT INTO {ks}.{t} (partition, sort, value) VALUES (?, ?, ?)")
            }
            Kind::DeleteRow => {
                format!("DELETE FROM {ks}.{t} WHERE partition = ? AND sort = ?")
            }
            Kind::Rows {
                descending,
                above,
                upper,
            } => {
                let mut cql = format!("SELECT sort, value FROM {ks}.{t} WHERE partition = ?");
                if above {
                    cql.push_str(" AND sort > ?");
                }
                cql.push_str(match upper {
                    Upper::None => "",
                    Upper::Below => " AND sort < ?",
                    Upper::UpTo => " AND sort <= ?",
                });
                cql.push_str(if descending {
                    " ORDER BY sort DESC"
                } else {
                    " ORDER BY sort ASC"
                });
                cql.push_str(" LIMIT ?");
                cql
            }
        }
    }
}

/// The ScyllaDB services store.
pub struct ScyllaStore {
    session: Session,
    statements: HashMap<(Table, Kind), PreparedStatement>,
}

impl ScyllaStore {
    /// Connects to the cluster, creates the keyspace and tables when they
    /// are missing, and prepares every statement.
    pub async fn connect(config: &StoreConfig) -> Result<ScyllaStore, StoreError> {
        let keyspace = checked_keyspace(&config.keyspace)?;
        let session = open_session(config).await?;
        create_keyspace(&session, config, keyspace).await?;
        for table in Table::ALL {
            ddl(&session, &table_cql(keyspace, table))
                .await
                .map_err(|e| execution_error(&format!("create table {}", table.name()), e))?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(schema_agreement_error)?;

        let mut statements = HashMap::new();
        for table in Table::ALL {
            let kinds: Vec<Kind> = if table.is_index() {
                Kind::index().collect()
            } else {
                Kind::RECORD.to_vec()
            };
            for kind in kinds {
                let mut prepared = session
                    .prepare(kind.cql(keyspace, table.name()))
                    .await
                    .map_err(|e| prepare_error(table, e))?;
                prepared.set_is_idempotent(kind.idempotent());
                statements.insert((table, kind), prepared);
            }
        }
        Ok(ScyllaStore {
            session,
            statements,
        })
    }

    fn statement(&self, table: Table, kind: Kind) -> Result<&PreparedStatement, StoreError> {
        self.statements.get(&(table, kind)).ok_or_else(|| {
            let expected = if table.is_index() { "index" } else { "record" };
            StoreError::Io(format!(
                "table {} is a {expected} table: it has no {kind:?} statement",
                table.name()
            ))
        })
    }

    /// One record, at the session's read consistency or at `consistency`.
    async fn read_record(
        &self,
        table: Table,
        key: &str,
        consistency: Option<Consistency>,
    ) -> Result<Option<Versioned>, StoreError> {
        let prepared = self.statement(table, Kind::Get)?;
        let what = op(Kind::Get, table);
        let serial;
        let statement = match consistency {
            Some(c) => {
                let mut s = prepared.clone();
                s.set_consistency(c);
                serial = s;
                &serial
            }
            None => prepared,
        };
        let result = self
            .session
            .execute_unpaged(statement, (key,))
            .await
            .map_err(|e| execution_error(&what, e))?;
        let rows = result
            .into_rows_result()
            .map_err(|e| decode_error(&what, e))?;
        let row: Option<(Option<Vec<u8>>, Option<i64>)> =
            rows.maybe_first_row().map_err(|e| decode_error(&what, e))?;
        match row {
            // No row, or no live version: no live record (the condition of
            // `insert`, `IF version = null`, agrees).
            None | Some((_, None)) => Ok(None),
            Some((Some(value), Some(version))) => {
                let version = u64::try_from(version)
                    .map_err(|_| StoreError::Io(format!("{what}: negative version {version}")))?;
                Ok(Some(Versioned { value, version }))
            }
            Some((None, Some(version))) => Err(StoreError::Io(format!(
                "{what}: record {key:?} has version {version} but no value"
            ))),
        }
    }

    /// Runs one LWT and reads its `[applied]`.
    async fn conditional(
        &self,
        table: Table,
        kind: Kind,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> Result<bool, StoreError> {
        let statement = self.statement(table, kind)?;
        let result = self
            .session
            .execute_unpaged(statement, values)
            .await
            .map_err(|e| execution_error(&op(kind, table), e))?;
        applied(result).map_err(|e| StoreError::Io(format!("{}: {e}", op(kind, table))))
    }
}

fn op(kind: Kind, table: Table) -> String {
    format!("{kind:?} on {}", table.name()).to_lowercase()
}

/// The keyspace name, refused unless it is a plain CQL identifier: it is
/// spliced into statements.
fn checked_keyspace(keyspace: &str) -> Result<&str, StoreError> {
    let plain = !keyspace.is_empty()
        && keyspace.len() <= 48
        && keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
        && keyspace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        Ok(keyspace)
    } else {
        Err(StoreError::Io(format!(
            "keyspace {keyspace:?} must be 1 to 48 letters, digits or _, starting with a letter"
        )))
    }
}

async fn open_session(config: &StoreConfig) -> Result<Session, StoreError> {
    let mut profile = ExecutionProfile::builder()
        .consistency(Consistency::LocalQuorum)
        .serial_consistency(Some(SerialConsistency::Serial))
        .request_timeout(Some(config.request_timeout));
    if !config.datacenter.is_empty() {
        profile = profile.load_balancing_policy(
            DefaultPolicy::builder()
                .prefer_datacenter(config.datacenter.clone())
                .token_aware(true)
                .permit_dc_failover(false)
                .build(),
        );
    }
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.scylla_nodes)
        .default_execution_profile_handle(profile.build().into_handle())
        // Client-side, per-process monotonic timestamps: a delete of an
        // index row that follows its put from this process always wins,
        // whichever coordinators the two statements reach. (LWTs take their
        // timestamps from Paxos ballots instead.)
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
    if !config.username.is_empty() {
        builder = builder.user(&config.username, &config.password);
    }
    builder.build().await.map_err(new_session_error)
}

async fn create_keyspace(
    session: &Session,
    config: &StoreConfig,
    keyspace: &str,
) -> Result<(), StoreError> {
    let replication = if config.datacenter.is_empty() {
        format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            config.replication_factor
        )
    } else {
        format!(
            "{{'class': 'NetworkTopologyStrategy', '{}': {}}}",
            config.datacenter.replace('\'', "''"),
            config.replication_factor
        )
    };
    let create =
        format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}");
    match ddl(
        session,
        &format!("{create} AND tablets = {{'enabled': false}}"),
    )
    .await
    {
        Ok(()) => Ok(()),
        // Cassandra and ScyllaDB before tablets do not know the option.
        Err(e) if rejects_statement(&e) => ddl(session, &create)
            .await
            .map_err(|e| execution_error("create keyspace", e)),
        Err(e) => Err(execution_error("create keyspace", e)),
    }
}

/// Whether the server refused the statement itself (syntax, unknown
/// option), as opposed to failing to run it.
fn rejects_statement(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::SyntaxError | DbError::Invalid | DbError::ConfigError,
            _
        ))
    )
}

fn table_cql(keyspace: &str, table: Table) -> String {
    let t = table.name();
    if table.is_index() {
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{t} \
             (partition text, sort text, value blob, PRIMARY KEY (partition, sort)) \
             WITH CLUSTERING ORDER BY (sort ASC)"
        )
    } else {
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.{t} \
             (key text PRIMARY KEY, value blob, version bigint)"
        )
    }
}

async fn ddl(session: &Session, cql: &str) -> Result<(), ExecutionError> {
    let mut statement = Statement::new(cql);
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    session.query_unpaged(statement, ()).await.map(|_| ())
}

/// Whether an LWT applied, read from the `[applied]` column by name (see the
/// module doc for why never by position or fixed shape).
fn applied(result: QueryResult) -> Result<bool, String> {
    let rows = result
        .into_rows_result()
        .map_err(|e| format!("lwt result has no rows: {e}"))?;
    let columns: Vec<&str> = rows.column_specs().iter().map(|c| c.name()).collect();
    let row: Option<CqlRow> = rows
        .maybe_first_row()
        .map_err(|e| format!("lwt result does not decode: {e}"))?;
    applied_in(&columns, row.as_ref())
}

/// The `[applied]` value of an LWT result row whose columns are named
/// `columns`.
fn applied_in(columns: &[&str], row: Option<&CqlRow>) -> Result<bool, String> {
    let index = columns
        .iter()
        .position(|name| *name == APPLIED)
        .ok_or_else(|| format!("lwt result has no {APPLIED} column (columns: {columns:?})"))?;
    let row = row.ok_or_else(|| "lwt result has no row".to_owned())?;
    match row.columns.get(index) {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(format!("lwt result: {APPLIED} is not a boolean: {other:?}")),
    }
}

/// A TTL in whole seconds for `USING TTL` (0: no expiry). Rounded up, plus
/// one second: the server's expiry clock counts whole seconds, so a cell
/// written at x.9 s with TTL n dies at x + n, up to a second early. The
/// extra second guarantees at least the requested lifetime (an expired
/// record may stay readable up to two seconds longer than asked; never
/// shorter). Capped at the server's maximum.
fn ttl_seconds(ttl: Option<Duration>) -> i32 {
    let Some(ttl) = ttl else { return 0 };
    let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let seconds = whole.saturating_add(1).min(MAX_TTL_SECONDS);
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// The sort-key bounds of a rows read: the exclusive lower bound and the
/// upper bound with its kind. Ascending, `after` is the lower bound and
/// `up_to` the upper; descending, both are upper bounds and the stricter one
/// is kept (`sort < after` implies `sort <= up_to` when `after <= up_to`).
fn bounds(
    descending: bool,
    after: Option<String>,
    up_to: Option<String>,
) -> (Option<String>, Option<(Upper, String)>) {
    if !descending {
        return (after, up_to.map(|u| (Upper::UpTo, u)));
    }
    let upper = match (after, up_to) {
        (None, None) => None,
        (Some(after), None) => Some((Upper::Below, after)),
        (None, Some(up_to)) => Some((Upper::UpTo, up_to)),
        (Some(after), Some(up_to)) if after <= up_to => Some((Upper::Below, after)),
        (Some(_), Some(up_to)) => Some((Upper::UpTo, up_to)),
    };
    (None, upper)
}

fn version_to_cql(version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Io(format!("version {version} is out of range")))
}

fn unavailable_attempt(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::UnableToAllocStreamId
        | RequestAttemptError::BrokenConnectionError(_) => true,
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::RateLimitReached { .. }
        ),
        _ => false,
    }
}

fn unavailable_prepare(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => unavailable_attempt(first_attempt),
        _ => false,
    }
}

fn classify(unavailable: bool, message: String) -> StoreError {
    if unavailable {
        StoreError::Unavailable(message)
    } else {
        StoreError::Io(message)
    }
}

/// Maps a driver error: connection, timeout and overload failures are
/// `Unavailable` (retry later), the rest `Io`.
fn execution_error(what: &str, e: ExecutionError) -> StoreError {
    let unavailable = match &e {
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        ExecutionError::LastAttemptError(attempt) => unavailable_attempt(attempt),
        ExecutionError::PrepareError(prepare) => unavailable_prepare(prepare),
        _ => false,
    };
    classify(unavailable, format!("{what}: {e}"))
}

fn prepare_error(table: Table, e: PrepareError) -> StoreError {
    classify(
        unavailable_prepare(&e),
        format!("prepare statements of {}: {e}", table.name()),
    )
}

fn new_session_error(e: NewSessionError) -> StoreError {
    match e {
        NewSessionError::IllegalConfig(_) | NewSessionError::EmptyKnownNodesList => {
            StoreError::Io(format!("scylla session: {e}"))
        }
        // Unresolvable or unreachable nodes, failed metadata fetch.
        e => StoreError::Unavailable(format!("scylla session: {e}")),
    }
}

fn schema_agreement_error(e: SchemaAgreementError) -> StoreError {
    StoreError::Unavailable(format!("schema agreement: {e}"))
}

fn decode_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("{what}: row does not decode: {e}"))
}

#[async_trait]
impl ServiceStore for ScyllaStore {
    fn kind(&self) -> &'static str {
        "scylla"
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.read_record(table, key, None).await
    }

    async fn get_linearizable(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<Versioned>, StoreError> {
        self.read_record(table, key, Some(Consistency::Serial))
            .await
    }

    async fn insert(
        &self,
        table: Table,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        self.conditional(table, Kind::Insert, (ttl_seconds(ttl), value, key))
            .await
    }

    async fn replace(
        &self,
        table: Table,
        key: &str,
        version: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let expected = version_to_cql(version)?;
        let next = version_to_cql(version.saturating_add(1))?;
        self.conditional(
            table,
            Kind::Replace,
            (ttl_seconds(ttl), value, next, key, expected),
        )
        .await
    }

    async fn delete(
        &self,
        table: Table,
        key: &str,
        version: Option<u64>,
    ) -> Result<bool, StoreError> {
        match version {
            None => self.conditional(table, Kind::DeleteAny, (key,)).await,
            Some(version) => {
                let expected = version_to_cql(version)?;
                self.conditional(table, Kind::DeleteVersion, (key, expected))
                    .await
            }
        }
    }

    async fn put_row(
        &self,
        table: Table,
        partition: &str,
        sort: &str,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        let statement = self.statement(table, Kind::PutRow)?;
        self.session
            .execute_unpaged(statement, (partition, sort, value))
            .await
            .map_err(|e| execution_error(&op(Kind::PutRow, table), e))?;
        Ok(())
    }

    async fn delete_row(
        &self,
        table: Table,
        partition: &str,
        sort: &str,
    ) -> Result<(), StoreError> {
        let statement = self.statement(table, Kind::DeleteRow)?;
        self.session
            .execute_unpaged(statement, (partition, sort))
            .await
            .map_err(|e| execution_error(&op(Kind::DeleteRow, table), e))?;
        Ok(())
    }

    async fn rows(
        &self,
        table: Table,
        partition: &str,
        range: RowRange,
    ) -> Result<Vec<Row>, StoreError> {
        // CQL refuses LIMIT 0.
        if range.limit == 0 {
            return Ok(Vec::new());
        }
        let (above, upper) = bounds(range.descending, range.after, range.up_to);
        let kind = Kind::Rows {
            descending: range.descending,
            above: above.is_some(),
            upper: upper.as_ref().map_or(Upper::None, |(kind, _)| *kind),
        };
        let statement = self.statement(table, kind)?;
        let what = op(kind, table);
        // Bind values in the statement's order: partition, lower bound,
        // upper bound, limit.
        let limit = i32::try_from(range.limit).unwrap_or(i32::MAX);
        let mut values = vec![CqlValue::Text(partition.to_owned())];
        values.extend(above.map(CqlValue::Text));
        values.extend(upper.map(|(_, sort)| CqlValue::Text(sort)));
        values.push(CqlValue::Int(limit));

        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(statement, &values, paging)
                .await
                .map_err(|e| execution_error(&what, e))?;
            let rows = result
                .into_rows_result()
                .map_err(|e| decode_error(&what, e))?;
            for row in rows
                .rows::<(String, Option<Vec<u8>>)>()
                .map_err(|e| decode_error(&what, e))?
            {
                let (sort, value) = row.map_err(|e| decode_error(&what, e))?;
                out.push(Row {
                    sort,
                    value: value.unwrap_or_default(),
                });
            }
            match next {
                PagingStateResponse::HasMorePages { state } if out.len() < range.limit => {
                    paging = state;
                }
                _ => break,
            }
        }
        out.truncate(range.limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: Vec<Option<CqlValue>>) -> CqlRow {
        CqlRow { columns: values }
    }

    #[test]
    fn applied_is_found_by_name_in_every_result_shape() {
        // ScyllaDB: `[applied]` plus the condition's columns, on success too.
        let scylla = row(vec![Some(CqlValue::Boolean(true)), None]);
        assert_eq!(
            applied_in(&["[applied]", "version"], Some(&scylla)),
            Ok(true)
        );
        // Cassandra, success: `[applied]` alone.
        let cassandra_ok = row(vec![Some(CqlValue::Boolean(true))]);
        assert_eq!(applied_in(&["[applied]"], Some(&cassandra_ok)), Ok(true));
        // Cassandra, failure: `[applied]` plus the current row.
        let cassandra_failed = row(vec![
            Some(CqlValue::Boolean(false)),
            Some(CqlValue::Text("k".into())),
            Some(CqlValue::Blob(b"v".to_vec())),
            Some(CqlValue::BigInt(3)),
        ]);
        assert_eq!(
            applied_in(
                &["[applied]", "key", "value", "version"],
                Some(&cassandra_failed)
            ),
            Ok(false)
        );
        // Not first: still found by name.
        let moved = row(vec![
            Some(CqlValue::BigInt(3)),
            Some(CqlValue::Boolean(false)),
        ]);
        assert_eq!(
            applied_in(&["version", "[applied]"], Some(&moved)),
            Ok(false)
        );
    }

    #[test]
    fn a_malformed_lwt_result_is_an_error_not_a_panic() {
        let boolean = row(vec![Some(CqlValue::Boolean(true))]);
        assert!(
            applied_in(&["version"], Some(&boolean)).is_err(),
            "no column"
        );
        assert!(applied_in(&["[applied]"], None).is_err(), "no row");
        let null = row(vec![None]);
        assert!(applied_in(&["[applied]"], Some(&null)).is_err(), "null");
        let text = row(vec![Some(CqlValue::Text("true".into()))]);
        assert!(
            applied_in(&["[applied]"], Some(&text)).is_err(),
            "not a boolean"
        );
        let short = row(vec![]);
        assert!(
            applied_in(&["[applied]"], Some(&short)).is_err(),
            "short row"
        );
    }

    #[test]
    fn ttls_round_up_never_shorter_than_asked() {
        assert_eq!(ttl_seconds(None), 0);
        assert_eq!(ttl_seconds(Some(Duration::ZERO)), 1);
        assert_eq!(ttl_seconds(Some(Duration::from_millis(100))), 2);
        assert_eq!(ttl_seconds(Some(Duration::from_secs(1))), 2);
        assert_eq!(ttl_seconds(Some(Duration::from_millis(1001))), 3);
        assert_eq!(
            ttl_seconds(Some(Duration::from_secs(u64::MAX))),
            MAX_TTL_SECONDS as i32
        );
    }

    #[test]
    fn keyspace_names_are_plain_identifiers() {
        assert!(checked_keyspace("flashmall_test_0af3").is_ok());
        assert!(checked_keyspace("").is_err());
        assert!(checked_keyspace("1abc").is_err());
        assert!(checked_keyspace("a; DROP KEYSPACE x").is_err());
        assert!(checked_keyspace(&"a".repeat(49)).is_err());
    }

    #[test]
    fn statements_bind_in_the_documented_order() {
        let descending = Kind::Rows {
            descending: true,
            above: false,
            upper: Upper::Below,
        };
        assert_eq!(
            descending.cql("ks", "t"),
            "SELECT sort, value FROM ks.t WHERE partition = ? AND sort < ? \
             ORDER BY sort DESC LIMIT ?"
        );
        let ascending = Kind::Rows {
            descending: false,
            above: true,
            upper: Upper::UpTo,
        };
        assert_eq!(
            ascending.cql("ks", "t"),
            "SELECT sort, value FROM ks.t WHERE partition = ? AND sort > ? \
             AND sort <= ? ORDER BY sort ASC LIMIT ?"
        );
        assert_eq!(Kind::index().count(), 14);
        assert!(Kind::RECORD.iter().all(|k| !matches!(k, Kind::Rows { .. })));
        assert!(!Kind::Insert.idempotent() && !Kind::Replace.idempotent());
    }

    #[test]
    fn a_descending_read_binds_the_stricter_upper_bound() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            bounds(false, s("b"), s("d")),
            (s("b"), Some((Upper::UpTo, "d".to_owned())))
        );
        assert_eq!(bounds(true, None, None), (None, None));
        assert_eq!(
            bounds(true, s("b"), s("d")),
            (None, Some((Upper::Below, "b".to_owned())))
        );
        assert_eq!(
            bounds(true, s("d"), s("b")),
            (None, Some((Upper::UpTo, "b".to_owned())))
        );
        assert_eq!(
            bounds(true, s("b"), s("b")),
            (None, Some((Upper::Below, "b".to_owned())))
        );
    }
}
