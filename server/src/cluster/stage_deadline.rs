//! Stage deadlines: no stage of a query runs longer than `--stage-timeout-ms`.
//!
//! Contract:
//! * the coordinator puts its stage timeout in a header ([`HEADER`]) on every request to a worker
//!   (datafusion-distributed forwards it as a passthrough header), and executors copy it into the
//!   task sessions they build, so requests between executors carry it too;
//! * an executor serving a stage's output stream (`ExecuteTask`) ends that stream with
//!   `DEADLINE_EXCEEDED` once the request is older than the timeout. The stream is dropped with it,
//!   which stops the stage's task; the consumer (another stage, or the coordinator) fails the query,
//!   and the client gets `DeadlineExceeded`;
//! * requests without the header, and every other RPC, are served unchanged.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap, HeaderValue};
use tonic::server::NamedService;

use crate::error::QuiverError;
use crate::node::net;

/// Milliseconds a stage may run, set by the coordinator on every worker request.
pub(crate) const HEADER: &str = "x-quiver-stage-timeout-ms";

/// The RPC that streams a stage's output partitions to their consumer.
const STAGE_OUTPUT_PATH_SUFFIX: &str = "/ExecuteTask";

/// The header map carrying `timeout` to workers.
pub(crate) fn headers(timeout: Duration) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER, HeaderValue::from(timeout.as_millis() as u64));
    headers
}

/// The stage timeout a worker request carries, if any (`0` or garbage: none).
pub(crate) fn timeout_of(headers: &HeaderMap) -> Option<Duration> {
    let ms: u64 = headers.get(HEADER)?.to_str().ok()?.parse().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Server side: cuts stage output streams at their deadline.
#[derive(Debug, Clone)]
pub(crate) struct StageDeadlines<S> {
    inner: S,
}

impl<S> StageDeadlines<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for StageDeadlines<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for StageDeadlines<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let timeout = timeout_of(request.headers())
            .filter(|_| request.uri().path().ends_with(STAGE_OUTPUT_PATH_SUFFIX));
        let response = net::call_readied(&mut self.inner, request);
        let Some(timeout) = timeout else {
            return Box::pin(response);
        };
        // The clock starts when the request arrives: planning the task counts against it.
        let sleep = Box::pin(tokio::time::sleep(timeout));
        response
            .map(move |result| {
                result.map(|response| {
                    response.map(|body| {
                        Body::new(DeadlineBody {
                            inner: body,
                            sleep,
                            timeout,
                            expired: false,
                        })
                    })
                })
            })
            .boxed()
    }
}

/// A response body that ends with `DEADLINE_EXCEEDED` trailers when its deadline passes first.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
    expired: bool,
}

impl HttpBody for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Self::Data>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.expired = true;
        let status = QuiverError::DeadlineExceeded(format!(
            "a stage of the query ran past its deadline of {} ms (--stage-timeout-ms)",
            self.timeout.as_millis()
        ))
        .to_status();
        let mut trailers = HeaderMap::new();
        // Only fails for messages that cannot be encoded; ours is plain ASCII.
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_trip_through_headers() {
        let headers = headers(Duration::from_millis(1500));
        assert_eq!(timeout_of(&headers), Some(Duration::from_millis(1500)));
        let mut zero = HeaderMap::new();
        zero.insert(HEADER, HeaderValue::from_static("0"));
        assert_eq!(timeout_of(&zero), None);
        let mut garbage = HeaderMap::new();
        garbage.insert(HEADER, HeaderValue::from_static("soon"));
        assert_eq!(timeout_of(&garbage), None);
        assert_eq!(timeout_of(&HeaderMap::new()), None);
    }
}
