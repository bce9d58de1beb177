//! Encoding of the opaque handles the front door gives clients.
//!
//! Tickets and prepared-statement handles carry the statement itself (protobuf messages from
//! `quiver-proto`), so the coordinator keeps no per-handle state: a handle survives a coordinator
//! restart and any coordinator can serve it. Garbage handles answer `InvalidArgument`.

use bytes::Bytes;
use prost::Message;
use quiver_proto::frontdoor::{PreparedStatementHandle, StatementTicket};

use crate::error::QuiverError;

pub(super) fn encode_ticket(sql: &str) -> Bytes {
    StatementTicket {
        sql: sql.to_string(),
        parameters: Default::default(),
    }
    .encode_to_vec()
    .into()
}

pub(super) fn decode_ticket(bytes: &[u8]) -> Result<String, QuiverError> {
    let ticket = StatementTicket::decode(bytes)
        .map_err(|_| QuiverError::InvalidArgument("malformed statement ticket".into()))?;
    if !ticket.parameters.is_empty() {
        return Err(QuiverError::Unsupported(
            "bound parameters are not supported yet".into(),
        ));
    }
    Ok(ticket.sql)
}

pub(super) fn encode_prepared(sql: &str) -> Bytes {
    PreparedStatementHandle {
        sql: sql.to_string(),
        parameters: Default::default(),
    }
    .encode_to_vec()
    .into()
}

pub(super) fn decode_prepared(bytes: &[u8]) -> Result<String, QuiverError> {
    let handle = PreparedStatementHandle::decode(bytes)
        .map_err(|_| QuiverError::InvalidArgument("malformed prepared statement handle".into()))?;
    if !handle.parameters.is_empty() {
        return Err(QuiverError::Unsupported(
            "bound parameters are not supported yet".into(),
        ));
    }
    Ok(handle.sql)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        assert_eq!(
            decode_ticket(&encode_ticket("select 1")).unwrap(),
            "select 1"
        );
        assert_eq!(
            decode_prepared(&encode_prepared("select 2")).unwrap(),
            "select 2"
        );
        assert!(matches!(
            decode_ticket(&[0xff, 0xff, 0xff]),
            Err(QuiverError::InvalidArgument(_))
        ));
    }
}
