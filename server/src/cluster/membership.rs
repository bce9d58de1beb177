//! Cluster membership: the coordinator's live set of executors.
//!
//! Executors join with `RegisterExecutor` and stay with `Heartbeat` (both on the coordinator's
//! port, service `quiver.cluster.v1.ClusterService`). An executor that has not been heard from for
//! `executor_timeout` is no longer live: [`ExecutorRegistry::live_worker_urls`] filters it out at
//! once and the reaper task drops it from the set. A heartbeat from an executor the coordinator
//! does not know (it restarted, or it had expired the executor) answers `known = false`, and the
//! executor registers again. The live set is read synchronously by the distributed planner on
//! every query, so an executor that joins later gets work from the next query on.
//!
//! Drain: an executor shutting down says so in its heartbeats (`draining`). From then on it is
//! out of [`ExecutorRegistry::live_worker_urls`] (no new placement) but still a member
//! ([`ExecutorRegistry::member_worker_urls`]): queries already running on it are not told it
//! is lost (departure watchdog, [`ExecutorRegistry::lost_since`]) and it is still probed and
//! expired like any member. It leaves with `DeregisterExecutor` once its tasks have ended.
//!
//! The registry also carries dynamic filters between executors
//! ([`ExecutorRegistry::fan_out_filter`], see `cluster::filter_relay`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quiver_proto::cluster::cluster_service_server::ClusterService;
use quiver_proto::cluster::executor_service_client::ExecutorServiceClient;

use crate::security::cluster_auth::{ClusterAuth, Signed};
use quiver_proto::cluster::{
    DeregisterExecutorRequest, DeregisterExecutorResponse, DynamicFilterAck, DynamicFilterUpdate,
    ExecutorInfo, ExecutorStats, GetExecutorStatusRequest, HeartbeatRequest, HeartbeatResponse,
    ListExecutorsRequest, ListExecutorsResponse, ObjectStoreConfig, RegisterExecutorRequest,
    RegisterExecutorResponse,
};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};
use url::Url;

use crate::error::QuiverError;
use crate::storage::catalog::Catalog;
use crate::task::AbortOnDrop;

#[derive(Debug, Clone)]
struct Member {
    worker_url: Url,
    last_seen: Instant,
    /// Shutting down: no new placements, running queries go on.
    draining: bool,
    /// What its latest heartbeat reported (none before the first).
    stats: Option<ExecutorStats>,
}

/// A live executor as the status page shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct LiveExecutor {
    pub(crate) executor_id: String,
    pub(crate) worker_url: String,
    pub(crate) last_heartbeat_age_ms: u64,
    /// From its latest heartbeat; `None` before its first.
    pub(crate) tasks_running: Option<u64>,
    pub(crate) memory_used_bytes: Option<u64>,
    /// `None` also when its pool is unbounded.
    pub(crate) memory_limit_bytes: Option<u64>,
}

/// The live set of executors.
#[derive(Debug)]
pub struct ExecutorRegistry {
    members: RwLock<HashMap<String, Member>>,
    timeout: Duration,
    /// Signs liveness probes to executors.
    auth: ClusterAuth,
    /// Bumped whenever an executor leaves, so running queries can check theirs.
    departures: watch::Sender<u64>,
    /// Executors dropped because their heartbeats stopped.
    heartbeats_missed: AtomicU64,
    /// Channels to executors for dynamic filter updates, made on first use.
    filter_channels: Mutex<HashMap<Url, Channel>>,
}

impl ExecutorRegistry {
    pub fn new(timeout: Duration, auth: ClusterAuth) -> Arc<Self> {
        Arc::new(Self {
            members: RwLock::new(HashMap::new()),
            timeout,
            auth,
            departures: watch::Sender::new(0),
            heartbeats_missed: AtomicU64::new(0),
            filter_channels: Mutex::default(),
        })
    }

    /// Changes whenever an executor leaves the live set.
    pub fn departures(&self) -> watch::Receiver<u64> {
        self.departures.subscribe()
    }

