//! Statements through a real Flight SQL client, each under a deadline, with the server's status
//! of a failure (what a user sees) rather than the client's error.

use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use quiver_client::{ClientError, QuiverClient};

use crate::within;

/// Longest any single statement may take in these tests.
pub const QUERY_LIMIT: Duration = Duration::from_secs(120);

/// The server's status of a failed call (a client-side failure becomes `Unknown`).
pub fn status(e: ClientError) -> tonic::Status {
    e.status()
        .cloned()
        .unwrap_or_else(|| tonic::Status::unknown(e.to_string()))
}

/// Runs `sql` as an update (`CommandStatementUpdate`); returns the rows it reports.
pub async fn update(client: &mut QuiverClient, sql: &str) -> Result<i64, tonic::Status> {
    within(QUERY_LIMIT, sql, client.update(sql))
        .await
        .map_err(status)
}

/// Runs `sql` as a query; returns its batches.
pub async fn query(
    client: &mut QuiverClient,
    sql: &str,
) -> Result<Vec<RecordBatch>, tonic::Status> {
    within(QUERY_LIMIT, sql, client.query(sql))
        .await
        .map(|r| r.batches)
        .map_err(status)
}

/// The single `BIGINT` of a one-row result.
pub async fn scalar(client: &mut QuiverClient, sql: &str) -> i64 {
    let batches = query(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let column = batches[0].column(0);
    arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(column).value(0)
}

/// A result as text, for comparing results of the same query.
pub fn text(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches)
        .expect("format batches")
        .to_string()
}
