//! Encoding of the opaque handles the front door gives clients.
//!
//! Tickets and prepared-statement handles carry the statement itself (protobuf messages from
//! `quiver-proto`) and, once bound, its parameter values as a one-row Arrow IPC stream. So a
//! handle needs no coordinator state: it survives a coordinator restart and any coordinator can
//! serve it. A ticket carries its query's [`QueryId`] (for CancelFlightInfo), a prepared
//! statement handle its [`StatementId`] (the front door remembers values bound to it, for clients
//! that ignore the handle DoPut returns; that state expires). On the wire both ids are strings,
//! and an empty one (a handle from before ids, or from another server) reads as no id. Garbage
//! handles answer `InvalidArgument`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use prost::Message;
use quiver_proto::frontdoor::{PreparedStatementHandle, StatementTicket};

use crate::error::{QuiverError, Result};
use crate::ids::{QueryId, StatementId};
use crate::security::ipc_guard;

/// A statement and the parameter values bound to it.
#[derive(Debug, Clone)]
pub(super) struct BoundSql {
    pub(super) sql: String,
    pub(super) parameters: Option<RecordBatch>,
}

impl BoundSql {
    pub(super) fn new(sql: String) -> Self {
        Self {
            sql,
            parameters: None,
        }
    }
}

/// What a statement ticket (`TicketStatementQuery`) carries: one query a client started.
#[derive(Debug, Clone)]
pub(super) struct QueryTicket {
    pub(super) statement: BoundSql,
    /// What CancelFlightInfo names; `None` in tickets from before query ids.
    pub(super) query_id: Option<QueryId>,
}

/// What a prepared-statement handle carries.
#[derive(Debug, Clone)]
pub(super) struct PreparedHandle {
    pub(super) statement: BoundSql,
    /// What values bound through DoPut are remembered under; `None` in handles without one.
    pub(super) id: Option<StatementId>,
}

pub(super) fn encode_ticket(ticket: &QueryTicket) -> Result<Bytes> {
    let encoded = StatementTicket {
        sql: ticket.statement.sql.clone(),
        parameters: encode_parameters(ticket.statement.parameters.as_ref())?,
        query_id: ticket
            .query_id
            .as_ref()
            .map(|id| id.as_str().to_string())
            .unwrap_or_default(),
    };
    Ok(encoded.encode_to_vec().into())
}

pub(super) fn decode_ticket(bytes: &[u8]) -> Result<QueryTicket> {
    let ticket = StatementTicket::decode(bytes)
        .map_err(|_| QuiverError::InvalidArgument("malformed statement ticket".into()))?;
    Ok(QueryTicket {
        statement: BoundSql {
            sql: ticket.sql,
            parameters: decode_parameters(&ticket.parameters)?,
        },
        query_id: QueryId::parse(&ticket.query_id),
    })
}

pub(super) fn encode_prepared(handle: &PreparedHandle) -> Result<Bytes> {
    let encoded = PreparedStatementHandle {
        sql: handle.statement.sql.clone(),
        parameters: encode_parameters(handle.statement.parameters.as_ref())?,
        id: handle
            .id
            .as_ref()
            .map(|id| id.as_str().to_string())
            .unwrap_or_default(),
    };
    Ok(encoded.encode_to_vec().into())
}

pub(super) fn decode_prepared(bytes: &[u8]) -> Result<PreparedHandle> {
    let handle = PreparedStatementHandle::decode(bytes)
        .map_err(|_| QuiverError::InvalidArgument("malformed prepared statement handle".into()))?;
    Ok(PreparedHandle {
        statement: BoundSql {
            sql: handle.sql,
            parameters: decode_parameters(&handle.parameters)?,
        },
        id: StatementId::parse(&handle.id),
    })
}

fn encode_parameters(parameters: Option<&RecordBatch>) -> Result<Vec<u8>> {
    let Some(batch) = parameters else {
        return Ok(Vec::new());
    };
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    Ok(writer.into_inner()?)
}

/// Most bytes the parameters in a handle may decode to.
const MAX_PARAMETER_BYTES: usize = 64 * 1024 * 1024;

