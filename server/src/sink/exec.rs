//! The plan nodes of a distributed write: one writer per partition of the last distributed stage
//! ([`ParallelWriteExec`]) and one commit on the coordinator ([`WriteCommitExec`]), planned from
//! the logical [`WriteNode`] by [`WritePlanner`].
//!
//! ```text
//!   coordinator        WriteCommitExec: gathers the reports, commits once
//!                             ▲ reports only (path, rows, bytes): rows never reach it
//!                      NetworkCoalesceExec (datafusion-distributed)
//!   stage N, T tasks   ParallelWriteExec: each partition writes its own files
//!                             ▲
//!                      the input query's plan
//! ```
//!
//! Contract: `WriteCommitExec` runs the commit once, after every writer reported, in a task of
//! its own that runs to its end ([`crate::task::uninterruptible`]); a [`Commit`] handle says
//! whether it started and what it returned, so that a caller whose stream was cut (deadline, an
//! executor leaving during the commit) answers with the commit's own outcome and never runs
//! the write again once it started.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{RecordBatch, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, DFSchemaRef};
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    Expr, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, Distribution, ExecutionPlan,
    ExecutionPlanProperties, InputDistributionRequirements, PlanProperties, ReplaceChildrenOptions,
};
use datafusion::physical_planner::{ExtensionPlanner, PhysicalPlanner};
use futures::{FutureExt, StreamExt, TryStreamExt, stream};
use tokio::sync::watch;

use super::files::{TaskFiles, write_task_files};
use super::spec::{WriteSpec, WrittenFile, read_report, report_batch, report_schema};
use crate::cluster::distributed;
use crate::error::{QuiverError, Result, to_datafusion};
use crate::ids::random_text;
use crate::task;

/// Makes a write's reported files visible, once.
#[async_trait]
pub(crate) trait Committer: Send + Sync + 'static {
    /// Commits exactly `files`; returns the rows the write added.
    async fn commit(&self, files: Vec<WrittenFile>) -> Result<u64>;

    /// What the commit does, for EXPLAIN: e.g. `append to table t`.
    fn describe(&self) -> String;
}

/// A commit's outcome, kept as the status a client would see so that it can be read twice.
type Outcome = std::result::Result<u64, tonic::Status>;

/// A write's one commit: the committer, whether it started, and its outcome.
pub(crate) struct Commit {
    committer: Arc<dyn Committer>,
    started: AtomicBool,
    outcome: watch::Sender<Option<Outcome>>,
}

impl fmt::Debug for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commit")
            .field("what", &self.committer.describe())
            .finish_non_exhaustive()
    }
}

impl Commit {
    pub(crate) fn new(committer: Arc<dyn Committer>) -> Arc<Self> {
        Arc::new(Self {
            committer,
            started: AtomicBool::new(false),
            outcome: watch::Sender::new(None),
        })
    }

    /// Whether the commit started: from then on its outcome is the write's.
    pub(crate) fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// The commit's outcome, once it ends (it always does once started).
    pub(crate) async fn outcome(&self) -> Result<u64> {
        let mut outcome = self.outcome.subscribe();
        let ended = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| QuiverError::Internal("a commit ended without an outcome".into()))?;
        match ended.clone() {
            Some(outcome) => outcome.map_err(QuiverError::from_status),
            None => Err(QuiverError::Internal(
                "a commit ended without an outcome".into(),
            )),
        }
    }

    /// Runs the commit of `files` to its end in a task of its own; a second call (a later
    /// attempt after the first committed) is refused.
    pub(crate) async fn run(self: &Arc<Self>, files: Vec<WrittenFile>) -> Result<u64> {
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(QuiverError::Internal(
                "a write tried to commit twice".into(),
            ));
        }
        let this = Arc::clone(self);
        let outcome = task::uninterruptible(async move {
            // Whatever happens, the outcome is stored: a caller may be waiting for it.
            let committed = AssertUnwindSafe(this.committer.commit(files))
                .catch_unwind()
                .await;
            let outcome = match committed {
                Ok(outcome) => outcome.map_err(|e| e.to_status()),
                Err(_) => Err(QuiverError::Internal("the commit panicked".into()).to_status()),
            };
            this.outcome.send_replace(Some(outcome.clone()));
            outcome
        })
        .await?;
        outcome.map_err(QuiverError::from_status)
    }
}

