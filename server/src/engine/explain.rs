//! `EXPLAIN` and `EXPLAIN ANALYZE`: the distributed plan as rows.
//!
//! `EXPLAIN` plans and renders (stages, tasks, partitions) without running anything but the
//! query's uncorrelated scalar subqueries, whose values the plan is made with
//! ([`super::scalar_subqueries`]).
//! `EXPLAIN ANALYZE` is a supervised run to its end ([`PlanRunner::run_to_end`]: admission and
//! the query deadline, stage deadlines, the departure watchdog, a rerun when an executor is lost)
//! that discards the rows, then shows per-task metrics and where each stage's tasks ran. Rows:
//! `distributed_plan`/`analyzed_plan`, `stages`, `executors` (the live set), and for ANALYZE
//! `task_placement`.

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use crate::cluster::distributed;
use crate::error::Result;

use super::require_executors;
use super::run::PlanRunner;
use super::scalar_subqueries;
use super::statement::explain_schema;

pub(super) async fn explain(
    ctx: &SessionContext,
    runner: &PlanRunner,
    plan: &LogicalPlan,
    analyze: bool,
) -> Result<RecordBatch> {
    let (rendered, stages, placements) = if analyze {
        require_executors(runner.registry(), plan)?;
        let deadline = runner.deadline();
        let _slot = runner.admit(deadline).await?;
        let state = distributed::with_metrics(ctx.state())?;
        let completed = runner
            .run_to_end(&state, plan, deadline, "query", |batches| {
                // Run to completion, discarding rows.
                batches.try_for_each(|_| async { Ok(()) })
            })
            .await?;
        let stages = distributed::stage_count(&completed.physical);
        let rendered = distributed::render_analyzed_plan(completed.physical).await?;
        (rendered, stages, Some(completed.placements.render()))
    } else if !scalar_subqueries::to_run_first(plan).is_empty() {
        // The plan shown is the one that runs: with the values of its scalar subqueries, which
        // run now, as a query's do.
        require_executors(runner.registry(), plan)?;
        let deadline = runner.deadline();
        let _slot = runner.admit(deadline).await?;
        let physical = runner.physical_plan(&ctx.state(), plan, deadline).await?;
        let stages = distributed::stage_count(&physical);
        (distributed::render_plan(physical.as_ref()), stages, None)
    } else {
        let physical = ctx.state().create_physical_plan(plan).await?;
        let stages = distributed::stage_count(&physical);
        (distributed::render_plan(physical.as_ref()), stages, None)
    };
    let executors = runner
        .registry()
        .live_worker_urls()
        .iter()
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let (kinds, texts): (Vec<&str>, Vec<String>) = [
        (
            if analyze {
                "analyzed_plan"
            } else {
                "distributed_plan"
            },
            rendered,
        ),
        ("stages", stages.to_string()),
        // Tasks of every stage but the head one are spread over these at execution time.
        ("executors", executors),
    ]
    .into_iter()
    .chain(placements.map(|p| ("task_placement", p)))
    .unzip();
    Ok(RecordBatch::try_new(
        explain_schema(),
        vec![
            Arc::new(StringArray::from(kinds)),
            Arc::new(StringArray::from(texts)),
        ],
    )?)
}
