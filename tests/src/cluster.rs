//! A cluster of real processes: one `quiver coordinator` and N `quiver executor`s on loopback.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightClient, FlightDescriptor, FlightInfo, Ticket};
use prost::Message;
use quiver_client::QuiverClient;
use quiver_proto::cluster::cluster_service_client::ClusterServiceClient;
use quiver_proto::cluster::executor_service_client::ExecutorServiceClient;
use quiver_proto::cluster::{
    ExecutorInfo, ExecutorStatus, GetExecutorStatusRequest, ListExecutorsRequest,
};
use tempfile::TempDir;

use quiver_server::{ClusterAuth, Signed};

use crate::process::{Launch, QuiverProcess};
use crate::within;

const START_LIMIT: Duration = Duration::from_secs(60);
const RPC_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub executors: usize,
    /// `NAME=PATH` tables for the coordinator.
    pub tables: Vec<(String, PathBuf)>,
    pub catalog: Option<PathBuf>,
    /// The coordinator's `--warehouse` (a directory or `s3://bucket/prefix/`); `None`: the
    /// cluster directory's `warehouse/`.
    pub warehouse: Option<String>,
    pub target_partitions: usize,
    pub executor_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    /// Small, so that the tiny test datasets are still spread over every executor.
    pub scan_bytes_per_partition: usize,
    /// 0: no query deadline.
    pub query_timeout_ms: u64,
    /// More coordinator flags (`--config`, ...). Every test cluster gets a warehouse directory.
    pub coordinator_args: Vec<String>,
    /// More flags for every executor (`--memory-limit`, ...).
    pub executor_args: Vec<String>,
    /// `false`: the coordinator gets the test values above for `executor_timeout_ms`,
    /// `heartbeat_interval_ms`, `scan_bytes_per_partition` and `query_timeout_ms`. `true`: none
    /// of those flags, so it runs with the binary's own defaults (what a benchmark measures).
    pub binary_defaults: bool,
    /// The binary and extra environment of every process.
    pub launch: Launch,
    /// Every process also serves its admin HTTP port (`--http-listen 127.0.0.1:0`); see
    /// [`TestCluster::http_addr`].
    pub http: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            executors: 2,
            tables: Vec::new(),
            catalog: None,
            warehouse: None,
            target_partitions: 0,
            executor_timeout_ms: 3_000,
            heartbeat_interval_ms: 200,
            scan_bytes_per_partition: 64 * 1024,
            query_timeout_ms: 0,
            coordinator_args: Vec::new(),
            executor_args: Vec::new(),
            binary_defaults: false,
            launch: Launch::default(),
            http: false,
        }
    }
}

impl ClusterOptions {
    /// The eight TPC-H tables of the dataset in `dir`.
    pub fn tpch(dir: &Path) -> Self {
        Self {
            tables: quiver_server::tpch::TABLES
                .iter()
                .map(|t| (t.to_string(), dir.join(t)))
                .collect(),
            ..Self::default()
        }
    }

    /// The 24 TPC-DS tables of the dataset in `dir` (one file each).
    pub fn tpcds(dir: &Path) -> Self {
        Self {
            tables: crate::tpcds::tables(dir),
            ..Self::default()
        }
    }
}

/// A statement started by [`TestCluster::start_statement`].
pub struct RawStatement {
    /// The client that started it (for `CancelFlightInfo`, or another `DoGet`).
    pub flight: FlightClient,
    pub info: FlightInfo,
    pub ticket: Ticket,
    pub stream: FlightRecordBatchStream,
}

#[derive(Debug)]
pub struct TestCluster {
    pub dir: TempDir,
    pub options: ClusterOptions,
    pub coordinator: QuiverProcess,
    pub coordinator_addr: String,
    pub executors: Vec<QuiverProcess>,
    pub executor_addrs: Vec<String>,
}

