//! The baseline: single-node DataFusion 55 in this process, over the same Parquet files.
//!
//! Contract: tables are registered exactly as Quiver's catalog registers `--table NAME=DIR`
//! (`CREATE EXTERNAL TABLE name STORED AS PARQUET LOCATION '<absolute dir>/'`; TPC-DS:
//! [`quiver_tests::tpcds::context`], one file per table), with the same
//! `target_partitions` as the Quiver nodes. Two flavours:
//! * [`Flavour::Quiver`]: `quiver_server::session_config`, the settings every Quiver
//!   node runs with (no physical scalar subqueries, plain Utf8 strings; dynamic filter
//!   pushdown on, as in stock DataFusion). This isolates the cost of distribution and the front door.
//! * [`Flavour::Stock`]: DataFusion's defaults, what a user of DataFusion would get; the gap to
//!   [`Flavour::Quiver`] is what Quiver's settings cost.
//!
//! Results are streamed and counted, never collected, like the Flight client does.
//!
//! [`BaselineChild`] runs the same baseline in a child process (`quiver-bench __baseline`), so
//! that it can be confined to one node's CPU budget like a Quiver node ([`crate::cgroup`]): it
//! registers the tables, then answers one JSON line per request on stdin (the statements of one
//! query) with one JSON line on stdout (the time it measured itself, and the rows), until stdin
//! closes. It dies with its handle.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::cgroup::Confinement;
use crate::flight::{Fetched, first_line};

/// The hidden first argument that makes `quiver-bench` a baseline child.
pub(crate) const CHILD_COMMAND: &str = "__baseline";
/// Registering eight tables takes well under a second; generous for a loaded machine.
const READY_LIMIT: Duration = Duration::from_secs(120);
/// One TPC-H query on one small budget at SF10 stays far below this.
const QUERY_LIMIT: Duration = Duration::from_secs(3600);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Flavour {
    Quiver,
    Stock,
}

impl Flavour {
    pub(crate) fn short(self) -> &'static str {
        match self {
            Flavour::Quiver => "DF-quiver",
            Flavour::Stock => "DF-stock",
        }
    }
}

/// The session settings of `flavour` with `target_partitions` (0: one per core).
pub(crate) fn config(flavour: Flavour, target_partitions: usize) -> Result<SessionConfig> {
    Ok(match flavour {
        Flavour::Quiver => quiver_server::session_config(target_partitions)?,
        Flavour::Stock => {
            let config = SessionConfig::new();
            if target_partitions > 0 {
                config.with_target_partitions(target_partitions)
            } else {
                config
            }
        }
    })
}

/// A session of `flavour` over the TPC-H tables of `dataset`.
pub(crate) async fn context(
    flavour: Flavour,
    dataset: &Path,
    target_partitions: usize,
) -> Result<SessionContext> {
    let tables = quiver_server::tpch::TABLES
        .iter()
        .map(|t| (t.to_string(), dataset.join(t)));
    quiver_tests::oracle::catalog_context(config(flavour, target_partitions)?, tables).await
}

/// Plans and runs one statement, streaming the result.
pub(crate) async fn query(ctx: &SessionContext, sql: &str) -> Result<Fetched> {
    let df = ctx
        .sql(sql)
        .await
        .with_context(|| format!("DataFusion: {}", first_line(sql)))?;
    let mut fetched = Fetched {
        has_columns: !df.schema().fields().is_empty(),
        ..Fetched::default()
    };
    let mut stream = df.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch.with_context(|| format!("DataFusion: {}", first_line(sql)))?;
        fetched.rows += batch.num_rows() as u64;
        fetched.batches += 1;
    }
    Ok(fetched)
}

/// Runs every statement of one query; returns the elapsed time and what the statement with
/// columns returned.
pub(crate) async fn run_statements(
    ctx: &SessionContext,
    statements: &[String],
) -> Result<(Duration, Fetched)> {
    let started = Instant::now();
    let mut result = Fetched::default();
    for sql in statements {
        let fetched = query(ctx, sql).await?;
        if fetched.has_columns {
            result = fetched;
        }
    }
    Ok((started.elapsed(), result))
}

