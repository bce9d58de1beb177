//! Quiver's integration tests, gathered into one binary (each extra binary re-links DataFusion).
//!
//! Every test starts real `quiver` processes on loopback and talks to them through real Flight
//! SQL clients; results are compared with single-node DataFusion on the same files.

mod auth;
mod cancellation;
mod catalog;
mod deployment;
mod drain;
mod dynamic_filters;
mod flight_sql_cli;
mod frontdoor;
mod jdbc_replay;
mod limits;
mod logs;
mod membership;
mod object_store;
mod parallel_writes;
mod pass_through;
mod placement;
mod python;
mod random_sql;
mod serve;
mod sql_cli;
mod status_page;
mod supervision;
mod system_tables;
mod tpcds;
mod tpch;
mod writes;

use arrow::array::RecordBatch;
use quiver_client::QuiverClient;
pub(crate) use quiver_tests::sql::QUERY_LIMIT;
use quiver_tests::within;

/// Runs each statement through the plain Flight SQL path (or the prepared-statement path when
/// `prepared`); returns the result of the statement that produces columns.
pub(crate) async fn run_statements(
    client: &mut QuiverClient,
    statements: &[String],
    prepared: bool,
) -> Result<Vec<RecordBatch>, String> {
    let mut result = None;
    for sql in statements {
        let outcome = if prepared {
            within(QUERY_LIMIT, sql, client.prepare_and_query(sql)).await
        } else {
            within(QUERY_LIMIT, sql, client.query(sql)).await
        };
        let outcome = outcome.map_err(|e| format!("{sql}: {e}"))?;
        if !outcome.schema.fields().is_empty() {
            result = Some(outcome.batches);
        }
    }
    result.ok_or_else(|| "no statement returned columns".to_string())
}
