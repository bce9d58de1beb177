//! `quiver serve`: a whole cluster in one process, for a first look and for development.
//!
//! A coordinator and N executors, each executor a real worker on its own loopback port that
//! registers over gRPC exactly as a separate `quiver executor` process does. With no `--table`
//! or `--catalog` it serves TPC-H generated on first start under `--data-dir` (and reused later);
//! tables created with SQL are kept in `<data-dir>/catalog.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{QuiverError, Result};
use crate::node::coordinator::{self, CoordinatorConfig, RunningCoordinator};
use crate::node::executor::{self, ExecutorConfig, RunningExecutor};
use crate::node::net;
use crate::ops::http::AdminServer;
use crate::security::cluster_auth::ClusterAuth;
use crate::storage::catalog::TableDef;
use crate::storage::tpch;
use crate::task;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub coordinator: CoordinatorConfig,
    pub executors: usize,
    pub data_dir: PathBuf,
    pub tpch_scale_factor: f64,
}

/// A running in-process cluster; dropping it stops everything.
#[derive(Debug)]
pub struct LocalCluster {
    pub coordinator: RunningCoordinator,
    pub executors: Vec<RunningExecutor>,
    /// The admin HTTP port's address, when it has one.
    pub http_addr: Option<SocketAddr>,
    _admin: Option<AdminServer>,
}

impl LocalCluster {
    /// Drains the whole cluster: the coordinator refuses new queries and lets running ones
    /// finish (up to its grace period), then the executors drain and leave, then the
    /// coordinator stops.
    pub async fn drain(self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.coordinator.drain_grace();
        self.coordinator.stop_admitting();
        self.coordinator.queries_ended(deadline).await;
        let drains = self.executors.into_iter().map(RunningExecutor::drain);
        for result in futures::future::join_all(drains).await {
            result?;
        }
        self.coordinator.shutdown().await;
        Ok(())
    }
}

/// How long to wait for in-process executors to join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn start(config: ServeConfig) -> Result<LocalCluster> {
    if config.executors == 0 {
        return Err(QuiverError::InvalidArgument(
            "--executors must be at least 1".into(),
        ));
    }
    let mut coordinator_config = config.coordinator.clone();
    if coordinator_config.tables.is_empty() && coordinator_config.catalog.is_none() {
        let data_dir = config.data_dir.clone();
        let sf = config.tpch_scale_factor;
        tracing::info!(scale_factor = sf, data_dir = %data_dir.display(), "preparing the TPC-H demo dataset");
        let started = Instant::now();
        let dir = task::spawn_blocking("dataset generation", move || {
            tpch::ensure_dataset(&data_dir, sf)
        })
        .await??;
        tracing::info!(dir = %dir.display(), elapsed_ms = started.elapsed().as_millis() as u64, "TPC-H dataset ready");
        for table in tpch::TABLES {
            coordinator_config
                .tables
                .push(TableDef::parse_flag(&format!(
                    "{table}={}",
                    dir.join(table).display()
                ))?);
        }
        coordinator_config.catalog = Some(config.data_dir.join("catalog.toml"));
    }
    // The address file means "ready": written once the executors have joined.
    let address_file = coordinator_config.address_file.take();
    // One admin port for the whole process, opened once the executors exist: it serves their
    // metrics too, each node's labelled `node="..."`.
    let http = coordinator_config.http.take();
    if let Some(http) = &http {
        crate::ops::http::check_coordinator_exposure(
            http,
            coordinator_config.auth.is_some(),
            coordinator_config.insecure,
        )?;
    }
    coordinator_config.node_name = Some("coordinator".into());
    if coordinator_config.warehouse.is_none() {
        coordinator_config.warehouse = Some(crate::storage::catalog::absolute_location(
            &config.data_dir.join("warehouse").to_string_lossy(),
        )?);
    }
    // In-process executors register over plaintext loopback when clients get TLS.
    coordinator_config.local_cluster_listener = coordinator_config.tls.is_some();
    // The nodes of this process sign their internal calls with a secret only they know.
    if coordinator_config.cluster_auth.is_open() {
        coordinator_config.cluster_auth = ClusterAuth::random()?;
    }
    let cluster_auth = coordinator_config.cluster_auth.clone();
    let coordinator = coordinator::start(coordinator_config).await?;

    let mut executors = Vec::with_capacity(config.executors);
    for index in 0..config.executors {
        executors.push(
            executor::start(ExecutorConfig {
                coordinator: coordinator.cluster_url(),
                listen: ([127, 0, 0, 1], 0).into(),
                advertise: None,
                address_file: None,
                target_partitions: config.coordinator.target_partitions,
                coordinator_ca: None,
                limits: config.coordinator.limits.clone(),
                cluster_auth: cluster_auth.clone(),
                drain_grace: config.coordinator.drain_grace,
                http: None,
                node_name: Some(format!("executor-{index}")),
            })
            .await?,
        );
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while coordinator.registry().live_worker_urls().len() < config.executors {
        if Instant::now() > deadline {
            return Err(QuiverError::Unavailable(
                "in-process executors did not join the coordinator in time".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let admin = match &http {
        Some(http) => {
            let mut view = coordinator.admin_view();
            view.local_executors = executors.iter().map(RunningExecutor::health).collect();
            Some(AdminServer::coordinator(http, view).await?)
        }
        None => None,
    };
    if let Some(path) = &address_file {
        net::write_address_file(path, coordinator.addr)?;
    }
    Ok(LocalCluster {
        coordinator,
        executors,
        http_addr: admin.as_ref().map(|a| a.addr),
        _admin: admin,
    })
}
