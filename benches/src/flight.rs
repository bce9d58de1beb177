//! The benchmark's Flight SQL client: arrow-flight's `FlightSqlServiceClient`, as applications
//! use it.
//!
//! Contract: [`SqlClient::query`] runs one statement (`GetFlightInfo(CommandStatementQuery)`,
//! then `DoGet` on every endpoint in order) and consumes every batch without keeping or
//! concatenating them; it returns rows and Arrow IPC bytes received. An optional [`Pace`] makes
//! it a slow reader: it sleeps after each batch so its average rate stays under the given one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{FlightData, Ticket};
use futures::{StreamExt, TryStreamExt};
use tonic::transport::Channel;

/// Generous, as a client library would set it: a Flight SQL server may send large messages.
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// What one statement returned.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Fetched {
    pub(crate) rows: u64,
    pub(crate) batches: u64,
    /// Arrow IPC bytes (FlightData header + body) of the result streams.
    pub(crate) ipc_bytes: u64,
    /// Whether the result has columns (DDL returns none).
    pub(crate) has_columns: bool,
}

/// A reading rate limit for the slow-client test.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) bytes_per_second: f64,
}

pub(crate) async fn channel(addr: &str) -> Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

#[derive(Debug, Clone)]
pub(crate) struct SqlClient {
    inner: FlightSqlServiceClient<Channel>,
}

impl SqlClient {
    pub(crate) async fn connect(addr: &str) -> Result<Self> {
        let flight =
            arrow_flight::flight_service_client::FlightServiceClient::new(channel(addr).await?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            inner: FlightSqlServiceClient::new_from_inner(flight),
        })
    }

    pub(crate) async fn query(&mut self, sql: &str, pace: Option<Pace>) -> Result<Fetched> {
        let info = self
            .inner
            .execute(sql.to_string(), None)
            .await
            .with_context(|| format!("GetFlightInfo: {}", first_line(sql)))?;
        let schema = info
            .clone()
            .try_decode_schema()
            .context("decoding the FlightInfo schema")?;
        let mut fetched = Fetched {
            has_columns: !schema.fields().is_empty(),
            ..Fetched::default()
        };
        for endpoint in info.endpoint {
            let ticket = endpoint
                .ticket
                .context("a FlightInfo endpoint without a ticket")?;
            fetch(&mut self.inner, ticket, pace, &mut fetched)
                .await
                .with_context(|| format!("DoGet: {}", first_line(sql)))?;
        }
        Ok(fetched)
    }

    /// A bare `DoGet` of `ticket`, read exactly as [`SqlClient::query`] reads its endpoints (for
    /// plain Flight servers that have no Flight SQL).
    pub(crate) async fn do_get(&mut self, ticket: Ticket) -> Result<Fetched> {
        let mut fetched = Fetched {
            has_columns: true,
            ..Fetched::default()
        };
        fetch(&mut self.inner, ticket, None, &mut fetched).await?;
        Ok(fetched)
    }
}

/// Reads one ticket's stream to the end. The raw FlightData stream is decoded here (rather than
/// through `FlightSqlServiceClient::do_get`) only to count the IPC bytes on the wire.
async fn fetch(
    client: &mut FlightSqlServiceClient<Channel>,
    ticket: Ticket,
    pace: Option<Pace>,
    fetched: &mut Fetched,
) -> Result<()> {
    let stream = client.inner_mut().do_get(ticket).await?.into_inner();
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&bytes);
    let counted = stream
        .map_ok(move |data: FlightData| {
            counter.fetch_add(
                (data.data_header.len() + data.data_body.len()) as u64,
                Ordering::Relaxed,
            );
            data
        })
        .map_err(FlightError::from);
    let mut batches = FlightRecordBatchStream::new_from_flight_data(counted);
    let started = Instant::now();
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        fetched.rows += batch.num_rows() as u64;
        fetched.batches += 1;
        if let Some(pace) = pace {
            // Sleep until the bytes read so far fit the rate: the server sees a reader that
            // falls behind and must hold back (backpressure) rather than buffer.
            let due = Duration::from_secs_f64(
                bytes.load(Ordering::Relaxed) as f64 / pace.bytes_per_second,
            );
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    fetched.ipc_bytes += bytes.load(Ordering::Relaxed);
    Ok(())
}

pub(crate) fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or_default()
}
