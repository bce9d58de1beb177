//! The executor process: a datafusion-distributed worker plus Quiver's membership client.
//!
//! An executor serves, on one port, the worker service (plan fragments from the coordinator and
//! shuffle reads from other executors) and `quiver.cluster.v1.ExecutorService` (its status). In
//! the background it registers with the coordinator, heartbeats at the interval the coordinator
//! asks for, registers again whenever the coordinator does not know it (coordinator restart or
//! expiry), and builds the object stores the coordinator's tables need. It keeps retrying while
//! the coordinator is unreachable, so start order does not matter.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionConfig;
use quiver_proto::cluster::cluster_service_client::ClusterServiceClient;
use quiver_proto::cluster::executor_service_server::{ExecutorService, ExecutorServiceServer};
use quiver_proto::cluster::{
    ExecutorStatus, GetExecutorStatusRequest, HeartbeatRequest, ObjectStoreConfig,
    RegisterExecutorRequest,
};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Request, Response, Status};
use url::Url;

use crate::cluster::distributed::{self, LatestSettings, TaskObserver};
use crate::cluster::membership::normalize_worker_url;
use crate::error::{QuiverError, Result};
use crate::node::net::{self, ServerHandle};
use crate::resources::{QueryMemory, ResourceLimits};
use crate::security::cluster_auth::{ClusterAuth, Signed, Verified};
use crate::storage::object_stores;

/// How long to wait before retrying an unreachable coordinator.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// Deadline of each membership call.
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The coordinator, e.g. `grpc://10.0.0.1:50051`.
    pub coordinator: String,
    pub listen: SocketAddr,
    /// The URL others use to reach this executor; defaults to `http://<bound address>`.
    pub advertise: Option<String>,
    pub address_file: Option<PathBuf>,
    /// DataFusion partitions per task on this node (0 = one per core).
    pub target_partitions: usize,
    /// PEM certificate(s) to trust when the coordinator URL is `grpc+tls://`/`https://`
    /// (default: the system's web PKI roots are not bundled, so this is needed for TLS).
    pub coordinator_ca: Option<PathBuf>,
    /// Memory and spill limits of this executor's query execution.
    pub limits: ResourceLimits,
    /// The cluster secret: signs this executor's internal calls and is required of every call
    /// it serves.
    pub cluster_auth: ClusterAuth,
}

/// What the executor knows about itself, shared by the status service and the task sessions.
#[derive(Debug)]
struct ExecutorState {
    executor_id: String,
    worker_url: Url,
    tasks_started: AtomicU64,
    latest_settings: LatestSettings,
    /// Signs this executor's own internal calls.
    auth: ClusterAuth,
}

impl TaskObserver for ExecutorState {
    fn task_started(&self, settings: &SessionConfig) {
        self.tasks_started.fetch_add(1, Ordering::Relaxed);
        self.latest_settings.record(settings);
    }
}

struct StatusService(Arc<ExecutorState>);

#[tonic::async_trait]
impl ExecutorService for StatusService {
    async fn get_executor_status(
        &self,
        _request: Request<GetExecutorStatusRequest>,
    ) -> std::result::Result<Response<ExecutorStatus>, Status> {
        let state = &self.0;
        let tasks_running = distributed::running_tasks(&state.worker_url, &state.auth)
            .await
            .map_err(|e| QuiverError::Unavailable(format!("reading task progress: {e}")))?;
        Ok(Response::new(ExecutorStatus {
            executor_id: state.executor_id.clone(),
            worker_url: state.worker_url.to_string(),
            tasks_started: state.tasks_started.load(Ordering::Relaxed),
            session_settings: state.latest_settings.get().into_iter().collect(),
            tasks_running,
        }))
    }
}

/// A running executor; dropping it stops it.
#[derive(Debug)]
pub struct RunningExecutor {
    pub addr: SocketAddr,
    pub worker_url: Url,
    server: ServerHandle,
    _membership: MembershipThread,
}

impl RunningExecutor {
    /// Runs until the server stops.
    pub async fn wait(self) -> Result<()> {
        self.server.wait().await
    }
}

