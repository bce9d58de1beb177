//! The coordinator process: Flight SQL front door, catalog, membership and query planning.
//!
//! One port serves both the Flight SQL service (clients) and `quiver.cluster.v1.ClusterService`
//! (executors). Queries are planned with the distributed planner over the live executor set and
//! their head stage runs here, streaming to the client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionContext;
use quiver_proto::cluster::cluster_service_server::ClusterServiceServer;
use tonic::transport::Server;

use crate::catalog::{Catalog, TableDef};
use crate::distributed;
use crate::engine::QueryEngine;
use crate::error::{QuiverError, Result};
use crate::frontdoor::FrontDoor;
use crate::membership::{ClusterServiceImpl, ExecutorRegistry};
use crate::net::{self, ServerHandle};
use crate::settings;
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
    /// How long a query may run before it is cancelled with `DeadlineExceeded`; `None`: no limit.
    pub query_timeout: Option<Duration>,
}

impl CoordinatorConfig {
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval.is_zero() || self.executor_timeout <= self.heartbeat_interval {
            return Err(QuiverError::InvalidArgument(format!(
                "the executor timeout ({:?}) must be longer than the heartbeat interval ({:?})",
                self.executor_timeout, self.heartbeat_interval
            )));
        }
        Ok(())
    }
}

/// A running coordinator; dropping it stops it.
#[derive(Debug)]
pub struct RunningCoordinator {
    pub addr: SocketAddr,
    registry: Arc<ExecutorRegistry>,
    server: ServerHandle,
    _reaper: AbortOnDrop,
}

impl RunningCoordinator {
    pub fn registry(&self) -> &Arc<ExecutorRegistry> {
        &self.registry
    }

    /// The URL executors and clients use.
    pub fn url(&self) -> String {
        format!("grpc://{}", self.addr)
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
    let registry = ExecutorRegistry::new(config.executor_timeout);
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
    let runtime = Arc::new(RuntimeEnv::default());
    let state = distributed::coordinator_state(
        session_config,
        runtime,
        Arc::clone(&registry),
        config.scan_bytes_per_partition,
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

    let engine = Arc::new(QueryEngine::new(
        ctx,
        Arc::clone(&catalog),
        Arc::clone(&registry),
        config.query_timeout,
    ));
    let front_door = FrontDoor::new(engine)?;
    let cluster =
        ClusterServiceImpl::new(Arc::clone(&registry), catalog, config.heartbeat_interval);

    let (incoming, addr) = net::bind(config.listen).await?;
    let router = Server::builder()
        .tcp_nodelay(true)
        // JDBC forwards every unknown URL property as a header.
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .add_service(front_door.into_service())
        .add_service(ClusterServiceServer::new(cluster));
    let server = ServerHandle::spawn("coordinator", router, incoming);
    if let Some(path) = &config.address_file {
        net::write_address_file(path, addr)?;
    }
    tracing::info!(%addr, "coordinator serving Flight SQL");
    Ok(RunningCoordinator {
        addr,
        registry,
        server,
        _reaper: reaper,
    })
}
