//! Pass-through of a query's last stage: the executors' Arrow IPC record batch messages go to the
//! client as they arrived, never decoded and encoded again on the coordinator.
//!
//! Contract:
//! * [`Tap`] wraps the channel of one `ExecuteTask` call of the stage that feeds a head which only
//!   concatenates streams. Every record batch message in the gRPC response it reads goes to the
//!   query's [`PassThroughSink`], in the order it arrived, and is taken out of the response, so
//!   the crate on the coordinator sees only the schema messages and ends each partition with no
//!   rows. An uncompressed message of at most [`MAX_FORWARDED_BYTES`] goes as it came (the
//!   crate's app metadata removed); a larger or compressed one is decoded and sent as
//!   uncompressed pieces under that size (its order kept: a sorted stage stays sorted). A
//!   dictionary message fails the response (`INTERNAL`): stages with dictionaries are never
//!   tapped.
//! * Backpressure: a message leaves the response only once the sink has room, so a slow client
//!   stops the executor through HTTP/2 flow control; the sink holds [`SINK_MESSAGES`] messages.
//! * Cancellation: when the sink's receiver is gone (the client hung up), the response fails with
//!   `CANCELLED` and the crate stops the task.
//! * The message sent into the sink happens before the response goes on, so when the plan's
//!   stream ends every message of the stage is already in the sink.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::{DictionaryTracker, IpcDataGenerator, IpcWriteOptions};
use arrow::ipc::{MessageHeader, root_as_message};
use arrow_flight::FlightData;
use arrow_flight::utils::flight_data_to_arrow_batch;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame};
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;

/// Messages the sink buffers between the executors and the client.
pub(crate) const SINK_MESSAGES: usize = 4;

/// Largest record batch message forwarded as it is, under the 4 MiB that gRPC clients (tonic,
/// grpc-go, grpc-java) accept by default: bigger ones are decoded and sent in smaller pieces.
pub(crate) const MAX_FORWARDED_BYTES: usize = 3 * 1024 * 1024;

/// Where the forwarded messages of one query attempt go; the receiving half is the client's.
#[derive(Debug, Clone)]
pub(crate) struct PassThroughSink(mpsc::Sender<FlightData>);

impl PassThroughSink {
    pub(crate) fn new() -> (Self, mpsc::Receiver<FlightData>) {
        let (tx, rx) = mpsc::channel(SINK_MESSAGES);
        (Self(tx), rx)
    }
}

/// A channel whose responses forward record batch messages to a sink (see the module docs).
#[derive(Clone)]
pub(crate) struct Tap<S> {
    inner: S,
    sink: PassThroughSink,
}

impl<S> Tap<S> {
    pub(crate) fn new(inner: S, sink: PassThroughSink) -> Self {
        Self { inner, sink }
    }
}

impl<S, B> Service<http::Request<B>> for Tap<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let response = self.inner.call(request);
        let sink = self.sink.0.clone();
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(TapBody::new(body, sink))))
        })
    }
}

/// gRPC's length prefix: a compressed flag and a big-endian length.
const PREFIX: usize = 5;

/// A gRPC response body with its forwarded messages taken out.
struct TapBody {
    inner: Body,
    /// Bytes received and not yet split into messages.
    pending: BytesMut,
    sink: PollSender<FlightData>,
    /// Messages waiting for room in the sink, in order.
    held: VecDeque<FlightData>,
    /// The schema of the stage's batches, from the first schema message.
    schema: Option<SchemaRef>,
}

impl TapBody {
    fn new(inner: Body, sink: mpsc::Sender<FlightData>) -> Self {
        Self {
            inner,
            pending: BytesMut::new(),
            sink: PollSender::new(sink),
            held: VecDeque::new(),
            schema: None,
        }
    }

    /// The next whole gRPC message in `pending`, prefix included.
    fn next_message(&mut self) -> Result<Option<Bytes>, Status> {
        if self.pending.len() < PREFIX {
            return Ok(None);
        }
        if self.pending[0] != 0 {
            return Err(Status::internal(
                "a worker sent a gRPC-compressed message, which pass-through does not read",
            ));
        }
        let len = (&self.pending[1..PREFIX]).get_u32() as usize;
        if self.pending.len() < PREFIX + len {
            self.pending.reserve(PREFIX + len - self.pending.len());
            return Ok(None);
        }
        Ok(Some(self.pending.split_to(PREFIX + len).freeze()))
    }
}

