//! The coordinator process: Flight SQL front door, catalog, membership and query planning.
//!
//! One port serves both the Flight SQL service (clients) and `quiver.cluster.v1.ClusterService`
//! (executors). Queries are planned with the distributed planner over the live executor set and
//! their head stage runs here, streaming to the client.
//!
//! Drain ([`RunningCoordinator::drain`], on SIGTERM): new queries are refused with `Unavailable`
//! ("the coordinator is shutting down"), running ones may finish for up to `drain_grace`, then
//! the server stops, letting calls in flight end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::ipc::CompressionType;
use datafusion::prelude::SessionContext;
use quiver_proto::cluster::cluster_service_server::ClusterServiceServer;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::cluster::distributed;
use crate::cluster::membership::{ClusterServiceImpl, ExecutorRegistry};
use crate::config::LocationPolicy;
use crate::engine::{QueryEngine, QueryLimits, WriteSettings};
use crate::error::{QuiverError, Result};
use crate::frontdoor::FrontDoor;
use crate::node::net::{self, ServerHandle};
use crate::ops::http::{self, AdminServer, CoordinatorView, HttpListen};
use crate::ops::metrics::{CoordinatorMetrics, NodeMetrics, NodeValues};
use crate::ops::progress;
use crate::ops::queries::QueryLog;
use crate::ops::system_tables::{SYSTEM_SCHEMA, SystemSchema};
use crate::planner::settings;
use crate::resources::{Admission, QueryMemory, ResourceLimits};
use crate::security::auth::{AuthConfig, Authenticated, Authenticator};
use crate::security::cluster_auth::{ClusterAuth, Verified};
use crate::sink::MIN_TARGET_FILE_BYTES;
use crate::sink::staging::StagingCollector;
use crate::storage::catalog::{Catalog, TableDef};
use crate::storage::warehouse::Warehouse;
use crate::task::AbortOnDrop;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub tables: Vec<TableDef>,
    /// Catalog file; tables created with SQL are persisted here.
    pub catalog: Option<PathBuf>,
    pub address_file: Option<PathBuf>,
    /// An executor not heard from for this long leaves the live set.
    pub executor_timeout: Duration,
    /// How often executors heartbeat.
    pub heartbeat_interval: Duration,
    /// DataFusion partitions per node (0 = one per core).
    pub target_partitions: usize,
    /// Bytes of input each partition of a distributed scan reads; decides how many executors a
    /// scan is spread over.
    pub scan_bytes_per_partition: usize,
    /// Largest estimated build side (bytes) a hash join broadcasts instead of shuffling both
    /// sides (`--broadcast-join-bytes`).
    pub broadcast_join_bytes: usize,
    /// A broadcast whose stage reads at most this many bytes of files runs in the stage that
    /// uses it, in each of its tasks; 0: every broadcast is a stage of its own.
    pub inline_broadcast_bytes: u64,
    /// Compression of batches between nodes; `None` sends them uncompressed.
    pub shuffle_compression: Option<CompressionType>,
    /// How long a query may run before it is cancelled with `DeadlineExceeded`; `None`: no limit.
    pub query_timeout: Option<Duration>,
    /// How long each stage of a query may run on an executor; `None`: no limit.
    pub stage_timeout: Option<Duration>,
    /// Test only: every commit sleeps this long after its catalog write (`--test-commit-pause-ms`).
    pub test_commit_pause: Option<Duration>,
    /// Writes start a new file once one reaches this size.
    pub target_file_bytes: u64,
    /// How long the write journal keeps a write after it started, and how often the staging
    /// collector runs (see `sink::staging`).
    pub staging_grace: Duration,
    pub staging_interval: Duration,
    /// Client authentication; `None` accepts every client (loopback only unless `insecure`).
    pub auth: Option<AuthConfig>,
    /// Where `CREATE EXTERNAL TABLE` may point; `None` allows any location.
    pub locations: Option<LocationPolicy>,
    /// Serve TLS with this certificate chain and key (PEM).
    pub tls: Option<TlsFiles>,
    /// Allow a non-loopback listen address without authentication.
    pub insecure: bool,
    /// Where tables written with SQL or bulk ingest keep their files (a directory or `s3://`
    /// URL); `None` refuses writes.
    pub warehouse: Option<String>,
    /// Largest message a client may send (ingest and parameter batches).
    pub max_message_bytes: usize,
    /// Also serve the cluster service on a plaintext loopback port, for in-process executors
    /// when the main port speaks TLS (`quiver serve`).
    pub local_cluster_listener: bool,
    /// Memory and spill limits of the coordinator's query execution.
    pub limits: ResourceLimits,
    /// Queries running at once (0 = no limit) and queries waiting beyond that.
    pub max_concurrent_queries: usize,
    pub max_queued_queries: usize,
    /// The cluster secret: required of executors' membership calls, signs calls to executors.
    pub cluster_auth: ClusterAuth,
    /// How long a drain lets running queries finish.
    pub drain_grace: Duration,
    /// The admin HTTP port (metrics, health, the status page); `None`: none.
    pub http: Option<HttpListen>,
    /// Labels this node's metrics (`node="..."`), for several nodes in one process.
    pub node_name: Option<String>,
}

