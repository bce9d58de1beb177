//! Micro-benchmarks of the front door, each on a freshly started cluster:
//!
//! * `SELECT 1` round trip: `GetFlightInfo` + `DoGet` + decode, one after another on one
//!   connection; p50/p99 over `--select1-iterations` after 20 unmeasured ones.
//! * DoGet throughput: `SELECT * FROM lineitem` fetched from Quiver, against a plain
//!   arrow-flight server ([`crate::plain_flight`]) streaming the same rows from memory; Arrow
//!   IPC bytes received per second, median of `--doget-runs`, read by the same client code.
//! * Memory under a slow client: a reader that holds itself to `--slow-client-mbps` reads a
//!   result of at least `--slow-client-bytes` (lineitem repeated with UNION ALL); the peak RSS
//!   (`VmHWM`) of every process of that cluster is reported, the coordinator's being the target.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow_flight::Ticket;
use futures::TryStreamExt;

use crate::Options;
use crate::baseline::{self, Flavour};
use crate::cluster::{self, ClusterSetup};
use crate::flight::{Pace, SqlClient};
use crate::plain_flight::PlainFlightServer;
use crate::report::{self, DoGetFigures, Latency, MicroReport, SlowClientFigures};

const SCAN_SQL: &str = "SELECT * FROM lineitem";

pub(crate) async fn run(setup: &ClusterSetup, options: &Options) -> Result<MicroReport> {
    let select1 = {
        let cluster = cluster::start(setup).await;
        let mut client = SqlClient::connect(&cluster.coordinator_addr).await?;
        select1(&mut client, options.select1_iterations).await?
    };
    report::progress(format!(
        "SELECT 1: p50 {:.2} ms, p99 {:.2} ms",
        select1.p50_ms, select1.p99_ms
    ));

    let doget = {
        let cluster = cluster::start(setup).await;
        let mut client = SqlClient::connect(&cluster.coordinator_addr).await?;
        doget(&mut client, setup, options.doget_runs.max(1)).await?
    };
    report::progress(format!(
        "DoGet: Quiver {:.2} GB/s, plain arrow-flight {:.2} GB/s",
        doget.quiver_gb_per_s, doget.plain_gb_per_s
    ));

    let slow = slow_client(setup, options, doget.ipc_bytes).await?;
    report::progress(format!(
        "slow client: {:.2} GB in {:.1}s, coordinator peak RSS {:.0} MiB",
        slow.ipc_bytes as f64 / 1e9,
        slow.seconds,
        slow.coordinator_peak_rss_bytes as f64 / (1 << 20) as f64
    ));
    Ok(MicroReport {
        select1,
        doget,
        slow_client: slow,
    })
}

async fn select1(client: &mut SqlClient, iterations: usize) -> Result<Latency> {
    for _ in 0..20 {
        client.query("SELECT 1", None).await?;
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let fetched = client.query("SELECT 1", None).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
        if fetched.rows != 1 {
            bail!("SELECT 1 returned {} rows", fetched.rows);
        }
    }
    Ok(Latency::from_samples(samples))
}

async fn doget(client: &mut SqlClient, setup: &ClusterSetup, runs: usize) -> Result<DoGetFigures> {
    let mut quiver = Vec::new();
    let mut bytes = 0;
    let mut rows = 0;
    // One unmeasured run to warm the page cache and the connection.
    client.query(SCAN_SQL, None).await?;
    for _ in 0..runs {
        let started = Instant::now();
        let fetched = client.query(SCAN_SQL, None).await?;
        let seconds = started.elapsed().as_secs_f64();
        quiver.push(fetched.ipc_bytes as f64 / seconds / 1e9);
        bytes = fetched.ipc_bytes;
        rows = fetched.rows;
    }

    // The same rows, as the Quiver nodes type them (plain Utf8), held in memory.
    let ctx = baseline::context(Flavour::Quiver, &setup.dataset, setup.target_partitions).await?;
    let batches: Vec<_> = ctx
        .sql(SCAN_SQL)
        .await?
        .execute_stream()
        .await?
        .try_collect()
        .await?;
    let server = PlainFlightServer::start(batches).await?;
    let mut plain_client = SqlClient::connect(&server.addr.to_string()).await?;
    let mut plain = Vec::new();
    let mut plain_bytes = 0;
    plain_client.do_get(Ticket::new("all")).await?;
    for _ in 0..runs {
        let started = Instant::now();
        let fetched = plain_client.do_get(Ticket::new("all")).await?;
        let seconds = started.elapsed().as_secs_f64();
        if fetched.rows != rows {
            bail!(
                "the plain server streamed {} rows, Quiver {rows}",
                fetched.rows
            );
        }
        plain.push(fetched.ipc_bytes as f64 / seconds / 1e9);
        plain_bytes = fetched.ipc_bytes;
    }
    let quiver_gb_per_s = report::median(&quiver);
    let plain_gb_per_s = report::median(&plain);
    Ok(DoGetFigures {
        sql: SCAN_SQL.to_string(),
        rows,
        ipc_bytes: bytes,
        plain_ipc_bytes: plain_bytes,
        quiver_gb_per_s,
        plain_gb_per_s,
        ratio: quiver_gb_per_s / plain_gb_per_s,
        quiver_runs: quiver,
        plain_runs: plain,
    })
}

async fn slow_client(
    setup: &ClusterSetup,
    options: &Options,
    bytes_per_copy: u64,
) -> Result<SlowClientFigures> {
    // Enough copies of lineitem for the requested volume.
    let copies = options
        .slow_client_bytes
        .div_ceil(bytes_per_copy.max(1))
        .max(1);
    let sql = vec![SCAN_SQL; copies as usize].join(" UNION ALL ");
    let cluster = cluster::start(setup).await;
    let idle = cluster
        .coordinator
        .memory()
        .context("reading the coordinator's RSS")?;
    let mut client = SqlClient::connect(&cluster.coordinator_addr).await?;
    let pace = Pace {
        bytes_per_second: options.slow_client_mbps * 1e6,
    };
    let started = Instant::now();
    // The peak comes from VmHWM, which the kernel keeps: no sampling needed, and the cluster
    // is fresh, so it covers only start-up and this query.
    let fetched = client.query(&sql, Some(pace)).await;
    let seconds = started.elapsed().as_secs_f64();
    let fetched = fetched?;
    let nodes = cluster::memory(&cluster);
    let coordinator_peak_rss_bytes = nodes.first().map(|n| n.peak_rss_bytes).unwrap_or_default();
    Ok(SlowClientFigures {
        sql_copies_of_lineitem: copies,
        rows: fetched.rows,
        ipc_bytes: fetched.ipc_bytes,
        seconds,
        client_mb_per_s: fetched.ipc_bytes as f64 / seconds / 1e6,
        coordinator_idle_rss_bytes: idle.current_bytes,
        coordinator_peak_rss_bytes,
        nodes,
    })
}