impl TapBody {
    /// What goes to the sink for `message` (prefix included), in order; `None` for a message
    /// the crate reads (a schema).
    fn forwarded(&mut self, message: &Bytes) -> Result<Option<Vec<FlightData>>, Status> {
        let data = FlightData::decode(message.slice(PREFIX..))
            .map_err(|e| Status::internal(format!("a worker sent a malformed FlightData: {e}")))?;
        let Ok(header) = root_as_message(&data.data_header) else {
            // Not ours to judge: the crate's decoder reports it.
            return Ok(None);
        };
        match header.header_type() {
            MessageHeader::Schema => {
                let schema = Schema::try_from(&data)
                    .map_err(|e| Status::internal(format!("a worker sent a bad schema: {e}")))?;
                self.schema = Some(Arc::new(schema));
                Ok(None)
            }
            MessageHeader::RecordBatch => {
                let plain = header
                    .header_as_record_batch()
                    .is_some_and(|batch| batch.compression().is_none());
                if plain && message.len() - PREFIX <= MAX_FORWARDED_BYTES {
                    return Ok(Some(vec![FlightData {
                        flight_descriptor: None,
                        data_header: data.data_header,
                        app_metadata: Bytes::new(),
                        data_body: data.data_body,
                    }]));
                }
                let schema = self.schema.clone().ok_or_else(|| {
                    Status::internal("a worker sent a record batch before its schema")
                })?;
                let batch = flight_data_to_arrow_batch(&data, schema, &HashMap::new())
                    .map_err(|e| Status::internal(format!("decoding a worker's batch: {e}")))?;
                in_pieces(&batch, message.len()).map(Some)
            }
            other => Err(Status::internal(format!(
                "pass-through does not forward {other:?} messages"
            ))),
        }
    }
}

/// `batch`, whose message took `encoded_bytes`, as uncompressed messages of about half
/// [`MAX_FORWARDED_BYTES`] each (a single row may make a bigger one).
fn in_pieces(batch: &RecordBatch, encoded_bytes: usize) -> Result<Vec<FlightData>, Status> {
    let pieces = encoded_bytes.div_ceil(MAX_FORWARDED_BYTES / 2).max(1);
    let rows = batch.num_rows().div_ceil(pieces).max(1);
    let generator = IpcDataGenerator::default();
    let options = IpcWriteOptions::default();
    let mut tracker = DictionaryTracker::new(false);
    (0..batch.num_rows())
        .step_by(rows)
        .map(|offset| {
            let piece = batch.slice(offset, rows.min(batch.num_rows() - offset));
            let (_, encoded) = generator
                .encode(&piece, &mut tracker, &options, &mut Default::default())
                .map_err(|e| Status::internal(format!("encoding a worker's batch: {e}")))?;
            Ok(FlightData::from(encoded))
        })
        .collect()
}

