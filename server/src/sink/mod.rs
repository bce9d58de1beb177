//! The distributed write path: executors write, the coordinator commits once.
//!
//! * [`spec`]: what a write writes ([`WriteSpec`]) and what each task reports ([`WrittenFile`]);
//! * [`files`]: one task's rows into rolling, hive-partitioned data files;
//! * [`exec`]: the plan nodes: [`ParallelWriteExec`] (one writer per partition of the last
//!   distributed stage) and `WriteCommitExec` (the one commit on the coordinator), planned from
//!   the logical `WriteNode` by [`QuiverPlanner`];
//! * [`codec`]: how writers travel to executors ([`QuiverCodec`]);
//! * [`staging`]: the write journal and the collector of what failed or crashed writes left.

mod codec;
mod exec;
mod files;
mod spec;
pub(crate) mod staging;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::error::Result;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};

pub(crate) use codec::QuiverCodec;
pub(crate) use exec::{Commit, Committer, ParallelWriteExec, WriteCommitExec, WriteNode};
pub(crate) use files::{TaskFiles, store_error, write_task_files};
#[cfg(test)]
pub(crate) use spec::DEFAULT_TARGET_FILE_BYTES;
pub(crate) use spec::{
    DataFormat, MIN_TARGET_FILE_BYTES, TABLE_COMPRESSION, WriteSpec, WrittenFile,
};

/// DataFusion's physical planner with Quiver's logical nodes added.
#[derive(Debug)]
pub(crate) struct QuiverPlanner;

#[async_trait]
impl QueryPlanner for QuiverPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(exec::WritePlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}
