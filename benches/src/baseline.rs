//! The baseline: single-node DataFusion 55 in this process, over the same Parquet files.
//!
//! Contract: tables are registered exactly as Quiver's catalog registers `--table NAME=DIR`
//! (`CREATE EXTERNAL TABLE name STORED AS PARQUET LOCATION '<absolute dir>/'`), with the same
//! `target_partitions` as the Quiver nodes. Two flavours:
//! * [`Flavour::Quiver`]: `quiver_server::session_config`, the settings every Quiver
//!   node runs with (dynamic filter pushdown off, no physical scalar subqueries, plain Utf8
//!   strings). This isolates the cost of distribution and the front door.
//! * [`Flavour::Stock`]: DataFusion's defaults, what a user of DataFusion would get; the gap to
//!   [`Flavour::Quiver`] is what Quiver's settings cost.
//!
//! Results are streamed and counted, never collected, like the Flight client does.

use std::path::Path;

use anyhow::{Context, Result};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use crate::flight::{Fetched, first_line};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

pub(crate) async fn context(
    flavour: Flavour,
    dataset: &Path,
    target_partitions: usize,
) -> Result<SessionContext> {
    let config = match flavour {
        Flavour::Quiver => quiver_server::session_config(target_partitions)?,
        Flavour::Stock => {
            let config = SessionConfig::new();
            if target_partitions > 0 {
                config.with_target_partitions(target_partitions)
            } else {
                config
            }
        }
    };
    let ctx = SessionContext::new_with_config(config);
    for table in quiver_server::tpch::TABLES {
        let location =
            quiver_server::absolute_location(&dataset.join(table).display().to_string())?;
        let ddl = format!("CREATE EXTERNAL TABLE {table} STORED AS PARQUET LOCATION '{location}'");
        ctx.sql(&ddl)
            .await
            .with_context(|| format!("registering {table}"))?
            .collect()
            .await?;
    }
    Ok(ctx)
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
