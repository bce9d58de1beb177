//! The executor process: a datafusion-distributed worker plus Quiver's membership client.
//!
//! An executor serves, on one port, the worker service (plan fragments from the coordinator and
//! shuffle reads from other executors) and `quiver.cluster.v1.ExecutorService` (its status). In
//! the background it registers with the coordinator, heartbeats at the interval the coordinator
//! asks for, registers again whenever the coordinator does not know it (coordinator restart or
//! expiry), and builds the object stores the coordinator's tables need. It keeps retrying while
//! the coordinator is unreachable, so start order does not matter.
//!
//! Drain ([`RunningExecutor::drain`], on SIGTERM): the executor heartbeats at once with
//! `draining`, so the coordinator places no new task on it (queries already running on it go
//! on); it waits until it holds no task of a running query, or until `drain_grace` has passed;
//! then it leaves the cluster with `DeregisterExecutor` and stops serving. While draining it
//! never registers again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionConfig;
use quiver_proto::cluster::cluster_service_client::ClusterServiceClient;
use quiver_proto::cluster::executor_service_server::{ExecutorService, ExecutorServiceServer};
use quiver_proto::cluster::{
    DeregisterExecutorRequest, DynamicFilterAck, DynamicFilterUpdate, ExecutorStats,
    ExecutorStatus, GetExecutorStatusRequest, HeartbeatRequest, ObjectStoreConfig,
    RegisterExecutorRequest,
};
use tokio::sync::{oneshot, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Request, Response, Status};
use url::Url;

use crate::cluster::distributed::{self, LatestSettings, TaskObserver};
use crate::cluster::filter_relay::{FilterRelay, Publisher, RelayConfig};
use crate::cluster::membership::normalize_worker_url;
use crate::error::{QuiverError, Result};
use crate::node::net::{self, ServerHandle};
use crate::ops::http::{AdminServer, ExecutorHealth, HttpListen};
use crate::ops::metrics::{NodeMetrics, NodeValues};
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
    /// How long a drain waits for running tasks before the executor leaves anyway.
    pub drain_grace: Duration,
    /// The admin HTTP port (metrics, health); `None`: none.
    pub http: Option<HttpListen>,
    /// Labels this node's metrics (`node="..."`), for several nodes in one process.
    pub node_name: Option<String>,
}