/// The logical write: `input`'s rows written as `spec` says, then committed by `commit`.
#[derive(Debug, Clone)]
pub(crate) struct WriteNode {
    pub(crate) input: LogicalPlan,
    pub(crate) spec: WriteSpec,
    pub(crate) commit: Arc<Commit>,
    schema: DFSchemaRef,
}

impl WriteNode {
    pub(crate) fn new(input: LogicalPlan, spec: WriteSpec, commit: Arc<Commit>) -> Result<Self> {
        let schema = Arc::new(DFSchema::try_from(count_schema().as_ref().clone())?);
        Ok(Self {
            input,
            spec,
            commit,
            schema,
        })
    }

    pub(crate) fn into_plan(self) -> LogicalPlan {
        LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: Arc::new(self),
        })
    }
}

impl PartialEq for WriteNode {
    fn eq(&self, other: &Self) -> bool {
        self.input == other.input
            && self.spec == other.spec
            && Arc::ptr_eq(&self.commit, &other.commit)
    }
}

impl Eq for WriteNode {}

impl Hash for WriteNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.input.hash(state);
        self.spec.hash(state);
    }
}

impl PartialOrd for WriteNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.spec.partial_cmp(&other.spec)
    }
}

impl UserDefinedLogicalNodeCore for WriteNode {
    fn name(&self) -> &str {
        "QuiverWrite"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "QuiverWrite: {} into {}",
            self.commit.committer.describe(),
            self.spec.destination
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DFResult<Self> {
        let input = inputs
            .pop()
            .ok_or_else(|| DataFusionError::Internal("QuiverWrite needs its input".into()))?;
        Ok(Self {
            input,
            ..self.clone()
        })
    }
}

/// Plans [`WriteNode`]s: a writer over the input, a commit over the writers. Each planning is
/// one attempt, so each gets its own attempt id in its file names.
#[derive(Debug)]
pub(crate) struct WritePlanner;

#[async_trait]
impl ExtensionPlanner for WritePlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn datafusion::catalog::Session,
        _planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> DFResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(write) = node.as_any().downcast_ref::<WriteNode>() else {
            return Ok(None);
        };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal(
                "QuiverWrite has one input".into(),
            ));
        };
        let mut spec = write.spec.clone();
        spec.attempt = random_text();
        let writer = ParallelWriteExec::try_new(Arc::clone(input), spec).map_err(to_datafusion)?;
        Ok(Some(Arc::new(WriteCommitExec::new(
            Arc::new(writer),
            Arc::clone(&write.commit),
        ))))
    }
}

/// The output of a write: the rows it added.
fn count_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

/// Writes each input partition into its own files and outputs one report batch per partition.
#[derive(Debug)]
pub(crate) struct ParallelWriteExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    properties: Arc<PlanProperties>,
}

impl ParallelWriteExec {
    pub(crate) fn try_new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Result<Self> {
        spec.check_input(&input.schema())?;
        let properties = PlanProperties::new(
            EquivalenceProperties::new(report_schema()),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            spec,
            properties: Arc::new(properties),
        })
    }

    pub(crate) fn spec(&self) -> &WriteSpec {
        &self.spec
    }
}