/// The child's arguments (after [`CHILD_COMMAND`]).
#[derive(clap::Parser, Debug)]
#[command(name = "quiver-bench __baseline")]
pub(crate) struct ChildArgs {
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long)]
    target_partitions: usize,
    #[arg(long, value_enum)]
    flavour: Flavour,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Ready,
    Done {
        seconds: f64,
        rows: u64,
        batches: u64,
        has_columns: bool,
    },
    Failed(String),
}

/// The child's `main` (in its budget already, [`crate::cgroup::confine_self`]).
pub(crate) async fn serve(args: ChildArgs) -> Result<()> {
    let ctx = context(args.flavour, &args.dataset, args.target_partitions).await?;
    let mut stdout = tokio::io::stdout();
    reply(&mut stdout, &Reply::Ready).await?;
    let mut requests = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = requests.next_line().await? {
        let statements: Vec<String> =
            serde_json::from_str(&line).context("parsing a baseline request")?;
        let answer = match run_statements(&ctx, &statements).await {
            Ok((elapsed, fetched)) => Reply::Done {
                seconds: elapsed.as_secs_f64(),
                rows: fetched.rows,
                batches: fetched.batches,
                has_columns: fetched.has_columns,
            },
            Err(e) => Reply::Failed(format!("{e:#}")),
        };
        reply(&mut stdout, &answer).await?;
    }
    Ok(())
}

async fn reply(stdout: &mut tokio::io::Stdout, reply: &Reply) -> Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    Ok(())
}

/// The baseline in a child process, SIGKILLed when dropped.
#[derive(Debug)]
pub(crate) struct BaselineChild {
    child: Child,
    stdin: ChildStdin,
    replies: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl BaselineChild {
    /// Starts `quiver-bench __baseline`, confined if `confinement` says so; returns once it has
    /// registered the tables.
    pub(crate) async fn start(
        flavour: Flavour,
        dataset: &Path,
        target_partitions: usize,
        confinement: Option<&Confinement>,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating quiver-bench")?;
        let mut command = Command::new(&exe);
        command
            .arg(CHILD_COMMAND)
            .arg("--dataset")
            .arg(dataset)
            .arg("--target-partitions")
            .arg(target_partitions.to_string())
            .arg("--flavour")
            .arg(match flavour {
                Flavour::Quiver => "quiver",
                Flavour::Stock => "stock",
            })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(confinement) = confinement {
            let (key, value) = confinement.env()?;
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {} {CHILD_COMMAND}", exe.display()))?;
        let pid = child.id().context("the baseline child exited at once")?;
        let stdin = child.stdin.take().context("the child's stdin")?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut baseline = Self {
            child,
            stdin,
            replies: BufReader::new(stdout).lines(),
            pid,
        };
        match baseline.reply(READY_LIMIT).await? {
            Reply::Ready => Ok(baseline),
            Reply::Failed(e) => bail!("the baseline child: {e}"),
            other => bail!("the baseline child answered {other:?} before it was ready"),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs one query's statements in the child; the time is the child's own measurement.
    pub(crate) async fn run(&mut self, statements: &[String]) -> Result<(Duration, Fetched)> {
        let mut line = serde_json::to_vec(statements)?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .context("writing to the baseline child")?;
        self.stdin.flush().await?;
        match self.reply(QUERY_LIMIT).await? {
            Reply::Done {
                seconds,
                rows,
                batches,
                has_columns,
            } => Ok((
                Duration::from_secs_f64(seconds),
                Fetched {
                    rows,
                    batches,
                    ipc_bytes: 0,
                    has_columns,
                },
            )),
            Reply::Failed(e) => bail!("{e}"),
            Reply::Ready => bail!("the baseline child said ready twice"),
        }
    }

    async fn reply(&mut self, limit: Duration) -> Result<Reply> {
        let line = match tokio::time::timeout(limit, self.replies.next_line()).await {
            Ok(line) => line.context("reading from the baseline child")?,
            Err(_) => bail!("the baseline child did not answer within {limit:?}"),
        };
        let Some(line) = line else {
            let status = self.child.try_wait().ok().flatten();
            bail!("the baseline child exited ({status:?}); its errors are above");
        };
        serde_json::from_str(&line).with_context(|| format!("parsing the child's reply {line:?}"))
    }
}