/// PEM files of a TLS identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    fn server_config(&self) -> Result<ServerTlsConfig> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|e| QuiverError::io(format!("reading TLS {what} {}", path.display()), e))
        };
        let identity =
            Identity::from_pem(read(&self.cert, "certificate")?, read(&self.key, "key")?);
        Ok(ServerTlsConfig::new().identity(identity))
    }
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<()> {
        if self.target_file_bytes < MIN_TARGET_FILE_BYTES {
            return Err(QuiverError::InvalidArgument(format!(
                "--target-file-bytes must be at least {MIN_TARGET_FILE_BYTES}"
            )));
        }
        if self.staging_interval.is_zero() {
            return Err(QuiverError::InvalidArgument(
                "--staging-interval-secs must be positive".into(),
            ));
        }
        if self.heartbeat_interval.is_zero() || self.executor_timeout <= self.heartbeat_interval {
            return Err(QuiverError::InvalidArgument(format!(
                "the executor timeout ({:?}) must be longer than the heartbeat interval ({:?})",
                self.executor_timeout, self.heartbeat_interval
            )));
        }
        if !self.listen.ip().is_loopback() && self.auth.is_none() && !self.insecure {
            return Err(QuiverError::InvalidArgument(format!(
                "refusing to serve {} without authentication: add an [auth] section with users to --config, or pass --insecure if something else protects this address",
                self.listen
            )));
        }
        if !self.listen.ip().is_loopback() && self.cluster_auth.is_open() && !self.insecure {
            return Err(QuiverError::InvalidArgument(format!(
                "refusing to serve {} without --cluster-secret-file: anyone reaching it could join the cluster as an executor (pass --insecure if something else protects this address)",
                self.listen
            )));
        }
        if let Some(http) = &self.http {
            http::check_coordinator_exposure(http, self.auth.is_some(), self.insecure)?;
        }
        if self.max_message_bytes < 4 * 1024 * 1024 {
            return Err(QuiverError::InvalidArgument(
                "--max-message-bytes must be at least 4 MiB (gRPC's default)".into(),
            ));
        }
        Ok(())
    }

    /// What start-up checks before it binds (`quiver coordinator --check`): [`Self::validate`],
    /// the users and token settings of `[auth]`, the TLS files, the catalog file and the
    /// warehouse location. Binds, writes and contacts nothing. Returns the effective settings,
    /// secrets left out.
    pub fn check(&self) -> Result<Vec<(&'static str, String)>> {
        self.validate()?;
        if let Some(auth) = &self.auth {
            Authenticator::new(auth)?;
        }
        if let Some(tls) = &self.tls {
            tls.server_config()?;
        }
        let catalog = Catalog::load(self.catalog.clone(), self.tables.clone())?;
        if let Some(warehouse) = &self.warehouse {
            crate::storage::object_stores::store_root(warehouse)?;
        }
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        let ms = |d: Option<Duration>| or_none(d.map(|d| format!("{} ms", d.as_millis())));
        Ok(vec![
            ("listen", self.listen.to_string()),
            (
                "http_listen",
                or_none(self.http.as_ref().map(|h| h.listen.to_string())),
            ),
            (
                "address_file",
                or_none(self.address_file.as_ref().map(|p| p.display().to_string())),
            ),
            ("tls", self.tls.is_some().to_string()),
            (
                "auth",
                match &self.auth {
                    Some(auth) => format!("on, {} users", auth.users.len()),
                    None => "off".into(),
                },
            ),
            (
                "cluster_secret",
                if self.cluster_auth.is_open() {
                    "none"
                } else {
                    "set"
                }
                .into(),
            ),
            ("insecure", self.insecure.to_string()),
            (
                "catalog",
                or_none(catalog.path().map(|p| p.display().to_string())),
            ),
            ("flag_tables", self.tables.len().to_string()),
            ("warehouse", or_none(self.warehouse.clone())),
            (
                "executor_timeout",
                format!("{} ms", self.executor_timeout.as_millis()),
            ),
            (
                "heartbeat_interval",
                format!("{} ms", self.heartbeat_interval.as_millis()),
            ),
            ("target_partitions", self.target_partitions.to_string()),
            (
                "scan_bytes_per_partition",
                self.scan_bytes_per_partition.to_string(),
            ),
            (
                "broadcast_join_bytes",
                self.broadcast_join_bytes.to_string(),
            ),
            (
                "inline_broadcast_bytes",
                self.inline_broadcast_bytes.to_string(),
            ),
            ("query_timeout", ms(self.query_timeout)),
            ("stage_timeout", ms(self.stage_timeout)),
            (
                "max_concurrent_queries",
                self.max_concurrent_queries.to_string(),
            ),
            ("max_queued_queries", self.max_queued_queries.to_string()),
            ("max_message_bytes", self.max_message_bytes.to_string()),
            ("target_file_bytes", self.target_file_bytes.to_string()),
            (
                "memory_limit",
                or_none(self.limits.memory_limit.map(|m| m.to_string())),
            ),
            (
                "query_memory_limit",
                or_none(self.limits.query_memory_limit.map(|m| m.to_string())),
            ),
            ("drain_grace", format!("{} s", self.drain_grace.as_secs())),
        ])
    }
}