/// Starts an executor: binds, serves, and joins the coordinator's cluster in the background.
pub async fn start(config: ExecutorConfig) -> Result<RunningExecutor> {
    let coordinator = normalize_worker_url(&config.coordinator)
        .map_err(|e| QuiverError::InvalidArgument(format!("--coordinator {e}")))?;
    let (incoming, addr) = net::bind(config.listen).await?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let worker_url = normalize_worker_url(&advertise)
        .map_err(|e| QuiverError::InvalidArgument(format!("--advertise {e}")))?;
    if addr.ip().is_unspecified() && config.advertise.is_none() {
        return Err(QuiverError::InvalidArgument(format!(
            "listening on {addr}: pass --advertise with an address other nodes can reach"
        )));
    }

    let state = Arc::new(ExecutorState {
        executor_id: uuid::Uuid::new_v4().to_string(),
        worker_url: worker_url.clone(),
        tasks_started: AtomicU64::new(0),
        latest_settings: LatestSettings::default(),
        auth: config.cluster_auth.clone(),
    });
    let runtime = config.limits.runtime_env()?;
    let memory = Arc::new(QueryMemory::new(
        Arc::clone(&runtime),
        config.limits.query_memory_limit,
    ));

    let mut server = Server::builder().tcp_nodelay(true);
    let router = distributed::worker_router(
        &mut server,
        memory,
        config.target_partitions,
        Arc::clone(&state) as Arc<dyn TaskObserver>,
        config.cluster_auth.clone(),
    )
    .add_service(Verified::new(
        ExecutorServiceServer::new(StatusService(Arc::clone(&state))),
        config.cluster_auth.clone(),
    ));
    let server = ServerHandle::spawn("executor", router, incoming);
    if let Some(path) = &config.address_file {
        net::write_address_file(path, addr)?;
    }
    tracing::info!(%addr, %worker_url, executor_id = %state.executor_id, %coordinator, "executor serving");

    let mut endpoint = Endpoint::from_shared(coordinator.to_string())
        .map_err(|e| QuiverError::InvalidArgument(format!("--coordinator: {e}")))?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    if coordinator.scheme() == "https" {
        let ca = config.coordinator_ca.as_ref().ok_or_else(|| {
            QuiverError::InvalidArgument(
                "the coordinator speaks TLS: pass --coordinator-ca with the certificate to trust"
                    .into(),
            )
        })?;
        let pem = std::fs::read(ca)
            .map_err(|e| QuiverError::io(format!("reading {}", ca.display()), e))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| QuiverError::InvalidArgument(format!("--coordinator-ca: {e}")))?;
    }
    let membership = MembershipThread::spawn(endpoint, Arc::clone(&state), runtime)?;

    Ok(RunningExecutor {
        addr,
        worker_url,
        server,
        _membership: membership,
    })
}

/// The membership client runs on an OS thread with a runtime of its own: CPU-bound DataFusion
/// operators can keep the executor's runtime busy for seconds, and missed heartbeats would evict
/// a busy executor from the cluster. Dropping this stops the thread.
#[derive(Debug)]
struct MembershipThread {
    stop: Option<oneshot::Sender<()>>,
}

impl MembershipThread {
    fn spawn(
        coordinator: Endpoint,
        state: Arc<ExecutorState>,
        runtime: Arc<RuntimeEnv>,
    ) -> Result<Self> {
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("quiver-membership".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the membership runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = ClusterServiceClient::new(Signed::new(
                        coordinator.connect_lazy(),
                        state.auth.clone(),
                    ));
                    tokio::select! {
                        _ = membership_loop(client, state, runtime) => {}
                        _ = stopped => {}
                    }
                });
            })
            .map_err(|e| QuiverError::io("starting the membership thread", e))?;
        Ok(Self { stop: Some(stop) })
    }
}

impl Drop for MembershipThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Registers, then heartbeats forever; re-registers when the coordinator forgets us.
async fn membership_loop(
    mut client: ClusterServiceClient<Signed<Channel>>,
    state: Arc<ExecutorState>,
    runtime: Arc<RuntimeEnv>,
) {
    let mut registered = false;
    let mut interval = RETRY_INTERVAL;
    let mut reported_failure = false;
    loop {
        let outcome = if registered {
            client
                .heartbeat(HeartbeatRequest {
                    executor_id: state.executor_id.clone(),
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if !r.known {
                        tracing::info!(
                            "coordinator does not know this executor: registering again"
                        );
                        registered = false;
                    }
                    r.object_stores
                })
        } else {
            client
                .register_executor(RegisterExecutorRequest {
                    executor_id: state.executor_id.clone(),
                    worker_url: state.worker_url.to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    registered = true;
                    interval = Duration::from_millis(r.heartbeat_interval_ms.max(50));
                    tracing::info!(
                        heartbeat_ms = r.heartbeat_interval_ms,
                        "registered with the coordinator"
                    );
                    r.object_stores
                })
        };
        match outcome {
            Ok(stores) => {
                reported_failure = false;
                register_stores(&runtime, &stores);
                if !registered {
                    continue;
                }
                tokio::time::sleep(interval).await;
            }
            Err(status) => {
                if !reported_failure {
                    tracing::warn!(code = ?status.code(), message = status.message(), "coordinator unreachable; retrying");
                    reported_failure = true;
                }
                registered = false;
                tokio::time::sleep(RETRY_INTERVAL).await;
            }
        }
    }
}

fn register_stores(runtime: &RuntimeEnv, stores: &[ObjectStoreConfig]) {
    for store in stores {
        let result = Url::parse(&store.url)
            .map_err(|e| QuiverError::InvalidArgument(e.to_string()))
            .and_then(|root| {
                let options = store.options.clone().into_iter().collect();
                object_stores::ensure_registered(runtime, &root, &options)
            });
        match result {
            Ok(true) => tracing::info!(url = %store.url, "object store registered"),
            Ok(false) => {}
            Err(e) => tracing::error!(url = %store.url, error = %e, "cannot build object store"),
        }
    }
}