impl TestCluster {
    /// Starts the coordinator, then the executors, and waits until all executors are live.
    pub async fn start(options: ClusterOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("quiver-cluster-")
            .tempdir()
            .expect("tempdir");
        std::fs::write(secret_file(dir.path()), CLUSTER_SECRET).expect("write the cluster secret");
        let args = coordinator_args(&options, dir.path(), "127.0.0.1:0");
        let mut coordinator =
            QuiverProcess::spawn_with(&options.launch, dir.path(), "coordinator", &args);
        let coordinator_addr = coordinator.wait_for_address(START_LIMIT);
        let mut cluster = Self {
            dir,
            options,
            coordinator,
            coordinator_addr,
            executors: Vec::new(),
            executor_addrs: Vec::new(),
        };
        for _ in 0..cluster.options.executors {
            cluster.add_executor();
        }
        cluster.wait_for_live(cluster.options.executors).await;
        cluster
    }

    pub fn url(&self) -> String {
        format!("grpc://{}", self.coordinator_addr)
    }

    /// A plaintext gRPC channel to the coordinator, for raw Flight / Flight SQL clients.
    pub async fn channel(&self) -> tonic::transport::Channel {
        within(
            RPC_LIMIT,
            "connect",
            tonic::transport::Channel::from_shared(format!("http://{}", self.coordinator_addr))
                .expect("uri")
                .connect(),
        )
        .await
        .expect("connect to the coordinator")
    }

    pub async fn client(&self) -> QuiverClient {
        within(RPC_LIMIT, "connect", QuiverClient::connect(&self.url()))
            .await
            .expect("connect to the coordinator")
    }

    /// Starts one more executor; returns its index.
    pub fn add_executor(&mut self) -> usize {
        let index = self.executors.len();
        let mut args = vec![
            "executor".to_string(),
            "--coordinator".to_string(),
            self.url(),
            "--listen".to_string(),
            "127.0.0.1:0".to_string(),
        ];
        // The cluster's secret, unless the test gives this executor its own.
        if !self
            .options
            .executor_args
            .iter()
            .any(|a| a == "--cluster-secret-file")
        {
            args.push("--cluster-secret-file".to_string());
            args.push(secret_file(self.dir.path()).display().to_string());
        }
        args.extend(self.options.executor_args.iter().cloned());
        let name = format!("executor-{index}");
        if self.options.http {
            args.extend(http_args(self.dir.path(), &name));
        }
        let mut process =
            QuiverProcess::spawn_with(&self.options.launch, self.dir.path(), &name, &args);
        let addr = process.wait_for_address(START_LIMIT);
        self.executors.push(process);
        self.executor_addrs.push(addr);
        index
    }

