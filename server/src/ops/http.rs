//! The admin HTTP port of a node (`--http-listen`): metrics, health, and the coordinator's
//! status page.
//!
//! Routes, on every node:
//! * `GET /metrics`: the node's metrics in the Prometheus text format ([`super::metrics`]);
//! * `GET /healthz`: 200 while the process serves;
//! * `GET /readyz`: 200 when the node can do its work, 503 with the reason otherwise. The
//!   coordinator is ready with its catalog loaded (it is, before this port opens) and at least one
//!   live executor; an executor is ready once registered with its coordinator.
//!
//! On the coordinator also the status page (`GET /`, one static file) and the JSON it reads:
//! `GET /api/executors`, `GET /api/queries` ([`QueryLog::snapshot`]) and
//! `POST /api/queries/{id}/cancel` ([`QueryLog::cancel`]: 403 when the caller may not, 404 for an
//! unknown id, 409 for a query that ended).
//!
//! Authentication: with `[auth]`, the page and `/api/*` need the Flight port's credentials, HTTP
//! Basic (a user's password, or a token as the password) or `Authorization: Bearer <token>`;
//! without them the answer is 401 with `WWW-Authenticate: Basic`. Administrators
//! (`admin = true`) may cancel anyone's query, others only their own. `/metrics`, `/healthz` and
//! `/readyz` stay open for scrapers and probes: keep the port behind the network policy. A cancel
//! whose `Origin` is another site is refused (403), so a page elsewhere cannot use a browser's
//! saved credentials to cancel queries.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::cluster::distributed::LocalTasks;
use crate::cluster::membership::ExecutorRegistry;
use crate::error::{QuiverError, Result};
use crate::node::net;
use crate::ops::metrics::{self, NodeMetrics};
use crate::ops::queries::{Caller, QueryLog};
use crate::security::auth::{self, Authenticator};
use crate::task::AbortOnDrop;

/// The status page: one static file, no build step.
const STATUS_PAGE: &str = include_str!("status.html");

/// Where a node's admin port listens.
#[derive(Debug, Clone)]
pub struct HttpListen {
    pub listen: SocketAddr,
    /// Written with the bound `host:port` once the port accepts connections.
    pub address_file: Option<PathBuf>,
}

/// What an executor's admin port reads: its metrics, whether it is registered, its tasks.
#[derive(Debug, Clone)]
pub(crate) struct ExecutorHealth {
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) registered: Arc<AtomicBool>,
    pub(crate) tasks: LocalTasks,
    /// The latest task count read from `tasks` (what its metrics report).
    pub(crate) tasks_running: Arc<AtomicU64>,
}

impl ExecutorHealth {
    /// Reads the task count now, for a scrape.
    async fn refresh(&self) {
        if let Ok(tasks) = self.tasks.running().await {
            self.tasks_running.store(tasks, Ordering::Relaxed);
        }
    }
}

/// What the coordinator's admin port reads.
#[derive(Debug, Clone)]
pub(crate) struct CoordinatorView {
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) registry: Arc<ExecutorRegistry>,
    pub(crate) queries: Arc<QueryLog>,
    pub(crate) auth: Option<Arc<Authenticator>>,
    /// Executors in this process (`quiver serve`), whose metrics this port serves too.
    pub(crate) local_executors: Vec<ExecutorHealth>,
}

/// A running admin port; dropping it closes the port (open connections finish their requests).
#[derive(Debug)]
pub(crate) struct AdminServer {
    pub(crate) addr: SocketAddr,
    _task: AbortOnDrop<std::io::Result<()>>,
}