impl HttpBody for TapBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.held.pop_front() {
                match this.sink.poll_reserve(cx) {
                    Poll::Pending => {
                        this.held.push_front(data);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(_)) => {
                        return Poll::Ready(Some(Err(Status::cancelled(
                            "the client stopped reading the result",
                        ))));
                    }
                    Poll::Ready(Ok(())) => {
                        if this.sink.send_item(data).is_err() {
                            return Poll::Ready(Some(Err(Status::cancelled(
                                "the client stopped reading the result",
                            ))));
                        }
                        continue;
                    }
                }
            }
            match this.next_message() {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Some(message)) => match this.forwarded(&message) {
                    Err(e) => return Poll::Ready(Some(Err(e))),
                    Ok(Some(pieces)) => this.held.extend(pieces),
                    Ok(None) => return Poll::Ready(Some(Ok(Frame::data(message)))),
                },
                Ok(None) => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    None if this.pending.is_empty() => return Poll::Ready(None),
                    None => {
                        return Poll::Ready(Some(Err(Status::internal(
                            "a worker's response ended inside a message",
                        ))));
                    }
                    Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => this.pending.put(data),
                        // Trailers come after the last message.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.pending.is_empty() && self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use futures::{TryStreamExt, stream};
    use std::sync::Arc;

    fn batch(rows: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| format!("row {i}")),
                )),
            ],
        )
        .unwrap()
    }

    /// The gRPC frames of a response streaming `batches`, cut into `chunk`-byte DATA frames.
    async fn response(batches: Vec<RecordBatch>, chunk: usize) -> Vec<Bytes> {
        let schema = batches[0].schema();
        // One message per batch, as workers send them.
        let messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .with_max_flight_data_size(usize::MAX)
            .with_schema(schema)
            .build(stream::iter(batches.into_iter().map(Ok)))
            .map_ok(|d| d.with_app_metadata(Bytes::from_static(b"partition 0")))
            .try_collect()
            .await
            .unwrap();
        let mut wire = BytesMut::new();
        for m in messages {
            let encoded = m.encode_to_vec();
            wire.put_u8(0);
            wire.put_u32(encoded.len() as u32);
            wire.put_slice(&encoded);
        }
        wire.freeze()
            .chunks(chunk)
            .map(Bytes::copy_from_slice)
            .collect()
    }

    fn body(chunks: Vec<Bytes>) -> Body {
        let frames = stream::iter(chunks.into_iter().map(|c| Ok::<_, Status>(Frame::data(c))));
        Body::new(http_body_util::StreamBody::new(frames))
    }

    #[tokio::test]
    async fn batches_go_to_the_sink_and_schemas_stay() {
        let batches = vec![batch(3), batch(1000), batch(7)];
        let (sink, mut rx) = PassThroughSink::new();
        let tapped = TapBody::new(body(response(batches.clone(), 1000).await), sink.0);
        let reader = crate::task::AbortOnDrop::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                assert!(m.app_metadata.is_empty());
                got.push(m);
            }
            got
        });
        // What the crate still reads: the schema message alone.
        let left: Vec<Bytes> = http_body_util::BodyDataStream::new(tapped)
            .try_collect()
            .await
            .unwrap();
        let left = left.concat();
        let len = u32::from_be_bytes(left[1..5].try_into().unwrap()) as usize;
        assert_eq!(left.len(), PREFIX + len);
        let schema_message = FlightData::decode(&left[PREFIX..]).unwrap();
        let header = root_as_message(&schema_message.data_header).unwrap();
        assert_eq!(header.header_type(), MessageHeader::Schema);

        // The forwarded messages decode to the batches, after the schema.
        let forwarded = reader.await.expect("the reader");
        assert_eq!(forwarded.len(), 3);
        let decoded: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(stream::iter(
                std::iter::once(schema_message).chain(forwarded).map(Ok),
            ))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(decoded, batches);
    }

    #[tokio::test]
    async fn messages_over_the_limit_reach_the_sink_in_pieces_and_in_order() {
        // ~5 MiB of strings in one batch message, between two small ones.
        let big = batch(500_000);
        assert!(big.get_array_memory_size() > MAX_FORWARDED_BYTES);
        let batches = vec![batch(3), big, batch(5)];
        let (sink, mut rx) = PassThroughSink::new();
        let tapped = TapBody::new(body(response(batches.clone(), 4096).await), sink.0);
        let reader = crate::task::AbortOnDrop::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = rx.recv().await {
                got.push(m);
            }
            got
        });
        let left: Vec<Bytes> = http_body_util::BodyDataStream::new(tapped)
            .try_collect()
            .await
            .unwrap();
        // Only the schema message is left for the crate.
        let left = left.concat();
        let len = u32::from_be_bytes(left[1..5].try_into().unwrap()) as usize;
        assert_eq!(left.len(), PREFIX + len);
        let schema_message = FlightData::decode(&left[PREFIX..]).unwrap();

        let forwarded = reader.await.expect("the reader");
        assert!(forwarded.len() > 3, "the big batch was not split");
        assert!(
            forwarded
                .iter()
                .all(|m| m.encoded_len() <= MAX_FORWARDED_BYTES)
        );
        let decoded: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(stream::iter(
                std::iter::once(schema_message).chain(forwarded).map(Ok),
            ))
            .try_collect()
            .await
            .unwrap();
        let schema = batches[0].schema();
        assert_eq!(
            arrow::compute::concat_batches(&schema, &decoded).unwrap(),
            arrow::compute::concat_batches(&schema, &batches).unwrap(),
        );
    }

    #[tokio::test]
    async fn a_full_sink_holds_the_response_and_a_closed_one_cancels_it() {
        let batches: Vec<RecordBatch> = (0..10).map(|_| batch(10)).collect();
        let (sink, mut rx) = PassThroughSink::new();
        let mut tapped = TapBody::new(body(response(batches, 64).await), sink.0);
        // Nobody reads: the body stops once the sink is full.
        let first = tokio::time::timeout(std::time::Duration::from_millis(200), async {
            let mut frames = 0;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut tapped).poll_frame(cx)).await
            {
                frame.unwrap();
                frames += 1;
            }
            frames
        })
        .await;
        assert!(first.is_err(), "the body ran on past a full sink");
        assert_eq!(rx.len(), SINK_MESSAGES);
        rx.close();
        while rx.recv().await.is_some() {}
        let end = std::future::poll_fn(|cx| Pin::new(&mut tapped).poll_frame(cx))
            .await
            .expect("an error");
        assert_eq!(end.unwrap_err().code(), tonic::Code::Cancelled);
    }
}