/// A running coordinator; dropping it stops it.
#[derive(Debug)]
pub struct RunningCoordinator {
    pub addr: SocketAddr,
    tls: bool,
    /// The plaintext loopback cluster-service address, when there is one.
    local_cluster_addr: Option<SocketAddr>,
    registry: Arc<ExecutorRegistry>,
    /// The admin HTTP port's address, when it has one.
    pub http_addr: Option<SocketAddr>,
    /// What an admin port of this coordinator serves.
    admin_view: CoordinatorView,
    server: ServerHandle,
    _admin: Option<AdminServer>,
    local_cluster_server: Option<ServerHandle>,
    admission: Admission,
    drain_grace: Duration,
    _reaper: AbortOnDrop,
    _collector: AbortOnDrop,
    _progress: AbortOnDrop,
}

/// How long the server may finish calls in flight once the queries have ended.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

impl RunningCoordinator {
    pub fn registry(&self) -> &Arc<ExecutorRegistry> {
        &self.registry
    }

    pub(crate) fn admin_view(&self) -> CoordinatorView {
        self.admin_view.clone()
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "grpc+tls" } else { "grpc" };
        format!("{scheme}://{}", self.addr)
    }

    /// The URL in-process executors register at.
    pub fn cluster_url(&self) -> String {
        match self.local_cluster_addr {
            Some(addr) => format!("grpc://{addr}"),
            None => self.url(),
        }
    }

    /// Runs until the server stops (an error). Cancel-safe: stop waiting to [`Self::drain`].
    pub async fn wait(&mut self) -> Result<()> {
        self.server.wait().await
    }

    /// How long [`Self::drain`] lets running queries finish.
    pub fn drain_grace(&self) -> Duration {
        self.drain_grace
    }

    /// First step of a drain: every new query is refused with `Unavailable` from now on.
    pub fn stop_admitting(&self) {
        self.admission.close();
        tracing::info!(
            running = self.admission.running(),
            grace_secs = self.drain_grace.as_secs_f64(),
            "draining: refusing new queries, letting running ones finish"
        );
    }

    /// Waits until no admitted query runs, or until `deadline`; true if none runs.
    pub async fn queries_ended(&self, deadline: tokio::time::Instant) -> bool {
        let ended = tokio::time::timeout_at(deadline, self.admission.idle())
            .await
            .is_ok();
        if ended {
            tracing::info!("drained: no query running");
        } else {
            tracing::warn!(
                running = self.admission.running(),
                "drain grace period over: stopping with queries still running"
            );
        }
        ended
    }

    /// Stops serving, letting calls in flight end (briefly).
    pub async fn shutdown(self) {
        if let Some(local) = self.local_cluster_server {
            local.shutdown(SHUTDOWN_LIMIT).await;
        }
        self.server.shutdown(SHUTDOWN_LIMIT).await;
        tracing::info!("coordinator stopped");
    }

    /// Shuts down gracefully (see the module doc).
    pub async fn drain(self) -> Result<()> {
        self.stop_admitting();
        self.queries_ended(tokio::time::Instant::now() + self.drain_grace)
            .await;
        self.shutdown().await;
        Ok(())
    }
}