/// Whether `bytes` is a sequence of well-formed IPC stream messages whose declared metadata and
/// body lengths lie within `bytes`, and whose batches pass [`ipc_guard::check_message`].
fn ipc_framing_fits(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    let take_i32 = |rest: &mut &[u8]| -> Option<i32> {
        let (head, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        Some(i32::from_le_bytes(*head))
    };
    while !rest.is_empty() {
        let Some(mut length) = take_i32(&mut rest) else {
            return false;
        };
        if length == -1 {
            // Continuation marker, then the real length.
            let Some(next) = take_i32(&mut rest) else {
                return false;
            };
            length = next;
        }
        if length == 0 {
            return true; // end of stream
        }
        let Ok(length) = usize::try_from(length) else {
            return false;
        };
        if length > rest.len() {
            return false;
        }
        let (metadata, tail) = rest.split_at(length);
        let Ok(message) = arrow::ipc::root_as_message(metadata) else {
            return false;
        };
        let Ok(body) = usize::try_from(message.bodyLength()) else {
            return false;
        };
        if body > tail.len() {
            return false;
        }
        if ipc_guard::check_message(metadata, &tail[..body], MAX_PARAMETER_BYTES).is_err() {
            return false;
        }
        rest = &tail[body..];
    }
    true
}

/// Values bound through DoPut, by prepared-statement id: for clients that keep executing the
/// handle they got at prepare time. Entries expire after an hour without use and are bounded in
/// number, so leaked handles cost nothing for long; ClosePreparedStatement frees them at once.
#[derive(Debug, Default)]
pub(super) struct Bindings {
    entries: Mutex<HashMap<StatementId, (RecordBatch, Instant)>>,
}

const BINDING_IDLE_EXPIRY: Duration = Duration::from_secs(3600);
const MAX_BINDINGS: usize = 10_000;

impl Bindings {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<StatementId, (RecordBatch, Instant)>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn insert(&self, id: &StatementId, values: RecordBatch) {
        let mut entries = self.entries();
        let now = Instant::now();
        if entries.len() >= MAX_BINDINGS {
            entries.retain(|_, (_, used)| now.duration_since(*used) < BINDING_IDLE_EXPIRY);
            if entries.len() >= MAX_BINDINGS
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(id.clone(), (values, now));
    }

    pub(super) fn get(&self, id: &StatementId) -> Option<RecordBatch> {
        let mut entries = self.entries();
        let now = Instant::now();
        match entries.get_mut(id) {
            Some((_, used)) if now.duration_since(*used) >= BINDING_IDLE_EXPIRY => {
                entries.remove(id);
                None
            }
            Some((values, used)) => {
                *used = now;
                Some(values.clone())
            }
            None => None,
        }
    }

    pub(super) fn remove(&self, id: &StatementId) {
        self.entries().remove(id);
    }
}

fn decode_parameters(bytes: &[u8]) -> Result<Option<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let malformed = || QuiverError::InvalidArgument("malformed parameters in handle".into());
    // arrow's IPC reader allocates what a message header declares before reading it, and a
    // failed allocation aborts the process: check the framing against the bytes we have first.
    if !ipc_framing_fits(bytes) {
        return Err(malformed());
    }
    // It can also panic on crafted buffers: a client's bytes must not take a handler down, so a
    // panic here is just a malformed handle.
    let read = std::panic::catch_unwind(|| {
        let mut reader = StreamReader::try_new(bytes, None).ok()?;
        match reader.next() {
            Some(batch) => batch.ok().map(Some),
            None => Some(None),
        }
    });
    read.ok().flatten().ok_or_else(malformed)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;

    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let query_id = QueryId::random();
        let plain = QueryTicket {
            statement: BoundSql::new("select 1".into()),
            query_id: Some(query_id.clone()),
        };
        let decoded = decode_ticket(&encode_ticket(&plain).unwrap()).unwrap();
        assert_eq!(decoded.statement.sql, "select 1");
        assert!(decoded.statement.parameters.is_none());
        assert_eq!(decoded.query_id, Some(query_id));

        let values =
            RecordBatch::try_from_iter(vec![("0", Arc::new(Int64Array::from(vec![7])) as _)])
                .unwrap();
        let statement_id = StatementId::random();
        let bound = PreparedHandle {
            statement: BoundSql {
                sql: "select ?".into(),
                parameters: Some(values.clone()),
            },
            id: Some(statement_id.clone()),
        };
        let decoded = decode_prepared(&encode_prepared(&bound).unwrap()).unwrap();
        assert_eq!(decoded.statement.parameters, Some(values));
        assert_eq!(decoded.id, Some(statement_id));

        // Handles without ids (older servers) still decode, to no id.
        let old_ticket = StatementTicket {
            sql: "select 2".into(),
            parameters: Vec::new(),
            query_id: String::new(),
        };
        let decoded = decode_ticket(&old_ticket.encode_to_vec()).unwrap();
        assert_eq!(decoded.statement.sql, "select 2");
        assert_eq!(decoded.query_id, None);
        let old_handle = PreparedStatementHandle {
            sql: "select 3".into(),
            parameters: Vec::new(),
            id: String::new(),
        };
        let decoded = decode_prepared(&old_handle.encode_to_vec()).unwrap();
        assert_eq!(decoded.statement.sql, "select 3");
        assert_eq!(decoded.id, None);

        assert!(matches!(
            decode_ticket(&[0xff, 0xff, 0xff]),
            Err(QuiverError::InvalidArgument(_))
        ));
        let bad_params = StatementTicket {
            sql: "select 1".into(),
            parameters: vec![1, 2, 3],
            query_id: String::new(),
        };
        assert!(matches!(
            decode_ticket(&bad_params.encode_to_vec()),
            Err(QuiverError::InvalidArgument(_))
        ));
    }

    // Fuzzing of what clients control: any bytes as a ticket or handle decode to a statement or
    // to InvalidArgument, never a panic; valid ones round-trip.
    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            for e in [decode_ticket(&bytes).err(), decode_prepared(&bytes).err()].into_iter().flatten() {
                proptest::prop_assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
            }
        }

        #[test]
        fn mutated_handles_never_panic(sql in ".{0,64}", flip in 0usize..256, value in proptest::prelude::any::<u8>()) {
            let values =
                RecordBatch::try_from_iter(vec![("0", Arc::new(Int64Array::from(vec![7])) as _)])
                    .unwrap();
            let bound = PreparedHandle {
                statement: BoundSql { sql: sql.clone(), parameters: Some(values) },
                id: Some(StatementId::random()),
            };
            let mut bytes = encode_prepared(&bound).unwrap().to_vec();
            let decoded = decode_prepared(&bytes).unwrap();
            proptest::prop_assert_eq!(decoded.statement.sql, sql);
            let at = flip % bytes.len();
            bytes[at] = value;
            if let Err(e) = decode_prepared(&bytes) {
                proptest::prop_assert_eq!(e.to_status().code(), tonic::Code::InvalidArgument);
            }
        }
    }
}
