//! Checks an Arrow IPC message from a client before arrow decodes it.
//!
//! Arrow trusts the sizes a message declares: a compressed buffer starts with its decompressed
//! length, and the decoder allocates that much before it inflates a byte. A few bytes that
//! declare a petabyte make the allocation fail, which aborts the process (not a panic that could
//! be caught). Contract: [`check_message`] accepts a record batch or dictionary batch message only
//! if every buffer lies within the body and the declared decompressed sizes add up to at most the
//! given limit; anything else it refuses with `InvalidArgument`. Other message types pass
//! unchanged (arrow decodes them without allocating by declared sizes).

use arrow::ipc::{Message, MessageHeader, RecordBatch as IpcRecordBatch, root_as_message};

use crate::error::{QuiverError, Result};

/// Refuses `header`/`body` (one IPC message, as in a `FlightData`) if decoding it would allocate
/// more than `max_decoded_bytes` for decompressed buffers, or if its buffers overrun the body.
pub(crate) fn check_message(header: &[u8], body: &[u8], max_decoded_bytes: usize) -> Result<()> {
    if header.is_empty() {
        return Ok(());
    }
    let message: Message<'_> = root_as_message(header)
        .map_err(|e| QuiverError::InvalidArgument(format!("malformed IPC message header: {e}")))?;
    let batch = match message.header_type() {
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => message
            .header_as_dictionary_batch()
            .and_then(|dictionary| dictionary.data()),
        _ => return Ok(()),
    };
    let Some(batch) = batch else {
        return Err(QuiverError::InvalidArgument(
            "IPC batch message without a batch".into(),
        ));
    };
    check_batch(&batch, body, max_decoded_bytes)
}

fn check_batch(batch: &IpcRecordBatch<'_>, body: &[u8], max_decoded_bytes: usize) -> Result<()> {
    let invalid = |what: String| Err(QuiverError::InvalidArgument(what));
    let Some(buffers) = batch.buffers() else {
        return Ok(());
    };
    let compressed = batch.compression().is_some();
    let mut decoded: u64 = 0;
    for buffer in buffers {
        let (Ok(offset), Ok(length)) = (
            usize::try_from(buffer.offset()),
            usize::try_from(buffer.length()),
        ) else {
            return invalid("IPC buffer with a negative offset or length".into());
        };
        let Some(bytes) = offset
            .checked_add(length)
            .and_then(|end| body.get(offset..end))
        else {
            return invalid(format!(
                "IPC buffer at {offset}+{length} runs past the {}-byte message body",
                body.len()
            ));
        };
        decoded += if !compressed || bytes.is_empty() {
            length as u64
        } else {
            let Some(prefix) = bytes.first_chunk::<8>() else {
                return invalid("compressed IPC buffer shorter than its length prefix".into());
            };
            match i64::from_le_bytes(*prefix) {
                // Stored uncompressed.
                -1 => length as u64,
                n => u64::try_from(n).map_err(|_| {
                    QuiverError::InvalidArgument(format!(
                        "compressed IPC buffer declares a negative length ({n})"
                    ))
                })?,
            }
        };
        if decoded > max_decoded_bytes as u64 {
            return invalid(format!(
                "IPC batch would decode to more than {max_decoded_bytes} bytes (16 × --max-message-bytes); send smaller batches"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::ipc::CompressionType;
    use arrow::ipc::writer::{
        DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
    };

    use super::*;

    /// One lz4-compressed batch message: (header, body).
    fn compressed_message() -> (Vec<u8>, Vec<u8>) {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter((0..1000).map(Some)))],
        )
        .unwrap();
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .unwrap();
        let (_, encoded) = IpcDataGenerator::default()
            .encode(
                &batch,
                &mut DictionaryTracker::new(false),
                &options,
                &mut IpcWriteContext::default(),
            )
            .unwrap();
        (encoded.ipc_message, encoded.arrow_data)
    }

    #[test]
    fn honest_compressed_batches_pass() {
        let (header, body) = compressed_message();
        check_message(&header, &body, 1 << 20).unwrap();
        // 8000 bytes of values decode to more than 4 KiB.
        assert!(check_message(&header, &body, 4096).is_err());
    }

    #[test]
    fn inflated_length_prefixes_are_refused() {
        let (header, mut body) = compressed_message();
        let message = root_as_message(&header).unwrap();
        let batch = message.header_as_record_batch().unwrap();
        // Claim a petabyte for every non-empty compressed buffer.
        for buffer in batch.buffers().unwrap() {
            if buffer.length() >= 8 {
                let at = buffer.offset() as usize;
                body[at..at + 8].copy_from_slice(&(1i64 << 50).to_le_bytes());
            }
        }
        let err = check_message(&header, &body, 1 << 30).unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
        // Truncated bodies are refused too.
        let (header, body) = compressed_message();
        assert!(check_message(&header, &body[..body.len() / 2], 1 << 30).is_err());
        assert!(check_message(b"garbage", &body, 1 << 30).is_err());
    }
}