impl AdminServer {
    /// The coordinator's port: health, metrics, the status page and its API.
    pub(crate) async fn coordinator(listen: &HttpListen, view: CoordinatorView) -> Result<Self> {
        let router = Router::new()
            .route("/metrics", get(coordinator_metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(coordinator_ready))
            .route("/", get(status_page))
            .route("/api/executors", get(executors))
            .route("/api/queries", get(queries))
            .route("/api/queries/{id}/cancel", post(cancel))
            .with_state(Arc::new(view));
        Self::serve(listen, router, "coordinator").await
    }

    /// An executor's port: health and metrics.
    pub(crate) async fn executor(listen: &HttpListen, health: ExecutorHealth) -> Result<Self> {
        let router = Router::new()
            .route("/metrics", get(executor_metrics))
            .route("/healthz", get(healthz))
            .route("/readyz", get(executor_ready))
            .with_state(Arc::new(health));
        Self::serve(listen, router, "executor").await
    }

    async fn serve(listen: &HttpListen, router: Router, node: &'static str) -> Result<Self> {
        let listener = TcpListener::bind(listen.listen)
            .await
            .map_err(|e| QuiverError::io(format!("binding --http-listen {}", listen.listen), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| QuiverError::io("reading the bound HTTP address", e))?;
        // axum aborts nothing it spawned when this future is dropped, but each connection it
        // serves watches the future and shuts down gracefully once it is gone (as tonic's do).
        let task = AbortOnDrop::spawn_named("the admin HTTP server", async move {
            axum::serve(listener, router).await
        });
        if let Some(path) = &listen.address_file {
            net::write_address_file(path, addr)?;
        }
        tracing::info!(%addr, node, "admin HTTP port serving /metrics, /healthz, /readyz");
        Ok(Self { addr, _task: task })
    }
}

/// Checks a bind address the way the Flight port's is checked: beyond loopback, the coordinator's
/// page needs authentication (or `--insecure`).
pub(crate) fn check_coordinator_exposure(
    listen: &HttpListen,
    auth: bool,
    insecure: bool,
) -> Result<()> {
    if !listen.listen.ip().is_loopback() && !auth && !insecure {
        return Err(QuiverError::InvalidArgument(format!(
            "refusing to serve the status page on {} without authentication: anyone reaching it could read every query and cancel them (add [auth] to --config, or pass --insecure)",
            listen.listen
        )));
    }
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

fn metrics_response(nodes: &[&NodeMetrics]) -> Response {
    match metrics::encode(nodes) {
        Ok((text, content_type)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&content_type)
                    .unwrap_or(HeaderValue::from_static("text/plain")),
            )],
            text,
        )
            .into_response(),
        Err(e) => error_response(&e),
    }
}

async fn coordinator_metrics(State(view): State<Arc<CoordinatorView>>) -> Response {
    for executor in &view.local_executors {
        executor.refresh().await;
    }
    let mut nodes = vec![view.metrics.as_ref()];
    nodes.extend(view.local_executors.iter().map(|e| e.metrics.as_ref()));
    metrics_response(&nodes)
}

async fn executor_metrics(State(health): State<Arc<ExecutorHealth>>) -> Response {
    health.refresh().await;
    metrics_response(&[health.metrics.as_ref()])
}

async fn coordinator_ready(State(view): State<Arc<CoordinatorView>>) -> Response {
    if view.registry.live_worker_urls().is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no live executor\n",
        )
            .into_response();
    }
    "ready\n".into_response()
}

async fn executor_ready(State(health): State<Arc<ExecutorHealth>>) -> Response {
    if !health.registered.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not registered with the coordinator\n",
        )
            .into_response();
    }
    "ready\n".into_response()
}

/// The caller of a page or API request, or why it is refused.
fn caller(
    view: &CoordinatorView,
    headers: &HeaderMap,
) -> std::result::Result<Caller, Unauthorized> {
    let Some(authenticator) = &view.auth else {
        return Ok(Caller {
            user: None,
            admin: false,
        });
    };
    match auth::authenticate(authenticator, headers) {
        Ok(identity) => Ok(Caller {
            user: identity.user,
            admin: identity.admin,
        }),
        Err(e) => Err(Unauthorized(e.to_string())),
    }
}

/// A 401 that asks for Basic credentials.
struct Unauthorized(String);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"quiver\", charset=\"UTF-8\""),
            )],
            format!("{}\n", self.0),
        )
            .into_response()
    }
}

fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_string(value) {
        Ok(body) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body,
        )
            .into_response(),
        Err(e) => error_response(&QuiverError::Internal(format!("encoding JSON: {e}"))),
    }
}

/// The HTTP status of an error, from its gRPC code (the one mapping, [`QuiverError::to_status`]).
fn error_response(e: &QuiverError) -> Response {
    let status = match e.to_status().code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => {
            StatusCode::CONFLICT
        }
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        tonic::Code::Ok
        | tonic::Code::Cancelled
        | tonic::Code::Unknown
        | tonic::Code::Internal
        | tonic::Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, format!("{e}\n")).into_response()
}

