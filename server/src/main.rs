//! The `quiver` binary: `serve`, `coordinator`, `executor` and `sql`.

use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use datafusion::arrow::ipc::CompressionType;
use quiver_server::{
    ClusterAuth, CoordinatorConfig, ExecutorConfig, HttpListen, LogFormat, QuiverError,
    ResourceLimits, ServeConfig, ServerConfigFile, TableDef, TlsFiles, parse_bytes, parse_listen,
};

#[derive(Parser)]
#[command(
    name = "quiver",
    version,
    about = "Distributed SQL over Parquet, spoken as Arrow Flight SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as JSON objects (one a line, with the query id of the query a line
    /// is about).
    #[arg(long, global = true, value_enum, default_value_t = LogFormatArg::Text)]
    log_format: LogFormatArg,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a coordinator and executors in one process (on the TPC-H demo unless tables are given).
    Serve(ServeArgs),
    /// Run a coordinator: the Flight SQL endpoint clients connect to.
    Coordinator(CoordinatorArgs),
    /// Run an executor that joins a coordinator's cluster.
    Executor(ExecutorArgs),
    /// Run SQL against a Quiver server (a REPL without -c/-f).
    Sql(quiver_client::cli::SqlArgs),
    /// Read a password from stdin and print its hash for [[auth.users]] in the config file.
    HashPassword(HashPasswordArgs),
}

#[derive(Args)]
struct CatalogArgs {
    /// A table: NAME=URL or NAME:FORMAT=URL (FORMAT: parquet, csv, json; default from the
    /// extension, directories are Parquet). URL is a local path or s3://bucket/path.
    #[arg(long = "table", value_name = "NAME=URL")]
    tables: Vec<String>,
    /// TOML catalog file with tables and object-store settings; SQL DDL is persisted here.
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
}

#[derive(Args)]
struct ClusterArgs {
    /// Address to serve Flight SQL (and executor membership) on.
    #[arg(long, default_value = "127.0.0.1:50051", value_parser = parse_listen)]
    listen: SocketAddr,
    /// Write the bound HOST:PORT here once the server accepts connections.
    #[arg(long, value_name = "PATH")]
    address_file: Option<PathBuf>,
    /// Milliseconds without a heartbeat after which an executor leaves the live set.
    #[arg(long, default_value_t = 4_000)]
    executor_timeout_ms: u64,
    /// Milliseconds between executor heartbeats.
    #[arg(long, default_value_t = 1_000)]
    heartbeat_interval_ms: u64,
    /// DataFusion partitions per node (0 = one per core; distributed plans use at least 2).
    #[arg(long, default_value_t = 0)]
    target_partitions: usize,
    /// Bytes of file input per scan partition; smaller spreads scans over more executors. A
    /// task gets this times its partitions: a scan smaller than one node's worth of partitions
    /// is not worth a second node's shuffles. A Parquet scan counts the bytes of the columns it
    /// reads, not whole files.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    scan_bytes_per_partition: usize,
    /// Largest estimated build side, in bytes, that a hash join broadcasts to every task of its
    /// probe side instead of shuffling both sides by key (0: never broadcast by size).
    #[arg(long, default_value_t = quiver_server::DEFAULT_BROADCAST_JOIN_BYTES)]
    broadcast_join_bytes: usize,
    /// A broadcast join's build side that reads at most this many bytes of files is read by every
    /// task of the join instead of in a stage of its own (0: always a stage of its own).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    inline_broadcast_bytes: u64,
    /// How batches are compressed between nodes: lz4 (cheap, the default), zstd (smaller, for
    /// slow networks) or none (for fast networks where CPU is the limit).
    #[arg(long, value_enum, env = "QUIVER_SHUFFLE_COMPRESSION", default_value_t = Compression::Lz4)]
    shuffle_compression: Compression,
    /// Milliseconds a query may run before it is cancelled with DEADLINE_EXCEEDED (0 = no limit).
    #[arg(long, default_value_t = 0)]
    query_timeout_ms: u64,
    /// Milliseconds each stage of a query may run on an executor before the query fails with
    /// DEADLINE_EXCEEDED (0 = no limit).
    #[arg(long, default_value_t = 3_600_000)]
    stage_timeout_ms: u64,
    /// Writes (CREATE TABLE AS, INSERT, COPY, ingest) start a new file once one reaches this
    /// size (e.g. 128MiB; COPY takes OPTIONS (target_file_bytes '…') per statement).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes, default_value = "128MiB")]
    target_file_bytes: u64,
    /// Seconds the write journal keeps a write after it started: what a write on a lost
    /// executor may still add is collected until then.
    #[arg(long, default_value_t = 3600)]
    staging_grace_secs: u64,
    /// Seconds between passes of the collector of failed or interrupted writes' files.
    #[arg(long, default_value_t = 300)]
    staging_interval_secs: u64,
    /// Test only: every write's commit sleeps this many milliseconds after its catalog write,
    /// so a test can hang up in the middle of a commit.
    #[arg(long, default_value_t = 0, hide = true)]
    test_commit_pause_ms: u64,
    /// TOML server config: `[auth]` with token_secret, token_ttl_secs and [[auth.users]]
    /// (name, password_hash from `quiver hash-password`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow listening beyond loopback without authentication.
    #[arg(long)]
    insecure: bool,
    /// Where tables created with CREATE TABLE / bulk ingest store their Parquet files: a
    /// directory or s3://bucket/prefix (serve: DATA_DIR/warehouse; otherwise writes are refused).
    #[arg(long, value_name = "DIR_OR_URL")]
    warehouse: Option<String>,
    /// Largest message a client may send, in bytes (ingest and parameter batches).
    #[arg(long, default_value_t = quiver_server::DEFAULT_MAX_MESSAGE_BYTES)]
    max_message_bytes: usize,
    /// Queries (and writes) running at once; 0 = no limit.
    #[arg(long, default_value_t = 32)]
    max_concurrent_queries: usize,
    /// Queries waiting for a slot beyond that; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 128)]
    max_queued_queries: usize,
    /// On SIGTERM, seconds running queries may take to finish while new ones are refused
    /// (a second signal stops at once).
    #[arg(long, default_value_t = DEFAULT_DRAIN_GRACE_SECS)]
    drain_grace_secs: u64,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    cluster_secret: ClusterSecretArgs,
    #[command(flatten)]
    http: HttpArgs,
}

