//! Log output, and the query id on every log line about a query, on every node.
//!
//! Contract:
//! * [`init_logs`] sets up the process's logs on stderr once: `text` (human, ANSI colours on a
//!   terminal) or `json` (one JSON object a line, with the spans the line was logged in), filtered
//!   by `RUST_LOG` (default `info`, quiet transport crates);
//! * on the coordinator, the work of a statement (planning, its run, its result stream) runs
//!   [`in_query`]: inside a `query{query_id=…}` span, so its lines carry the [`QueryId`], and with
//!   the id at hand for [`current_query`], which puts it in a header ([`QUERY_ID_HEADER`]) on
//!   every request the query's attempts send to executors;
//! * executors forward the header on the requests their tasks make to other executors, and
//!   their worker service serves each request that carries it inside the same span
//!   ([`QuerySpans`]: the handler, its response future and its response body), so what a task
//!   logs there (its session, its stream) carries the id as well. Work DataFusion spawns onto
//!   tasks of its own leaves the span: lines logged there may lack the id.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{FutureExt, Stream};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{self, HeaderMap};
use tonic::server::NamedService;
use tracing::Span;
use tracing::instrument::Instrument;

use crate::ids::QueryId;
use crate::node::net;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (`message` and the event's
    /// fields), `target`, `span` (the innermost span: `name`, `query_id`, …) and `spans`.
    Json,
}

/// The filter when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str = "info,h2=warn,tower=warn,hyper=warn";

/// Sends this process's logs to stderr in `format`. Call once, before anything logs.
pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// Carries a query's id on every request its attempts make to executors, and from executor to
/// executor.
pub(crate) const QUERY_ID_HEADER: &str = "x-quiver-query-id";

tokio::task_local! {
    static QUERY: QueryId;
}

/// The span of query `id`'s log lines.
pub(crate) fn query_span(id: &QueryId) -> Span {
    span_of(id.as_str())
}

fn span_of(id: &str) -> Span {
    tracing::info_span!("query", query_id = %id)
}

/// The query the current work belongs to, inside [`in_query`].
pub(crate) fn current_query() -> Option<QueryId> {
    QUERY.try_with(QueryId::clone).ok()
}

/// The query id a worker request carries, if any.
fn query_of(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(QUERY_ID_HEADER)?
        .to_str()
        .ok()
        .filter(|id| !id.is_empty())
}

/// `work` (a future or a stream) run as part of query `id`: each poll happens inside the
/// query's span and with the id as [`current_query`].
pub(crate) fn in_query<T>(id: &QueryId, work: T) -> InQuery<T> {
    InQuery {
        inner: Box::pin(work),
        id: id.clone(),
        span: query_span(id),
    }
}

/// See [`in_query`].
pub(crate) struct InQuery<T> {
    inner: Pin<Box<T>>,
    id: QueryId,
    span: Span,
}

impl<F: Future> Future for InQuery<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let inner = &mut this.inner;
        QUERY.sync_scope(this.id.clone(), || inner.as_mut().poll(cx))
    }
}

impl<S: Stream> Stream for InQuery<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let inner = &mut this.inner;
        QUERY.sync_scope(this.id.clone(), || inner.as_mut().poll_next(cx))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// Server side, on executors: serves each request that names a query ([`QUERY_ID_HEADER`])
/// inside that query's span.
#[derive(Debug, Clone)]
pub(crate) struct QuerySpans<S> {
    inner: S,
}

impl<S> QuerySpans<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: NamedService> NamedService for QuerySpans<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for QuerySpans<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        futures::future::BoxFuture<'static, std::result::Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(span) = query_of(request.headers()).map(span_of) else {
            return Box::pin(net::call_readied(&mut self.inner, request));
        };
        let response = span.in_scope(|| net::call_readied(&mut self.inner, request));
        let body_span = span.clone();
        response
            .instrument(span)
            .map(move |result| {
                result.map(|response| {
                    response.map(|body| {
                        Body::new(SpannedBody {
                            inner: body,
                            span: body_span,
                        })
                    })
                })
            })
            .boxed()
    }
}

/// A response body polled inside a span: a stage's stream runs as the client pulls it.
struct SpannedBody {
    inner: Body,
    span: Span,
}

impl HttpBody for SpannedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        Pin::new(&mut this.inner).poll_frame(cx)
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
    use futures::StreamExt;

    #[tokio::test]
    async fn work_in_a_query_knows_its_id() {
        let id = QueryId::random();
        assert_eq!(current_query(), None);
        let seen = in_query(&id, async { current_query() }).await;
        assert_eq!(seen.as_ref(), Some(&id));
        // A stream polled later, elsewhere, still runs as part of its query.
        let stream = in_query(&id, futures::stream::iter(0..2).map(|_| current_query()));
        let seen: Vec<_> = stream.collect().await;
        assert_eq!(seen, vec![Some(id.clone()), Some(id)]);
        assert_eq!(current_query(), None);
    }

    #[test]
    fn query_ids_come_from_their_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(query_of(&headers), None);
        headers.insert(QUERY_ID_HEADER, "abc".parse().unwrap());
        assert_eq!(query_of(&headers), Some("abc"));
    }
}