async fn status_page(State(view): State<Arc<CoordinatorView>>, headers: HeaderMap) -> Response {
    if let Err(refused) = caller(&view, &headers) {
        return refused.into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

async fn executors(State(view): State<Arc<CoordinatorView>>, headers: HeaderMap) -> Response {
    if let Err(refused) = caller(&view, &headers) {
        return refused.into_response();
    }
    json(&view.registry.live_executors())
}

/// The query log, and who is asking (the page shows Cancel where the caller may use it).
#[derive(Serialize)]
struct QueriesReply {
    user: Option<String>,
    admin: bool,
    auth: bool,
    #[serde(flatten)]
    log: crate::ops::queries::QueryLogSnapshot,
}

async fn queries(State(view): State<Arc<CoordinatorView>>, headers: HeaderMap) -> Response {
    let caller = match caller(&view, &headers) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    json(&QueriesReply {
        user: caller.user,
        admin: caller.admin,
        auth: view.auth.is_some(),
        log: view.queries.snapshot(),
    })
}

async fn cancel(
    State(view): State<Arc<CoordinatorView>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match caller(&view, &headers) {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "cancel requests from another site are refused\n",
        )
            .into_response();
    }
    match view.queries.cancel(&id, &caller) {
        Ok(()) => json(&serde_json::json!({ "cancelled": id })),
        Err(e) => error_response(&e),
    }
}

/// False when a browser says the request comes from a page of another host (cross-site request
/// forgery with saved Basic credentials); requests without `Origin` (curl, scripts) pass.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let (Ok(origin), Some(Ok(host))) = (
        origin.to_str(),
        headers.get(header::HOST).map(|h| h.to_str()),
    ) else {
        return false;
    };
    let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    authority.eq_ignore_ascii_case(host)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::ops::metrics::NodeValues;
    use crate::resources::ResourceLimits;
    use crate::security::auth::{AuthConfig, UserConfig, hash_password};
    use crate::security::cluster_auth::ClusterAuth;

    /// `METHOD path` with `headers` over a fresh connection; the status code and the body.
    async fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[&str],
    ) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for header in headers {
            text.push_str(header);
            text.push_str("\r\n");
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        stream.write_all(text.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let status = reply[9..12].parse().unwrap();
        (status, reply)
    }

    #[tokio::test]
    async fn the_page_and_api_need_credentials_and_probes_do_not() {
        let auth = Authenticator::new(&AuthConfig {
            token_secret: None,
            token_ttl_secs: 60,
            users: vec![UserConfig {
                name: "ann".into(),
                password_hash: hash_password("pw", 1000).unwrap(),
                admin: false,
            }],
        })
        .unwrap();
        let runtime = ResourceLimits::default().runtime_env().unwrap();
        let metrics = NodeMetrics::new(
            &runtime,
            None,
            NodeValues {
                tasks_running: Box::new(|| 0),
                heartbeats_missed: Box::new(|| 0),
            },
        )
        .unwrap();
        let view = CoordinatorView {
            metrics,
            registry: ExecutorRegistry::new(Duration::from_secs(5), ClusterAuth::open()),
            queries: Arc::new(QueryLog::default()),
            auth: Some(Arc::new(auth)),
            local_executors: Vec::new(),
        };
        let listen = HttpListen {
            listen: ([127, 0, 0, 1], 0).into(),
            address_file: None,
        };
        let server = AdminServer::coordinator(&listen, view).await.unwrap();
        let addr = server.addr;

        let (status, reply) = request(addr, "GET", "/", &[]).await;
        assert_eq!(status, 401, "{reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("www-authenticate: basic"),
            "{reply}"
        );
        let wrong = format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ann:nope")
        );
        assert_eq!(request(addr, "GET", "/api/queries", &[&wrong]).await.0, 401);
        let good = format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ann:pw")
        );
        let (status, reply) = request(addr, "GET", "/", &[&good]).await;
        assert_eq!(status, 200);
        assert!(reply.contains("<title>Quiver status</title>"));
        let (status, reply) = request(addr, "GET", "/api/queries", &[&good]).await;
        assert_eq!(status, 200, "{reply}");
        assert!(reply.contains("\"user\":\"ann\""), "{reply}");
        assert!(reply.contains("\"running\":[]"), "{reply}");
        let (status, reply) = request(addr, "POST", "/api/queries/nope/cancel", &[&good]).await;
        assert_eq!(status, 404, "{reply}");
        let cross_site = "Origin: https://elsewhere.example";
        assert_eq!(
            request(
                addr,
                "POST",
                "/api/queries/nope/cancel",
                &[&good, cross_site]
            )
            .await
            .0,
            403
        );

        // Open for scrapers and probes; not ready without a live executor.
        let (status, reply) = request(addr, "GET", "/metrics", &[]).await;
        assert_eq!(status, 200);
        assert!(
            reply.contains("# TYPE quiver_memory_used_bytes gauge"),
            "{reply}"
        );
        assert_eq!(request(addr, "GET", "/healthz", &[]).await.0, 200);
        assert_eq!(request(addr, "GET", "/readyz", &[]).await.0, 503);
    }

    #[test]
    fn cross_site_cancels_are_told_apart() {
        let mut headers = HeaderMap::new();
        assert!(same_origin(&headers));
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.remove(header::HOST);
        assert!(!same_origin(&headers));
    }

    #[test]
    fn errors_keep_their_meaning_over_http() {
        let status = |e: QuiverError| error_response(&e).status();
        assert_eq!(
            status(QuiverError::PermissionDenied("x".into())),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(QuiverError::NotFound("x".into())),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(QuiverError::FailedPrecondition("x".into())),
            StatusCode::CONFLICT
        );
    }
}