impl DisplayAs for ParallelWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let spec = &self.spec;
        write!(
            f,
            "ParallelWriteExec: destination={}, format={}, target_file_bytes={}",
            spec.destination,
            spec.format.extension(),
            spec.target_file_bytes
        )?;
        if !spec.partition_by.is_empty() {
            write!(f, ", partition_by=[{}]", spec.partition_by.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ParallelWriteExec {
    fn name(&self) -> &str {
        "ParallelWriteExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("ParallelWriteExec has one input".into()))?;
        Ok(Arc::new(
            Self::try_new(input, self.spec.clone()).map_err(to_datafusion)?,
        ))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let files = TaskFiles {
            spec: self.spec.clone(),
            input: self.input.schema(),
            name: format!("{}-{partition}", distributed::task_index(&context)),
        };
        let runtime = context.runtime_env();
        let written = async move {
            let batches = input.map_err(QuiverError::from);
            let files = write_task_files(&runtime, files, batches).await?;
            report_batch(&files)
        };
        let stream = stream::once(written).map_err(to_datafusion);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            report_schema(),
            stream,
        )))
    }
}

/// Gathers every writer's report and commits the write once; outputs the rows it added.
#[derive(Debug)]
pub(crate) struct WriteCommitExec {
    input: Arc<dyn ExecutionPlan>,
    commit: Arc<Commit>,
    properties: Arc<PlanProperties>,
}

impl WriteCommitExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, commit: Arc<Commit>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(count_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            commit,
            properties: Arc::new(properties),
        }
    }
}

impl DisplayAs for WriteCommitExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WriteCommitExec: {} (once, on the coordinator)",
            self.commit.committer.describe()
        )
    }
}

impl ExecutionPlan for WriteCommitExec {
    fn name(&self) -> &str {
        "WriteCommitExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        self.input_distribution_requirements().into_per_child()
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![Distribution::SinglePartition])
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DFResult<TreeNodeRecursion>,
    ) -> DFResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("WriteCommitExec has one input".into()))?;
        Ok(Arc::new(Self::new(input, Arc::clone(&self.commit))))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DFResult<SendableRecordBatchStream> {
        if partition != 0 || self.input.output_partitioning().partition_count() != 1 {
            return Err(DataFusionError::Internal(
                "WriteCommitExec runs as one partition over one input partition".into(),
            ));
        }
        let reports = self.input.execute(0, context)?;
        let commit = Arc::clone(&self.commit);
        let committed = async move {
            let batches: Vec<RecordBatch> = reports.try_collect().await?;
            let mut files = Vec::new();
            for batch in &batches {
                files.extend(read_report(batch)?);
            }
            let rows = commit.run(files).await?;
            Ok::<_, QuiverError>(RecordBatch::try_new(
                count_schema(),
                vec![Arc::new(UInt64Array::from(vec![rows]))],
            )?)
        };
        let stream = stream::once(committed).map_err(to_datafusion).boxed();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            count_schema(),
            stream,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl Committer for Counting {
        async fn commit(&self, files: Vec<WrittenFile>) -> Result<u64> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(files.iter().map(|f| f.rows).sum())
        }

        fn describe(&self) -> String {
            "count".into()
        }
    }

    struct Panicking;

    #[async_trait]
    impl Committer for Panicking {
        async fn commit(&self, _files: Vec<WrittenFile>) -> Result<u64> {
            panic!("a bug in a commit")
        }

        fn describe(&self) -> String {
            "panic".into()
        }
    }

    #[tokio::test]
    async fn a_commit_runs_once_and_its_outcome_is_kept() {
        let committer = Arc::new(Counting(Default::default()));
        let commit = Commit::new(Arc::clone(&committer) as Arc<dyn Committer>);
        assert!(!commit.started());
        let file = WrittenFile {
            path: "f".into(),
            rows: 7,
            bytes: 1,
        };
        assert_eq!(commit.run(vec![file.clone()]).await.unwrap(), 7);
        assert!(commit.started());
        assert_eq!(commit.outcome().await.unwrap(), 7);
        // A second attempt never commits again.
        assert!(commit.run(vec![file]).await.is_err());
        assert_eq!(committer.0.load(Ordering::SeqCst), 1);

        // A panicking commit still leaves an outcome for whoever waits for it.
        let commit = Commit::new(Arc::new(Panicking));
        let err = commit.run(Vec::new()).await.unwrap_err();
        assert_eq!(err.to_status().code(), tonic::Code::Internal);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), commit.outcome())
            .await
            .expect("the outcome is there");
        assert!(waited.is_err());
    }
}
