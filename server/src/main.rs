//! The `quiver` binary: `serve`, `coordinator`, `executor` and `sql`.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use datafusion::arrow::ipc::CompressionType;
use quiver_server::{
    ClusterAuth, CoordinatorConfig, ExecutorConfig, QuiverError, ResourceLimits, ServeConfig,
    ServerConfigFile, TableDef, TlsFiles, parse_bytes, parse_listen,
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
    /// Bytes of file input per scan partition; smaller spreads scans over more executors.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    scan_bytes_per_partition: usize,
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
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    cluster_secret: ClusterSecretArgs,
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
}

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
        listen: cluster.listen,
        tables,
        catalog: catalog.catalog,
        address_file: cluster.address_file,
        executor_timeout: Duration::from_millis(cluster.executor_timeout_ms),
        heartbeat_interval: Duration::from_millis(cluster.heartbeat_interval_ms),
        target_partitions: cluster.target_partitions,
        scan_bytes_per_partition: cluster.scan_bytes_per_partition,
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
    match cli.command {
        Command::Serve(args) => {
            let executors = args.executors;
            let config = ServeConfig {
                coordinator: coordinator_config(args.cluster, args.catalog)?,
                executors,
                data_dir: args.data_dir,
                tpch_scale_factor: args.tpch_sf,
            };
            let cluster = quiver_server::start_serve(config).await?;
            let url = cluster.coordinator.url();
            println!("Quiver is serving Flight SQL on {url} with {executors} executors.");
            println!("Try: quiver sql --url {url} -c 'SELECT count(*) FROM lineitem'");
            tokio::select! {
                r = cluster.coordinator.wait() => r,
                _ = shutdown_signal() => Ok(()),
            }
        }
        Command::Coordinator(args) => {
            let running =
                quiver_server::start_coordinator(coordinator_config(args.cluster, args.catalog)?)
                    .await?;
            tokio::select! {
                r = running.wait() => r,
                _ = shutdown_signal() => Ok(()),
            }
        }
        Command::Executor(args) => {
            let cluster_auth = args.cluster_secret.auth()?;
            check_exposure(args.listen, &cluster_auth, args.insecure)?;
            let running = quiver_server::start_executor(ExecutorConfig {
                coordinator: args.coordinator,
                listen: args.listen,
                advertise: args.advertise,
                address_file: args.address_file,
                target_partitions: args.target_partitions,
                coordinator_ca: args.coordinator_ca,
                limits: args.limits.limits(),
                cluster_auth,
            })
            .await?;
            tokio::select! {
                r = running.wait() => r,
                _ = shutdown_signal() => Ok(()),
            }
        }
        Command::Sql(_) | Command::HashPassword(_) => {
            unreachable!("handled before the server runtime starts")
        }
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

/// Ctrl-C or SIGTERM (what service managers send).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Sql(args) => return quiver_client::cli::main(args),
        Command::HashPassword(args) => return hash_password(&args),
        command => Cli { command },
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
