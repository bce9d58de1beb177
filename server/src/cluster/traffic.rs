//! Bytes a node exchanges with other nodes over the worker protocol (plans, shuffles, results).
//!
//! Contract: [`Counted`] wraps a gRPC channel (client side) or a gRPC service (server side) and
//! adds the length of every data frame of every request and response body that crosses it to a
//! node's [`Traffic`]: what the node writes goes to `sent`, what it reads to `received`. Only
//! body bytes are counted (what the network carries beyond headers); a body's frames are counted
//! as they are polled, so a stream cut short counts what was actually transferred.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::IntCounter;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::server::NamedService;

/// A node's byte counters; cheap to clone (the counters are shared).
#[derive(Debug, Clone)]
pub(crate) struct Traffic {
    pub(crate) sent: IntCounter,
    pub(crate) received: IntCounter,
}

#[cfg(test)]
impl Traffic {
    /// Counters nobody reads.
    pub(crate) fn unobserved() -> Self {
        let counter = |name: &str| IntCounter::new(name, "bytes").expect("a valid metric name");
        Self {
            sent: counter("unobserved_sent_bytes"),
            received: counter("unobserved_received_bytes"),
        }
    }
}

/// Which side of the calls a [`Counted`] sits on.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// A channel: requests are sent, responses received.
    Client,
    /// A service: requests are received, responses sent.
    Server,
}

/// A channel or service whose bodies are counted into a [`Traffic`].
#[derive(Debug, Clone)]
pub(crate) struct Counted<S> {
    inner: S,
    traffic: Traffic,
    side: Side,
}

impl<S> Counted<S> {
    /// Counts what a channel sends and receives.
    pub(crate) fn channel(inner: S, traffic: Traffic) -> Self {
        Self {
            inner,
            traffic,
            side: Side::Client,
        }
    }

    /// Counts what a service receives and sends.
    pub(crate) fn service(inner: S, traffic: Traffic) -> Self {
        Self {
            inner,
            traffic,
            side: Side::Server,
        }
    }
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (request_counter, response_counter) = match self.side {
            Side::Client => (self.traffic.sent.clone(), self.traffic.received.clone()),
            Side::Server => (self.traffic.received.clone(), self.traffic.sent.clone()),
        };
        let request = request.map(|body| Body::new(CountedBody::new(body, request_counter)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(CountedBody::new(body, response_counter))))
        })
    }
}

/// A body that adds the length of each data frame to a counter as it passes.
struct CountedBody<B> {
    inner: Pin<Box<B>>,
    counter: IntCounter,
}

impl<B> CountedBody<B> {
    fn new(inner: B, counter: IntCounter) -> Self {
        Self {
            inner: Box::pin(inner),
            counter,
        }
    }
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.counter.inc_by(data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn both_directions_are_counted_on_each_side() {
        let echo = tower_service_fn(|request: http::Request<Body>| async move {
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let mut doubled = bytes.to_vec();
            doubled.extend_from_slice(&bytes);
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::new(
                http_body_util::Full::new(Bytes::from(doubled)),
            )))
        });
        let client_side = Traffic::unobserved();
        let server_side = Traffic::unobserved();
        let mut stack = Counted::channel(
            Counted::service(echo, server_side.clone()),
            client_side.clone(),
        );
        let request = http::Request::new(http_body_util::Full::new(Bytes::from_static(b"12345")));
        let response = stack.call(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 10);
        assert_eq!(client_side.sent.get(), 5);
        assert_eq!(client_side.received.get(), 10);
        assert_eq!(server_side.received.get(), 5);
        assert_eq!(server_side.sent.get(), 10);
    }

    /// A service from an async function (tower's `service_fn`, without depending on tower).
    fn tower_service_fn<F, Fut>(f: F) -> FnService<F>
    where
        F: FnMut(http::Request<Body>) -> Fut,
    {
        FnService(f)
    }

    #[derive(Clone)]
    struct FnService<F>(F);

    impl<F, Fut> Service<http::Request<Body>> for FnService<F>
    where
        F: FnMut(http::Request<Body>) -> Fut,
        Fut: std::future::Future<Output = Result<http::Response<Body>, std::convert::Infallible>>
            + Send
            + 'static,
    {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = Fut;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            (self.0)(request)
        }
    }
}