impl ExecutorConfig {
    /// What start-up checks before it binds (`quiver executor --check`): the coordinator and
    /// advertised URLs and the coordinator's CA file. Binds, writes and contacts nothing.
    /// Returns the effective settings, secrets left out.
    pub fn check(&self) -> Result<Vec<(&'static str, String)>> {
        let coordinator = normalize_worker_url(&self.coordinator)
            .map_err(|e| QuiverError::InvalidArgument(format!("--coordinator {e}")))?;
        if self.listen.ip().is_unspecified() && self.advertise.is_none() {
            return Err(QuiverError::InvalidArgument(format!(
                "listening on {}: pass --advertise with an address other nodes can reach",
                self.listen
            )));
        }
        let advertise = self
            .advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen));
        let worker_url = normalize_worker_url(&advertise)
            .map_err(|e| QuiverError::InvalidArgument(format!("--advertise {e}")))?;
        if coordinator.scheme() == "https" {
            let ca = self.coordinator_ca.as_ref().ok_or_else(|| {
                QuiverError::InvalidArgument(
                    "the coordinator speaks TLS: pass --coordinator-ca with the certificate to trust"
                        .into(),
                )
            })?;
            std::fs::read(ca)
                .map_err(|e| QuiverError::io(format!("reading {}", ca.display()), e))?;
        }
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        Ok(vec![
            ("coordinator", coordinator.to_string()),
            ("listen", self.listen.to_string()),
            ("advertise", worker_url.to_string()),
            (
                "http_listen",
                or_none(self.http.as_ref().map(|h| h.listen.to_string())),
            ),
            (
                "address_file",
                or_none(self.address_file.as_ref().map(|p| p.display().to_string())),
            ),
            ("target_partitions", self.target_partitions.to_string()),
            (
                "cluster_secret",
                if self.cluster_auth.is_open() {
                    "none"
                } else {
                    "set"
                }
                .into(),
            ),
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

/// What the executor knows about itself, shared by the status service and the task sessions.
#[derive(Debug)]
struct ExecutorState {
    executor_id: String,
    worker_url: Url,
    tasks_started: AtomicU64,
    latest_settings: LatestSettings,
    /// Signs this executor's own internal calls.
    auth: ClusterAuth,
    /// Set when the drain starts; the membership client heartbeats at once.
    draining: watch::Sender<bool>,
    /// Set once the coordinator has heard that this executor drains.
    drain_heard: watch::Sender<bool>,
    /// Dynamic filters from other stages for this executor's scans.
    filters: Arc<FilterRelay>,
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

    async fn apply_dynamic_filter(
        &self,
        request: Request<DynamicFilterUpdate>,
    ) -> std::result::Result<Response<DynamicFilterAck>, Status> {
        self.0
            .filters
            .apply(&request.into_inner())
            .map_err(|e| QuiverError::InvalidArgument(e.to_string()))?;
        Ok(Response::new(DynamicFilterAck {}))
    }
}

/// A running executor; dropping it stops it.
#[derive(Debug)]
pub struct RunningExecutor {
    pub addr: SocketAddr,
    pub worker_url: Url,
    /// The admin HTTP port's address, when it has one.
    pub http_addr: Option<SocketAddr>,
    health: ExecutorHealth,
    server: ServerHandle,
    membership: MembershipThread,
    state: Arc<ExecutorState>,
    coordinator: Endpoint,
    drain_grace: Duration,
    _admin: Option<AdminServer>,
}

/// How often a drain checks the executor's running tasks.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How long the server may finish calls in flight once the executor has drained.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

impl RunningExecutor {
    /// What an admin port reports of this executor.
    pub(crate) fn health(&self) -> ExecutorHealth {
        self.health.clone()
    }

    /// Runs until the server stops (an error). Cancel-safe: stop waiting to [`Self::drain`].
    pub async fn wait(&mut self) -> Result<()> {
        self.server.wait().await
    }

    /// Leaves the cluster gracefully (see the module doc); returns once the executor stopped
    /// serving, at most about `drain_grace` later.
    pub async fn drain(self) -> Result<()> {
        let started = Instant::now();
        let grace = self.drain_grace;
        let id = self.state.executor_id.clone();
        tracing::info!(executor_id = %id, grace_secs = grace.as_secs_f64(), "draining: telling the coordinator to send no new task");
        self.state.draining.send_replace(true);
        let mut heard = self.state.drain_heard.subscribe();
        if tokio::time::timeout(RPC_TIMEOUT.min(grace), heard.wait_for(|h| *h))
            .await
            .is_err()
        {
            tracing::warn!("the coordinator did not acknowledge the drain in time: going on");
        }
        let mut reported = None;
        loop {
            let running = match tokio::time::timeout(
                RPC_TIMEOUT,
                distributed::running_tasks(&self.state.worker_url, &self.state.auth),
            )
            .await
            {
                Ok(Ok(n)) => Some(n),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading running tasks while draining");
                    None
                }
                Err(_) => None,
            };
            if running == Some(0) {
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "drained: no task running"
                );
                break;
            }
            if started.elapsed() >= grace {
                tracing::warn!(
                    tasks_running = ?running,
                    "drain grace period over: leaving with tasks still running"
                );
                break;
            }
            if running.is_some() && running != reported {
                tracing::info!(tasks_running = ?running, "draining: waiting for running tasks");
                reported = running;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        // No heartbeat after this: one would re-add the executor the coordinator just dropped.
        drop(self.membership);
        let mut client = ClusterServiceClient::new(Signed::new(
            self.coordinator.connect_lazy(),
            self.state.auth.clone(),
        ));
        match client
            .deregister_executor(DeregisterExecutorRequest {
                executor_id: id.clone(),
            })
            .await
        {
            Ok(_) => tracing::info!(executor_id = %id, "deregistered from the coordinator"),
            Err(status) => tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "deregistering failed: the coordinator drops this executor once its heartbeats stop"
            ),
        }
        self.server.shutdown(SHUTDOWN_LIMIT).await;
        tracing::info!("executor stopped");
        Ok(())
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
    let filters = FilterRelay::new(
        RelayConfig::from_env().map_err(QuiverError::InvalidArgument)?,
        filter_publisher(&endpoint, &config.cluster_auth, &worker_url),
    );
    let state = Arc::new(ExecutorState {
        executor_id: uuid::Uuid::new_v4().to_string(),
        worker_url: worker_url.clone(),
        tasks_started: AtomicU64::new(0),
        latest_settings: LatestSettings::default(),
        auth: config.cluster_auth.clone(),
        draining: watch::Sender::new(false),
        drain_heard: watch::Sender::new(false),
        filters: Arc::clone(&filters),
    });
    let runtime = config.limits.runtime_env()?;
    let memory = Arc::new(QueryMemory::new(
        Arc::clone(&runtime),
        config.limits.query_memory_limit,
    ));
    let tasks_running = Arc::new(AtomicU64::new(0));
    let heartbeats_missed = Arc::new(AtomicU64::new(0));
    let metrics = NodeMetrics::new(
        &runtime,
        config.node_name.as_deref(),
        NodeValues {
            tasks_running: {
                let tasks = Arc::clone(&tasks_running);
                Box::new(move || tasks.load(Ordering::Relaxed))
            },
            heartbeats_missed: {
                let missed = Arc::clone(&heartbeats_missed);
                Box::new(move || missed.load(Ordering::Relaxed))
            },
        },
    )?;

    let mut server = Server::builder().tcp_nodelay(true);
    let (router, tasks) = distributed::worker_router(
        &mut server,
        memory,
        config.target_partitions,
        Arc::clone(&state) as Arc<dyn TaskObserver>,
        config.cluster_auth.clone(),
        metrics.traffic(),
        filters,
    );
    let router = router.add_service(Verified::new(
        ExecutorServiceServer::new(StatusService(Arc::clone(&state))),
        config.cluster_auth.clone(),
    ));
    let server = ServerHandle::spawn("executor", router, incoming);
    let health = ExecutorHealth {
        metrics,
        registered: Arc::new(AtomicBool::new(false)),
        tasks,
        tasks_running,
    };
    let admin = match &config.http {
        Some(http) => Some(AdminServer::executor(http, health.clone()).await?),
        None => None,
    };
    if let Some(path) = &config.address_file {
        net::write_address_file(path, addr)?;
    }
    tracing::info!(%addr, %worker_url, executor_id = %state.executor_id, %coordinator, "executor serving");

    let heartbeat = Heartbeat {
        health: health.clone(),
        missed: heartbeats_missed,
        runtime: Arc::clone(&runtime),
    };
    let membership =
        MembershipThread::spawn(endpoint.clone(), Arc::clone(&state), runtime, heartbeat)?;

    Ok(RunningExecutor {
        addr,
        worker_url,
        http_addr: admin.as_ref().map(|a| a.addr),
        health,
        server,
        membership,
        state,
        coordinator: endpoint,
        drain_grace: config.drain_grace,
        _admin: admin,
    })
}

/// Sends the dynamic filters this executor's joins build to the coordinator, which passes them
/// on to the other executors. A failed send is logged: scans elsewhere then read without it.
fn filter_publisher(coordinator: &Endpoint, auth: &ClusterAuth, worker_url: &Url) -> Publisher {
    let client = ClusterServiceClient::new(Signed::new(coordinator.connect_lazy(), auth.clone()));
    let from = worker_url.to_string();
    Arc::new(move |mut update| {
        let mut client = client.clone();
        update.from_worker_url = from.clone();
        Box::pin(async move {
            if let Err(status) = client.publish_dynamic_filter(update).await {
                tracing::debug!(
                    code = ?status.code(),
                    message = status.message(),
                    "publishing a dynamic filter failed: scans elsewhere read without it"
                );
            }
        })
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
        heartbeat: Heartbeat,
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
                        _ = membership_loop(client, state, runtime, heartbeat) => {}
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

/// What heartbeats report and record: the executor's load, whether it is registered, and the
/// heartbeats that failed.
struct Heartbeat {
    health: ExecutorHealth,
    missed: Arc<AtomicU64>,
    runtime: Arc<RuntimeEnv>,
}

impl Heartbeat {
    /// The load a heartbeat carries. The task count is read in-process, so a
    /// runtime busy with queries does not delay the heartbeat.
    async fn stats(&self) -> ExecutorStats {
        let tasks_running = match self.health.tasks.running().await {
            Ok(tasks) => {
                self.health.tasks_running.store(tasks, Ordering::Relaxed);
                tasks
            }
            Err(_) => self.health.tasks_running.load(Ordering::Relaxed),
        };
        let pool = &self.runtime.memory_pool;
        ExecutorStats {
            tasks_running,
            memory_used_bytes: pool.reserved() as u64,
            memory_limit_bytes: match pool.memory_limit() {
                datafusion::execution::memory_pool::MemoryLimit::Finite(bytes) => bytes as u64,
                _ => 0,
            },
        }
    }

    fn registered(&self, registered: bool) {
        self.health.registered.store(registered, Ordering::Relaxed);
    }
}

/// Registers, then heartbeats forever; re-registers when the coordinator forgets us.
async fn membership_loop(
    mut client: ClusterServiceClient<Signed<Channel>>,
    state: Arc<ExecutorState>,
    runtime: Arc<RuntimeEnv>,
    heartbeat: Heartbeat,
) {
    let mut registered = false;
    let mut interval = RETRY_INTERVAL;
    let mut reported_failure = false;
    let mut draining = state.draining.subscribe();
    loop {
        let drain = *draining.borrow_and_update();
        if drain && !registered {
            // A draining executor takes no new work: it does not join again (the drain stops
            // this thread).
            std::future::pending::<()>().await;
        }
        let outcome = if registered {
            let stats = heartbeat.stats().await;
            client
                .heartbeat(HeartbeatRequest {
                    executor_id: state.executor_id.clone(),
                    stats: Some(stats),
                    draining: drain,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    if !r.known {
                        tracing::info!(
                            "coordinator does not know this executor: registering again"
                        );
                        registered = false;
                    } else if drain {
                        state.drain_heard.send_replace(true);
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
                heartbeat.registered(registered);
                register_stores(&runtime, &stores);
                if !registered {
                    continue;
                }
                // A drain starting heartbeats at once.
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = draining.changed(), if !drain => {}
                }
            }
            Err(status) => {
                if !reported_failure {
                    tracing::warn!(code = ?status.code(), message = status.message(), "coordinator unreachable; retrying");
                    reported_failure = true;
                }
                if registered {
                    heartbeat.missed.fetch_add(1, Ordering::Relaxed);
                }
                // A draining executor keeps heartbeating (its queries still run) but never
                // registers again.
                registered = registered && drain;
                heartbeat.registered(registered);
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