    fn departed(&self) {
        self.departures.send_modify(|n| *n += 1);
    }

    /// Adds or refreshes an executor.
    pub fn register(&self, executor_id: &str, worker_url: Url) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        // An executor restarted on the same address replaces its previous incarnation.
        members.retain(|id, m| id == executor_id || m.worker_url != worker_url);
        let previous = members.insert(
            executor_id.to_string(),
            Member {
                worker_url: worker_url.clone(),
                last_seen: Instant::now(),
                draining: false,
                stats: None,
            },
        );
        if previous.is_none() {
            tracing::info!(executor_id, %worker_url, "executor joined");
        }
    }

    /// Refreshes an executor, `draining` once it shuts down; false if it is not a member.
    pub fn heartbeat(&self, executor_id: &str, draining: bool) -> bool {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        match members.get_mut(executor_id) {
            Some(member) if member.last_seen.elapsed() <= self.timeout => {
                member.last_seen = Instant::now();
                if draining && !member.draining {
                    tracing::info!(executor_id, worker_url = %member.worker_url, "executor draining: no new tasks go to it");
                }
                member.draining = draining;
                true
            }
            _ => false,
        }
    }

    /// Drops an executor that drained; false if it was not a member.
    pub fn deregister(&self, executor_id: &str) -> bool {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let Some(member) = members.remove(executor_id) else {
            return false;
        };
        tracing::info!(executor_id, worker_url = %member.worker_url, "executor left: drained");
        drop(members);
        self.departed();
        true
    }

    /// Worker URLs of the live executors that take new tasks (not draining), sorted.
    pub fn live_worker_urls(&self) -> Vec<Url> {
        self.worker_urls(false)
    }

    /// Worker URLs of every live executor, draining ones included, sorted: where running
    /// queries' tasks may still be.
    pub fn member_worker_urls(&self) -> Vec<Url> {
        self.worker_urls(true)
    }

    fn worker_urls(&self, with_draining: bool) -> Vec<Url> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut urls: Vec<Url> = members
            .values()
            .filter(|m| m.last_seen.elapsed() <= self.timeout && (with_draining || !m.draining))
            .map(|m| m.worker_url.clone())
            .collect();
        urls.sort();
        urls.dedup();
        urls
    }

    /// Drops executors that missed their deadline.
    pub fn reap(&self) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let before = members.len();
        members.retain(|executor_id, m| {
            let live = m.last_seen.elapsed() <= self.timeout;
            if !live {
                tracing::warn!(executor_id, worker_url = %m.worker_url, "executor left: no heartbeat");
            }
            live
        });
        if members.len() < before {
            self.heartbeats_missed
                .fetch_add((before - members.len()) as u64, Ordering::Relaxed);
            self.departed();
        }
    }

    /// Executors dropped from the live set because their heartbeats stopped, since start.
    pub(crate) fn heartbeats_missed(&self) -> u64 {
        self.heartbeats_missed.load(Ordering::Relaxed)
    }

    /// Keeps what a live executor's heartbeat reported.
    pub(crate) fn record_stats(&self, executor_id: &str, stats: ExecutorStats) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        if let Some(member) = members.get_mut(executor_id) {
            member.stats = Some(stats);
        }
    }

    /// The live executors with their latest reported load, sorted by worker URL.
    pub(crate) fn live_executors(&self) -> Vec<LiveExecutor> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<LiveExecutor> = members
            .iter()
            .filter(|(_, m)| m.last_seen.elapsed() <= self.timeout)
            .map(|(id, m)| LiveExecutor {
                executor_id: id.clone(),
                worker_url: m.worker_url.to_string(),
                last_heartbeat_age_ms: m.last_seen.elapsed().as_millis() as u64,
                tasks_running: m.stats.as_ref().map(|s| s.tasks_running),
                memory_used_bytes: m.stats.as_ref().map(|s| s.memory_used_bytes),
                memory_limit_bytes: m
                    .stats
                    .as_ref()
                    .map(|s| s.memory_limit_bytes)
                    .filter(|limit| *limit > 0),
            })
            .collect();
        out.sort_by(|a, b| a.worker_url.cmp(&b.worker_url));
        out
    }

    pub fn snapshot(&self) -> Vec<ExecutorInfo> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<ExecutorInfo> = members
            .iter()
            .filter(|(_, m)| m.last_seen.elapsed() <= self.timeout)
            .map(|(id, m)| ExecutorInfo {
                executor_id: id.clone(),
                worker_url: m.worker_url.to_string(),
                last_heartbeat_age_ms: m.last_seen.elapsed().as_millis() as u64,
                draining: m.draining,
            })
            .collect();
        out.sort_by(|a, b| a.worker_url.cmp(&b.worker_url));
        out
    }

    /// Drops the executor serving `worker_url`; it must register again to come back.
    pub fn evict(&self, worker_url: &Url) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        let before = members.len();
        members.retain(|executor_id, m| {
            let keep = &m.worker_url != worker_url;
            if !keep {
                tracing::warn!(executor_id, %worker_url, "executor left: it does not answer");
            }
            keep
        });
        if members.len() < before {
            self.departed();
        }
    }

    /// Which of `live_at_start` are lost now: evicts executors that do not answer a probe, and
    /// counts those whose missed heartbeats already took them out of the live set (a draining
    /// executor is not lost).
    pub async fn lost_since(&self, live_at_start: &[Url]) -> Vec<Url> {
        self.evict_unreachable().await;
        let live = self.member_worker_urls();
        live_at_start
            .iter()
            .filter(|url| !live.contains(url))
            .cloned()
            .collect()
    }

    /// Asks every live executor for its status and evicts those that do not answer in time;
    /// returns their worker URLs. Used when a query fails in a way a lost executor explains, so
    /// the next attempt does not wait for the heartbeat timeout.
    pub async fn evict_unreachable(&self) -> Vec<Url> {
        let probes = self.member_worker_urls().into_iter().map(|url| async move {
            let alive = probe(&url, &self.auth).await;
            (url, alive)
        });
        let mut lost = Vec::new();
        for (url, alive) in futures::future::join_all(probes).await {
            if !alive {
                self.evict(&url);
                lost.push(url);
            }
        }
        lost
    }

    /// Runs the reaper until the returned handle is dropped.
    pub(crate) fn spawn_reaper(self: &Arc<Self>) -> AbortOnDrop {
        let registry = Arc::downgrade(self);
        let period = (self.timeout / 4).max(Duration::from_millis(50));
        AbortOnDrop::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                registry.reap();
            }
        })
    }
}