/// Largest request header block accepted (h2's default is 16 KiB).
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;

/// datafusion-distributed 4.0.0 splits a single-mode aggregate across tasks without a final
/// merge when planning with one partition (wrong q11/q15 results): distributed planning always
/// uses at least two.
const MIN_DISTRIBUTED_TARGET_PARTITIONS: usize = 2;

pub async fn start(config: CoordinatorConfig) -> Result<RunningCoordinator> {
    config.validate()?;
    let registry = ExecutorRegistry::new(config.executor_timeout, config.cluster_auth.clone());
    let reaper = registry.spawn_reaper();

    let mut target_partitions = config.target_partitions;
    if target_partitions > 0 && target_partitions < MIN_DISTRIBUTED_TARGET_PARTITIONS {
        tracing::warn!(
            requested = target_partitions,
            used = MIN_DISTRIBUTED_TARGET_PARTITIONS,
            "target partitions raised: distributed plans need at least 2"
        );
        target_partitions = MIN_DISTRIBUTED_TARGET_PARTITIONS;
    }
    let session_config = settings::with_broadcast_join_bytes(
        settings::session_config(target_partitions)?,
        config.broadcast_join_bytes,
    );
    let runtime = config.limits.runtime_env()?;
    let admission = Admission::new(config.max_concurrent_queries, config.max_queued_queries);
    let load = admission.load();
    let metrics = NodeMetrics::new(
        &runtime,
        config.node_name.as_deref(),
        NodeValues {
            // The coordinator runs the head stage of each query it admitted.
            tasks_running: {
                let load = load.clone();
                Box::new(move || load.running() as u64)
            },
            heartbeats_missed: {
                let registry = Arc::clone(&registry);
                Box::new(move || registry.heartbeats_missed())
            },
        },
    )?;
    let query_metrics = CoordinatorMetrics::register(&metrics, load, Arc::clone(&registry))?;
    let memory = Arc::new(QueryMemory::new(
        Arc::clone(&runtime),
        config.limits.query_memory_limit,
    ));
    let state = distributed::metered_coordinator_state(
        session_config,
        runtime,
        Arc::clone(&registry),
        distributed::StageSizes {
            scan_bytes_per_partition: config.scan_bytes_per_partition,
            inline_broadcast_bytes: config.inline_broadcast_bytes,
        },
        config.shuffle_compression,
        config.cluster_auth.clone(),
        metrics.traffic(),
    )?;
    let ctx = SessionContext::new_with_state(state);

    let catalog = Arc::new(Catalog::load(
        config.catalog.clone(),
        config.tables.clone(),
    )?);
    catalog.register_all(&ctx).await?;
    let query_log = Arc::new(QueryLog::default());
    query_log.add_observer(query_metrics);
    ctx.catalog(settings::CATALOG_NAME)
        .ok_or_else(|| QuiverError::Internal("the session has no quiver catalog".into()))?
        .register_schema(
            SYSTEM_SCHEMA,
            Arc::new(SystemSchema::new(
                Arc::clone(&query_log),
                Arc::clone(&registry),
            )),
        )?;
    let progress = progress::spawn(
        Arc::clone(&query_log),
        Arc::clone(&registry),
        config.cluster_auth.clone(),
    );
    if catalog.path().is_none() {
        tracing::warn!(
            "no --catalog file: tables created with SQL last until the coordinator restarts"
        );
    }

    // What a crashed or failed write left goes now (no write of an earlier process can commit
    // any more), then periodically.
    let staging = Arc::new(StagingCollector::new(
        Arc::clone(&catalog),
        ctx.runtime_env(),
        config.staging_grace,
    ));
    staging.collect().await;
    let collector = Arc::clone(&staging).run_periodically(config.staging_interval);

    let warehouse = config
        .warehouse
        .as_deref()
        .map(Warehouse::new)
        .transpose()?;
    let engine = Arc::new(QueryEngine::new(
        ctx,
        Arc::clone(&catalog),
        Arc::clone(&registry),
        QueryLimits {
            timeout: config.query_timeout,
            stage_timeout: config.stage_timeout,
            memory,
            writes: WriteSettings {
                staging,
                target_file_bytes: config.target_file_bytes,
                test_commit_pause: config.test_commit_pause,
            },
        },
        warehouse,
        admission.clone(),
        config.locations.clone(),
    ));
    let authenticator = config
        .auth
        .as_ref()
        .map(Authenticator::new)
        .transpose()?
        .map(Arc::new);
    let front_door = FrontDoor::new(engine)?.with_query_log(Arc::clone(&query_log));
    let cluster = Arc::new(ClusterServiceImpl::new(
        Arc::clone(&registry),
        catalog,
        config.heartbeat_interval,
    ));

    let (incoming, addr) = net::bind(config.listen).await?;
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        // JDBC forwards every unknown URL property as a header.
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE);
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.server_config()?)
            .map_err(|e| QuiverError::InvalidArgument(format!("TLS configuration: {e}")))?;
    }
    let router = builder
        .add_service(Authenticated::new(
            front_door.into_service(config.max_message_bytes),
            authenticator.clone(),
        ))
        .add_service(Verified::new(
            ClusterServiceServer::from_arc(Arc::clone(&cluster)),
            config.cluster_auth.clone(),
        ));
    let server = ServerHandle::spawn("coordinator", router, incoming);
    let (local_cluster_server, local_cluster_addr) = if config.local_cluster_listener {
        let (incoming, addr) = net::bind(([127, 0, 0, 1], 0).into()).await?;
        let router = Server::builder()
            .tcp_nodelay(true)
            .add_service(Verified::new(
                ClusterServiceServer::from_arc(cluster),
                config.cluster_auth.clone(),
            ));
        (
            Some(ServerHandle::spawn("cluster", router, incoming)),
            Some(addr),
        )
    } else {
        (None, None)
    };
    let admin_view = CoordinatorView {
        metrics,
        registry: Arc::clone(&registry),
        queries: Arc::clone(&query_log),
        auth: authenticator,
        local_executors: Vec::new(),
    };
    // Up before the address file says the coordinator serves.
    let admin = match &config.http {
        Some(http) => Some(AdminServer::coordinator(http, admin_view.clone()).await?),
        None => None,
    };
    if let Some(path) = &config.address_file {
        net::write_address_file(path, addr)?;
    }
    tracing::info!(
        %addr,
        tls = config.tls.is_some(),
        auth = config.auth.is_some(),
        "coordinator serving Flight SQL"
    );
    Ok(RunningCoordinator {
        addr,
        tls: config.tls.is_some(),
        local_cluster_addr,
        registry,
        http_addr: admin.as_ref().map(|a| a.addr),
        admin_view,
        server,
        _admin: admin,
        local_cluster_server,
        admission,
        drain_grace: config.drain_grace,
        _reaper: reaper,
        _collector: collector,
        _progress: progress,
    })
}
