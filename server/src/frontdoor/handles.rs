//! Encoding of the opaque handles the front door gives clients.
//!
//! Tickets and prepared-statement handles carry the statement itself (protobuf messages from
//! `quiver-proto`) and, once bound, its parameter values as a one-row Arrow IPC stream. So the
//! coordinator keeps no per-handle state: a handle survives a coordinator restart, any
//! coordinator can serve it, closing it is free, and a leaked one costs nothing. Garbage handles
//! answer `InvalidArgument`.

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use prost::Message;
use quiver_proto::frontdoor::{PreparedStatementHandle, StatementTicket};

use crate::error::{QuiverError, Result};

/// A statement and the parameter values bound to it.
#[derive(Debug, Clone)]
pub(super) struct BoundSql {
    pub(super) sql: String,
    pub(super) parameters: Option<RecordBatch>,
}

pub(super) fn encode_ticket(bound: &BoundSql) -> Result<Bytes> {
    let ticket = StatementTicket {
        sql: bound.sql.clone(),
        parameters: encode_parameters(bound.parameters.as_ref())?,
    };
    Ok(ticket.encode_to_vec().into())
}

pub(super) fn decode_ticket(bytes: &[u8]) -> Result<BoundSql> {
    let ticket = StatementTicket::decode(bytes)
        .map_err(|_| QuiverError::InvalidArgument("malformed statement ticket".into()))?;
    Ok(BoundSql {
        sql: ticket.sql,
        parameters: decode_parameters(&ticket.parameters)?,
    })
}

pub(super) fn encode_prepared(bound: &BoundSql) -> Result<Bytes> {
    let handle = PreparedStatementHandle {
        sql: bound.sql.clone(),
        parameters: encode_parameters(bound.parameters.as_ref())?,
    };
    Ok(handle.encode_to_vec().into())
}

pub(super) fn decode_prepared(bytes: &[u8]) -> Result<BoundSql> {
    let handle = PreparedStatementHandle::decode(bytes)
        .map_err(|_| QuiverError::InvalidArgument("malformed prepared statement handle".into()))?;
    Ok(BoundSql {
        sql: handle.sql,
        parameters: decode_parameters(&handle.parameters)?,
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

fn decode_parameters(bytes: &[u8]) -> Result<Option<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let malformed = |_| QuiverError::InvalidArgument("malformed parameters in handle".into());
    let mut reader = StreamReader::try_new(bytes, None).map_err(malformed)?;
    match reader.next() {
        Some(batch) => Ok(Some(batch.map_err(malformed)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;

    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let plain = BoundSql {
            sql: "select 1".into(),
            parameters: None,
        };
        let decoded = decode_ticket(&encode_ticket(&plain).unwrap()).unwrap();
        assert_eq!(decoded.sql, "select 1");
        assert!(decoded.parameters.is_none());

        let values =
            RecordBatch::try_from_iter(vec![("0", Arc::new(Int64Array::from(vec![7])) as _)])
                .unwrap();
        let bound = BoundSql {
            sql: "select ?".into(),
            parameters: Some(values.clone()),
        };
        let decoded = decode_prepared(&encode_prepared(&bound).unwrap()).unwrap();
        assert_eq!(decoded.parameters, Some(values));

        assert!(matches!(
            decode_ticket(&[0xff, 0xff, 0xff]),
            Err(QuiverError::InvalidArgument(_))
        ));
        let bad_params = StatementTicket {
            sql: "select 1".into(),
            parameters: vec![1, 2, 3],
        };
        assert!(matches!(
            decode_ticket(&bad_params.encode_to_vec()),
            Err(QuiverError::InvalidArgument(_))
        ));
    }
}