    /// The admin HTTP port (`host:port`) of `process` (the coordinator or an executor), in a
    /// cluster started with [`ClusterOptions::http`]. It is written before the process's main
    /// address, so it is there once the process is.
    pub fn http_addr(&self, process: &QuiverProcess) -> String {
        let name = process.name.trim_end_matches("-restarted");
        let path = http_address_file(self.dir.path(), name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (started with http: true?)", path.display()))
            .trim()
            .to_string()
    }

    /// Every process, coordinator first.
    pub fn processes(&self) -> impl Iterator<Item = &QuiverProcess> {
        std::iter::once(&self.coordinator).chain(&self.executors)
    }

    /// SIGKILLs executor `index`.
    pub fn kill_executor(&mut self, index: usize) {
        self.executors[index].kill();
    }

    /// SIGKILLs the coordinator and starts it again on the same address and catalog.
    pub fn restart_coordinator(&mut self) {
        self.coordinator.kill();
        let args = coordinator_args(&self.options, self.dir.path(), &self.coordinator_addr);
        self.coordinator = QuiverProcess::spawn_with(
            &self.options.launch,
            self.dir.path(),
            "coordinator-restarted",
            &args,
        );
        let addr = self.coordinator.wait_for_address(START_LIMIT);
        assert_eq!(addr, self.coordinator_addr);
    }

    /// Starts `sql` with raw Flight calls (`GetFlightInfo`, then `DoGet` of its ticket), for tests
    /// that read, drop or cancel the stream themselves.
    pub async fn start_statement(&self, sql: &str) -> RawStatement {
        let mut flight = FlightClient::new(self.channel().await);
        let command = CommandStatementQuery {
            query: sql.to_string(),
            transaction_id: None,
        };
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        let info = within(
            START_LIMIT,
            "get_flight_info",
            flight.get_flight_info(descriptor),
        )
        .await
        .expect("flight info");
        let ticket = info.endpoint[0].ticket.clone().expect("ticket");
        let stream = within(START_LIMIT, "do_get", flight.do_get(ticket.clone()))
            .await
            .expect("do_get");
        RawStatement {
            flight,
            info,
            ticket,
            stream,
        }
    }

    /// CPU time executor `index` has used so far (user + system), from `/proc/<pid>/stat`.
    pub fn executor_cpu_time(&self, index: usize) -> Duration {
        let pid = self.executors[index].pid().expect("executor is running");
        crate::process::cpu_time(pid)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to executor `index`.
    pub fn signal_executor(&self, index: usize, signal: &str) {
        let pid = self.executors[index].pid().expect("executor is running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// The live set as the coordinator reports it.
    pub async fn live_executors(&self) -> Vec<ExecutorInfo> {
        let mut client = ClusterServiceClient::new(
            signed_channel(format!("http://{}", self.coordinator_addr)).await,
        );
        within(
            RPC_LIMIT,
            "list executors",
            client.list_executors(ListExecutorsRequest {}),
        )
        .await
        .expect("list executors")
        .into_inner()
        .executors
    }

    /// Waits until exactly `n` executors are live; returns how long that took.
    pub async fn wait_for_live(&self, n: usize) -> Duration {
        let started = Instant::now();
        loop {
            let live = self.live_executors().await.len();
            if live == n {
                return started.elapsed();
            }
            if started.elapsed() > START_LIMIT {
                panic!(
                    "{live} live executors instead of {n} after {START_LIMIT:?}\ncoordinator log:\n{}",
                    self.coordinator.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Executor `index`'s own status report.
    pub async fn executor_status(&self, index: usize) -> ExecutorStatus {
        let url = format!("http://{}", self.executor_addrs[index]);
        let mut client = ExecutorServiceClient::new(signed_channel(url).await);
        within(
            RPC_LIMIT,
            "executor status",
            client.get_executor_status(GetExecutorStatusRequest {}),
        )
        .await
        .expect("executor status")
        .into_inner()
    }
}

/// Every test cluster signs its internal calls; the harness signs its own calls to the internal
/// services with the same secret.
const CLUSTER_SECRET: &str = "quiver-test-cluster-secret-0123456789abcdef";

fn secret_file(dir: &Path) -> PathBuf {
    dir.join("cluster.secret")
}

/// The signing the harness's internal calls need.
pub fn cluster_auth() -> ClusterAuth {
    ClusterAuth::from_secret(CLUSTER_SECRET.as_bytes()).expect("test secret")
}

async fn signed_channel(url: String) -> Signed<tonic::transport::Channel> {
    let channel = within(
        RPC_LIMIT,
        "connect",
        tonic::transport::Endpoint::from_shared(url)
            .expect("uri")
            .connect(),
    )
    .await
    .expect("connect");
    Signed::new(channel, cluster_auth())
}

fn http_address_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.http"))
}

fn http_args(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--http-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--http-address-file".to_string(),
        http_address_file(dir, name).display().to_string(),
    ]
}

fn coordinator_args(options: &ClusterOptions, dir: &Path, listen: &str) -> Vec<String> {
    let mut args = vec![
        "coordinator".to_string(),
        "--listen".to_string(),
        listen.to_string(),
        "--target-partitions".to_string(),
        options.target_partitions.to_string(),
        "--warehouse".to_string(),
        options
            .warehouse
            .clone()
            .unwrap_or_else(|| dir.join("warehouse").display().to_string()),
        "--cluster-secret-file".to_string(),
        secret_file(dir).display().to_string(),
    ];
    if !options.binary_defaults {
        args.extend([
            "--executor-timeout-ms".to_string(),
            options.executor_timeout_ms.to_string(),
            "--heartbeat-interval-ms".to_string(),
            options.heartbeat_interval_ms.to_string(),
            "--scan-bytes-per-partition".to_string(),
            options.scan_bytes_per_partition.to_string(),
            "--query-timeout-ms".to_string(),
            options.query_timeout_ms.to_string(),
        ]);
    }
    args.extend(options.coordinator_args.iter().cloned());
    if options.http {
        args.extend(http_args(dir, "coordinator"));
    }
    for (name, path) in &options.tables {
        args.push("--table".to_string());
        args.push(format!("{name}={}", path.display()));
    }
    if let Some(catalog) = &options.catalog {
        args.push("--catalog".to_string());
        args.push(catalog.display().to_string());
    }
    args
}