impl ExecutorRegistry {
    /// Passes a dynamic filter an executor's join built to every other live executor, where
    /// scans of its attempt may wait for it. Best effort: an executor that does not answer in
    /// time reads without the filter.
    pub(crate) async fn fan_out_filter(&self, update: DynamicFilterUpdate) {
        // Members, not just live ones: a draining executor still runs its tasks.
        let targets: Vec<Url> = self
            .member_worker_urls()
            .into_iter()
            .filter(|url| url.as_str() != update.from_worker_url)
            .collect();
        let sends = targets.into_iter().map(|url| {
            let channel = self.filter_channel(&url);
            let update = update.clone();
            let auth = self.auth.clone();
            async move {
                let mut client = ExecutorServiceClient::new(Signed::new(channel?, auth));
                let call = client.apply_dynamic_filter(update);
                match tokio::time::timeout(FILTER_TIMEOUT, call).await {
                    Ok(Ok(_)) => Some(()),
                    Ok(Err(status)) => {
                        tracing::debug!(%url, code = ?status.code(), message = status.message(), "an executor refused a dynamic filter");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(%url, "an executor did not take a dynamic filter in time");
                        None
                    }
                }
            }
        });
        futures::future::join_all(sends).await;
    }

    fn filter_channel(&self, url: &Url) -> Option<Channel> {
        let mut channels = self
            .filter_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(url) {
            return Some(channel.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(FILTER_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.retain(|known, _| known == url || self.is_member(known));
        channels.insert(url.clone(), channel.clone());
        Some(channel)
    }

    fn is_member(&self, url: &Url) -> bool {
        self.member_worker_urls().contains(url)
    }
}

/// How long an executor may take to take a dynamic filter update.
const FILTER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an executor may take to answer a liveness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the executor at `url` answers a status request in time (a frozen process accepts the
/// connection but never answers).
async fn probe(url: &Url, auth: &ClusterAuth) -> bool {
    let status = async {
        let channel = Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .ok()?;
        ExecutorServiceClient::new(Signed::new(channel, auth.clone()))
            .get_executor_status(GetExecutorStatusRequest {})
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT * 2, status).await,
        Ok(Some(_))
    )
}

/// `ClusterService`: what executors call.
#[derive(Debug)]
pub(crate) struct ClusterServiceImpl {
    registry: Arc<ExecutorRegistry>,
    catalog: Arc<Catalog>,
    heartbeat_interval: Duration,
}

impl ClusterServiceImpl {
    pub(crate) fn new(
        registry: Arc<ExecutorRegistry>,
        catalog: Arc<Catalog>,
        heartbeat_interval: Duration,
    ) -> Self {
        Self {
            registry,
            catalog,
            heartbeat_interval,
        }
    }

    async fn object_stores(&self) -> Vec<ObjectStoreConfig> {
        self.catalog
            .object_stores()
            .await
            .into_iter()
            .map(|(url, options)| ObjectStoreConfig {
                url: url.to_string(),
                options: options.into_iter().collect(),
            })
            .collect()
    }
}

/// Worker URLs use http(s); `grpc://` and `grpc+tls://` are accepted as aliases.
pub(crate) fn normalize_worker_url(raw: &str) -> Result<Url, String> {
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let mut url = Url::parse(&with_scheme).map_err(|e| format!("'{raw}': {e}"))?;
    let scheme = match url.scheme() {
        "http" | "grpc" | "grpc+tcp" => "http",
        "https" | "grpc+tls" => "https",
        other => return Err(format!("'{raw}': unsupported scheme '{other}'")),
    };
    if url.host_str().is_none() || url.port_or_known_default().is_none() {
        return Err(format!("'{raw}': a host and port are required"));
    }
    if scheme != url.scheme() {
        // `Url::set_scheme` refuses special <-> non-special changes; rebuild instead.
        let rebuilt = format!(
            "{scheme}://{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        url = Url::parse(&rebuilt).map_err(|e| format!("'{raw}': {e}"))?;
    }
    Ok(url)
}

#[tonic::async_trait]
impl ClusterService for ClusterServiceImpl {
    async fn register_executor(
        &self,
        request: Request<RegisterExecutorRequest>,
    ) -> Result<Response<RegisterExecutorResponse>, Status> {
        let req = request.into_inner();
        if req.executor_id.is_empty() {
            return Err(
                QuiverError::InvalidArgument("executor_id must not be empty".into()).into(),
            );
        }
        let url = normalize_worker_url(&req.worker_url).map_err(QuiverError::InvalidArgument)?;
        self.registry.register(&req.executor_id, url);
        Ok(Response::new(RegisterExecutorResponse {
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u64,
            object_stores: self.object_stores().await,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let req = request.into_inner();
        let known = self.registry.heartbeat(&req.executor_id, req.draining);
        if known && let Some(stats) = req.stats {
            self.registry.record_stats(&req.executor_id, stats);
        }
        Ok(Response::new(HeartbeatResponse {
            known,
            object_stores: self.object_stores().await,
        }))
    }

    async fn deregister_executor(
        &self,
        request: Request<DeregisterExecutorRequest>,
    ) -> Result<Response<DeregisterExecutorResponse>, Status> {
        let req = request.into_inner();
        self.registry.deregister(&req.executor_id);
        Ok(Response::new(DeregisterExecutorResponse {}))
    }

    async fn publish_dynamic_filter(
        &self,
        request: Request<DynamicFilterUpdate>,
    ) -> Result<Response<DynamicFilterAck>, Status> {
        self.registry.fan_out_filter(request.into_inner()).await;
        Ok(Response::new(DynamicFilterAck {}))
    }

    async fn list_executors(
        &self,
        _request: Request<ListExecutorsRequest>,
    ) -> Result<Response<ListExecutorsResponse>, Status> {
        Ok(Response::new(ListExecutorsResponse {
            executors: self.registry.snapshot(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executors_expire_and_rejoin() {
        let registry = ExecutorRegistry::new(Duration::from_millis(100), ClusterAuth::open());
        registry.register("a", Url::parse("http://127.0.0.1:1").unwrap());
        registry.register("b", Url::parse("http://127.0.0.1:2").unwrap());
        assert_eq!(registry.live_worker_urls().len(), 2);
        std::thread::sleep(Duration::from_millis(60));
        assert!(registry.heartbeat("a", false));
        std::thread::sleep(Duration::from_millis(60));
        // b missed its deadline: not live even before the reaper runs.
        assert_eq!(
            registry.live_worker_urls(),
            vec![Url::parse("http://127.0.0.1:1").unwrap()]
        );
        assert!(
            !registry.heartbeat("b", false),
            "an expired executor must register again"
        );
        registry.reap();
        assert_eq!(registry.snapshot().len(), 1);
        assert_eq!(registry.heartbeats_missed(), 1);
        assert_eq!(registry.live_executors()[0].tasks_running, None);
        registry.record_stats(
            "a",
            ExecutorStats {
                tasks_running: 3,
                memory_used_bytes: 10,
                memory_limit_bytes: 0,
            },
        );
        let a = &registry.live_executors()[0];
        assert_eq!(
            (a.tasks_running, a.memory_used_bytes, a.memory_limit_bytes),
            (Some(3), Some(10), None)
        );
        assert!(!registry.heartbeat("unknown", false));

        // A new incarnation on the same address replaces the old one.
        registry.register("a2", Url::parse("http://127.0.0.1:1").unwrap());
        let ids: Vec<_> = registry
            .snapshot()
            .into_iter()
            .map(|e| e.executor_id)
            .collect();
        assert_eq!(ids, vec!["a2".to_string()]);
    }

    #[tokio::test]
    async fn draining_executors_get_no_tasks_but_are_not_lost() {
        let registry = ExecutorRegistry::new(Duration::from_secs(60), ClusterAuth::open());
        let a = Url::parse("http://127.0.0.1:1").unwrap();
        let b = Url::parse("http://127.0.0.1:2").unwrap();
        registry.register("a", a.clone());
        registry.register("b", b.clone());
        let departures = registry.departures();
        assert!(registry.heartbeat("a", true));
        assert_eq!(registry.live_worker_urls(), vec![b.clone()]);
        assert_eq!(registry.member_worker_urls(), vec![a.clone(), b.clone()]);
        assert!(
            !departures.has_changed().unwrap(),
            "draining is no departure"
        );
        let draining: Vec<_> = registry.snapshot().iter().map(|e| e.draining).collect();
        assert_eq!(draining, vec![true, false]);

        assert!(registry.deregister("a"));
        assert!(departures.has_changed().unwrap());
        assert_eq!(registry.member_worker_urls(), vec![b.clone()]);
        assert!(!registry.deregister("a"), "deregistering twice is harmless");
        assert!(
            !registry.heartbeat("a", true),
            "a drained executor is no member"
        );
    }

    #[test]
    fn worker_urls() {
        assert_eq!(
            normalize_worker_url("grpc://h:1").unwrap().as_str(),
            "http://h:1/"
        );
        assert_eq!(
            normalize_worker_url("127.0.0.1:5").unwrap().as_str(),
            "http://127.0.0.1:5/"
        );
        assert_eq!(
            normalize_worker_url("https://h:7").unwrap().as_str(),
            "https://h:7/"
        );
        assert!(normalize_worker_url("ftp://h:1").is_err());
        assert!(normalize_worker_url("http://").is_err());
    }
}