#[derive(Args)]
struct HttpArgs {
    /// Serve the admin HTTP port here: /metrics (Prometheus), /healthz, /readyz, and on the
    /// coordinator the status page (e.g. 127.0.0.1:8080; off by default). On the coordinator,
    /// beyond loopback it needs an `[auth]` section or --insecure.
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    http_listen: Option<SocketAddr>,
    /// Write the bound HTTP HOST:PORT here once the admin port accepts connections.
    #[arg(long, value_name = "PATH", requires = "http_listen")]
    http_address_file: Option<PathBuf>,
}

impl HttpArgs {
    fn listen(&self) -> Option<HttpListen> {
        self.http_listen.map(|listen| HttpListen {
            listen,
            address_file: self.http_address_file.clone(),
        })
    }
}

#[derive(Args)]
struct ClusterSecretArgs {
    /// File holding the secret (at least 32 bytes) every node of the cluster shares; internal
    /// calls are signed with it and refused without it. Also QUIVER_CLUSTER_SECRET_FILE.
    #[arg(long, value_name = "FILE", env = "QUIVER_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
}

impl ClusterSecretArgs {
    fn auth(&self) -> Result<ClusterAuth, QuiverError> {
        match &self.cluster_secret_file {
            Some(path) => ClusterAuth::from_file(path),
            None => Ok(ClusterAuth::open()),
        }
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Compression {
    Lz4,
    Zstd,
    None,
}

#[derive(Args)]
struct LimitArgs {
    /// Memory for query execution on this node (e.g. 4GiB); spillable operators share it fairly,
    /// others fail the query with RESOURCE_EXHAUSTED. Default: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    memory_limit: Option<u64>,
    /// Memory one query may use on this node (e.g. 1GiB), within --memory-limit; beyond it the
    /// query spills or fails with RESOURCE_EXHAUSTED while other queries go on. Default: no limit.
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    query_memory_limit: Option<u64>,
    /// Directory for spill files (default: the OS temp directory).
    #[arg(long, value_name = "DIR")]
    spill_dir: Option<PathBuf>,
    /// Most bytes of spill files at once (default 100GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_bytes)]
    spill_limit: Option<u64>,
}

impl LimitArgs {
    fn limits(&self) -> ResourceLimits {
        ResourceLimits {
            memory_limit: self
                .memory_limit
                .map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            query_memory_limit: self
                .query_memory_limit
                .map(|m| usize::try_from(m).unwrap_or(usize::MAX)),
            spill_dir: self.spill_dir.clone(),
            spill_limit: self.spill_limit,
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Number of in-process executors.
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Where the demo dataset and the catalog file live.
    #[arg(long, default_value = "quiver-data")]
    data_dir: PathBuf,
    /// TPC-H scale factor of the demo dataset.
    #[arg(long, default_value_t = 0.1)]
    tpch_sf: f64,
}

#[derive(Args)]
struct CoordinatorArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Check the flags and files (config, catalog, TLS, cluster secret) as start-up would,
    /// print the effective settings and exit; binds and contacts nothing.
    #[arg(long)]
    check: bool,
}

/// Default of `--drain-grace-secs`.
const DEFAULT_DRAIN_GRACE_SECS: u64 = 30;

#[derive(Args)]
struct ExecutorArgs {
    /// The coordinator to join, e.g. grpc://127.0.0.1:50051.
    #[arg(long)]
    coordinator: String,
    /// Address to serve the worker service on.
    #[arg(long, default_value = "127.0.0.1:50052", value_parser = parse_listen)]
    listen: SocketAddr,
    /// URL other nodes reach this executor at (default: http://BOUND_ADDRESS).
    #[arg(long)]
    advertise: Option<String>,
    /// Write the bound HOST:PORT here once the server accepts connections.
    #[arg(long, value_name = "PATH")]
    address_file: Option<PathBuf>,
    /// DataFusion partitions per task (0 = one per core).
    #[arg(long, default_value_t = 0)]
    target_partitions: usize,
    /// PEM certificate to trust when the coordinator URL is grpc+tls://.
    #[arg(long, value_name = "PEM")]
    coordinator_ca: Option<PathBuf>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    cluster_secret: ClusterSecretArgs,
    /// Allow listening beyond loopback without a cluster secret.
    #[arg(long)]
    insecure: bool,
    /// On SIGTERM, seconds the executor's running tasks may take to finish while it takes no
    /// new ones; then it leaves the cluster (a second signal stops at once).
    #[arg(long, default_value_t = DEFAULT_DRAIN_GRACE_SECS)]
    drain_grace_secs: u64,
    /// Check the flags and files as start-up would, print the effective settings and exit;
    /// binds and contacts nothing.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    http: HttpArgs,
}

#[derive(Args)]
struct HashPasswordArgs {
    /// PBKDF2 rounds.
    #[arg(long, default_value_t = quiver_server::DEFAULT_HASH_ITERATIONS)]
    iterations: u32,
}

fn coordinator_config(
    cluster: ClusterArgs,
    catalog: CatalogArgs,
) -> Result<CoordinatorConfig, QuiverError> {
    let tables = catalog
        .tables
        .iter()
        .map(|t| TableDef::parse_flag(t))
        .collect::<Result<Vec<_>, _>>()?;
    let file = match &cluster.config {
        Some(path) => ServerConfigFile::load(path)?,
        None => ServerConfigFile::default(),
    };
    let tls = match (cluster.tls_cert, cluster.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let warehouse = cluster
        .warehouse
        .as_deref()
        .map(quiver_server::absolute_location)
        .transpose()?;
    Ok(CoordinatorConfig {
        auth: file.auth,
        locations: file.locations,
        tls,
        insecure: cluster.insecure,
        warehouse,
        max_message_bytes: cluster.max_message_bytes,
        local_cluster_listener: false,
        limits: cluster.limits.limits(),
        max_concurrent_queries: cluster.max_concurrent_queries,
        max_queued_queries: cluster.max_queued_queries,
        cluster_auth: cluster.cluster_secret.auth()?,
        http: cluster.http.listen(),
        node_name: None,
        listen: cluster.listen,
        tables,
        catalog: catalog.catalog,
        address_file: cluster.address_file,
        executor_timeout: Duration::from_millis(cluster.executor_timeout_ms),
        heartbeat_interval: Duration::from_millis(cluster.heartbeat_interval_ms),
        target_partitions: cluster.target_partitions,
        scan_bytes_per_partition: cluster.scan_bytes_per_partition,
        broadcast_join_bytes: cluster.broadcast_join_bytes,
        inline_broadcast_bytes: cluster.inline_broadcast_bytes,
        shuffle_compression: match cluster.shuffle_compression {
            Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
            Compression::Zstd => Some(CompressionType::ZSTD),
            Compression::None => None,
        },
        query_timeout: (cluster.query_timeout_ms > 0)
            .then(|| Duration::from_millis(cluster.query_timeout_ms)),
        stage_timeout: (cluster.stage_timeout_ms > 0)
            .then(|| Duration::from_millis(cluster.stage_timeout_ms)),
        test_commit_pause: (cluster.test_commit_pause_ms > 0)
            .then(|| Duration::from_millis(cluster.test_commit_pause_ms)),
        target_file_bytes: cluster.target_file_bytes,
        staging_grace: Duration::from_secs(cluster.staging_grace_secs),
        staging_interval: Duration::from_secs(cluster.staging_interval_secs),
        drain_grace: Duration::from_secs(cluster.drain_grace_secs),
    })
}

/// An executor runs any plan it is sent: beyond loopback it needs the cluster secret.
fn check_exposure(addr: SocketAddr, auth: &ClusterAuth, insecure: bool) -> Result<(), QuiverError> {
    if !addr.ip().is_loopback() && auth.is_open() && !insecure {
        return Err(QuiverError::InvalidArgument(format!(
            "refusing to serve {addr} without --cluster-secret-file: anyone reaching an executor could run plans that read its files (pass --insecure if something else protects it)"
        )));
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), QuiverError> {
    // Registered before anything serves, and once: a second signal during a drain is not lost.
    let mut signals = ShutdownSignals::new();
    match cli.command {
        Command::Serve(args) => {
            let executors = args.executors;
            let config = ServeConfig {
                coordinator: coordinator_config(args.cluster, args.catalog)?,
                executors,
                data_dir: args.data_dir,
                tpch_scale_factor: args.tpch_sf,
            };
            let mut cluster = quiver_server::start_serve(config).await?;
            let url = cluster.coordinator.url();
            println!("Quiver is serving Flight SQL on {url} with {executors} executors.");
            if let Some(http) = cluster.http_addr {
                println!("Status page and metrics: http://{http}/");
            }
            println!("Try: quiver sql --url {url} -c 'SELECT count(*) FROM lineitem'");
            tokio::select! {
                r = cluster.coordinator.wait() => return r,
                _ = signals.next() => {}
            }
            tracing::info!("shutdown signal: draining the cluster");
            drain_or_stop(&mut signals, cluster.drain()).await
        }
        Command::Coordinator(args) => {
            let check = args.check;
            let config = coordinator_config(args.cluster, args.catalog)?;
            if check {
                print_settings("coordinator", &config.check()?);
                return Ok(());
            }
            let mut running = quiver_server::start_coordinator(config).await?;
            tokio::select! {
                r = running.wait() => return r,
                _ = signals.next() => {}
            }
            tracing::info!("shutdown signal: draining the coordinator");
            drain_or_stop(&mut signals, running.drain()).await
        }
        Command::Executor(args) => {
            let cluster_auth = args.cluster_secret.auth()?;
            check_exposure(args.listen, &cluster_auth, args.insecure)?;
            let http = args.http.listen();
            if let Some(http) = &http {
                check_exposure(http.listen, &cluster_auth, args.insecure)?;
            }
            let config = ExecutorConfig {
                coordinator: args.coordinator,
                listen: args.listen,
                advertise: args.advertise,
                address_file: args.address_file,
                target_partitions: args.target_partitions,
                coordinator_ca: args.coordinator_ca,
                limits: args.limits.limits(),
                cluster_auth,
                drain_grace: Duration::from_secs(args.drain_grace_secs),
                http,
                node_name: None,
            };
            if args.check {
                print_settings("executor", &config.check()?);
                return Ok(());
            }
            let mut running = quiver_server::start_executor(config).await?;
            tokio::select! {
                r = running.wait() => return r,
                _ = signals.next() => {}
            }
            tracing::info!("shutdown signal: draining the executor");
            drain_or_stop(&mut signals, running.drain()).await
        }
        Command::Sql(_) | Command::HashPassword(_) => {
            unreachable!("handled before the server runtime starts")
        }
    }
}

/// Runs a drain to its end, unless another signal comes first: then the process stops at once.
async fn drain_or_stop(
    signals: &mut ShutdownSignals,
    drain: impl Future<Output = Result<(), QuiverError>>,
) -> Result<(), QuiverError> {
    tokio::select! {
        r = drain => r,
        _ = signals.next() => Err(QuiverError::Unavailable(
            "a second shutdown signal: stopped at once, without draining".into(),
        )),
    }
}

/// What `--check` prints: the effective settings, one `name = value` a line.
fn print_settings(what: &str, settings: &[(&'static str, String)]) {
    println!("quiver {what}: the configuration is valid");
    for (name, value) in settings {
        println!("{name} = {value}");
    }
}

fn hash_password(args: &HashPasswordArgs) -> ExitCode {
    let mut password = String::new();
    if std::io::stdin().is_terminal() {
        eprint!("password: ");
    }
    if let Err(e) = std::io::stdin().read_line(&mut password) {
        eprintln!("quiver: reading the password: {e}");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("quiver: empty password");
        return ExitCode::FAILURE;
    }
    match quiver_server::hash_password(password, args.iterations) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quiver: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM (what service managers send), as one stream of signals.
struct ShutdownSignals {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let streams = signal(SignalKind::terminate())
                .ok()
                .zip(signal(SignalKind::interrupt()).ok());
            Self { streams }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some((term, interrupt)) = &mut self.streams {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Sql(args) => return quiver_client::cli::main(args),
        Command::HashPassword(args) => return hash_password(&args),
        command => Cli {
            command,
            log_format: cli.log_format,
        },
    };
    quiver_server::init_logs(match cli.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiver: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quiver: {e}");
            ExitCode::FAILURE
        }
    }
}
