//! Cluster membership: the coordinator's live set of executors.
//!
//! Executors join with `RegisterExecutor` and stay with `Heartbeat` (both on the coordinator's
//! port, service `quiver.cluster.v1.ClusterService`). An executor that has not been heard from for
//! `executor_timeout` is no longer live: [`ExecutorRegistry::live_worker_urls`] filters it out at
//! once and the reaper task drops it from the set. A heartbeat from an executor the coordinator
//! does not know (it restarted, or it had expired the executor) answers `known = false`, and the
//! executor registers again. The live set is read synchronously by the distributed planner on
//! every query, so an executor that joins later gets work from the next query on.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use quiver_proto::cluster::cluster_service_server::ClusterService;
use quiver_proto::cluster::executor_service_client::ExecutorServiceClient;

use crate::security::cluster_auth::{ClusterAuth, Signed};
use quiver_proto::cluster::{
    ExecutorInfo, GetExecutorStatusRequest, HeartbeatRequest, HeartbeatResponse,
    ListExecutorsRequest, ListExecutorsResponse, ObjectStoreConfig, RegisterExecutorRequest,
    RegisterExecutorResponse,
};
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};
use url::Url;

use crate::error::QuiverError;
use crate::storage::catalog::Catalog;
use crate::task::AbortOnDrop;

#[derive(Debug, Clone)]
struct Member {
    worker_url: Url,
    last_seen: Instant,
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
}

impl ExecutorRegistry {
    pub fn new(timeout: Duration, auth: ClusterAuth) -> Arc<Self> {
        Arc::new(Self {
            members: RwLock::new(HashMap::new()),
            timeout,
            auth,
            departures: watch::Sender::new(0),
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
            },
        );
        if previous.is_none() {
            tracing::info!(executor_id, %worker_url, "executor joined");
        }
    }

    /// Refreshes an executor; false if it is not a member.
    pub fn heartbeat(&self, executor_id: &str) -> bool {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        match members.get_mut(executor_id) {
            Some(member) if member.last_seen.elapsed() <= self.timeout => {
                member.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Worker URLs of the live executors, sorted.
    pub fn live_worker_urls(&self) -> Vec<Url> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        let mut urls: Vec<Url> = members
            .values()
            .filter(|m| m.last_seen.elapsed() <= self.timeout)
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
            self.departed();
        }
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
    /// counts those whose missed heartbeats already took them out of the live set.
    pub async fn lost_since(&self, live_at_start: &[Url]) -> Vec<Url> {
        self.evict_unreachable().await;
        let live = self.live_worker_urls();
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
        let probes = self.live_worker_urls().into_iter().map(|url| async move {
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
        let known = self.registry.heartbeat(&req.executor_id);
        Ok(Response::new(HeartbeatResponse {
            known,
            object_stores: self.object_stores().await,
        }))
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
        assert!(registry.heartbeat("a"));
        std::thread::sleep(Duration::from_millis(60));
        // b missed its deadline: not live even before the reaper runs.
        assert_eq!(
            registry.live_worker_urls(),
            vec![Url::parse("http://127.0.0.1:1").unwrap()]
        );
        assert!(
            !registry.heartbeat("b"),
            "an expired executor must register again"
        );
        registry.reap();
        assert_eq!(registry.snapshot().len(), 1);
        assert!(!registry.heartbeat("unknown"));

        // A new incarnation on the same address replaces the old one.
        registry.register("a2", Url::parse("http://127.0.0.1:1").unwrap());
        let ids: Vec<_> = registry
            .snapshot()
            .into_iter()
            .map(|e| e.executor_id)
            .collect();
        assert_eq!(ids, vec!["a2".to_string()]);
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
