//! The coordinator process: Flight SQL front door, catalog, membership and query planning.
//!
//! One port serves both the Flight SQL service (clients) and `quiver.cluster.v1.ClusterService`
//! (executors). Queries are planned with the distributed planner over the live executor set and
//! their head stage runs here, streaming to the client.

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
        if self.max_message_bytes < 4 * 1024 * 1024 {
            return Err(QuiverError::InvalidArgument(
                "--max-message-bytes must be at least 4 MiB (gRPC's default)".into(),
            ));
        }
        Ok(())
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
    server: ServerHandle,
    _local_cluster_server: Option<ServerHandle>,
    _reaper: AbortOnDrop,
    _collector: AbortOnDrop,
}

impl RunningCoordinator {
    pub fn registry(&self) -> &Arc<ExecutorRegistry> {
        &self.registry
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

    /// Runs until the server stops.
    pub async fn wait(self) -> Result<()> {
        self.server.wait().await
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
    let session_config = settings::session_config(target_partitions)?;
    let runtime = config.limits.runtime_env()?;
    let memory = Arc::new(QueryMemory::new(
        Arc::clone(&runtime),
        config.limits.query_memory_limit,
    ));
    let state = distributed::coordinator_state(
        session_config,
        runtime,
        Arc::clone(&registry),
        config.scan_bytes_per_partition,
        config.shuffle_compression,
        config.cluster_auth.clone(),
    )?;
    let ctx = SessionContext::new_with_state(state);

    let catalog = Arc::new(Catalog::load(
        config.catalog.clone(),
        config.tables.clone(),
    )?);
    catalog.register_all(&ctx).await?;
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
        Admission::new(config.max_concurrent_queries, config.max_queued_queries),
        config.locations.clone(),
    ));
    let authenticator = config
        .auth
        .as_ref()
        .map(Authenticator::new)
        .transpose()?
        .map(Arc::new);
    let front_door = FrontDoor::new(engine)?;
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
            authenticator,
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
        server,
        _local_cluster_server: local_cluster_server,
        _reaper: reaper,
        _collector: collector,
    })
}
