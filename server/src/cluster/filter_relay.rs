//! Dynamic filters across stages.
//!
//! A hash join builds a filter from its build side (DataFusion's `DynamicFilterPhysicalExpr`:
//! min/max bounds and, for small builds, the key set) that the planner pushed into the scans of
//! its probe side. In one process the join and the scans share the filter. In a distributed plan
//! the scans may run in another stage, on another executor, from a copy decoded from the plan
//! bytes: DataFusion keeps the filter's expression id across encoding, so the copies can be
//! found, but nothing fills them. This module does, for the filters the coordinator names:
//!
//! * The coordinator ([`relayed_filters`] in the distributed seam) names the filters worth
//!   carrying: those of `CollectLeft` joins whose every task sees the whole build side (a
//!   broadcast, or a stage of one task), whose consumers run in another stage. A partitioned
//!   join's task knows only its partitions' keys: its filter is never carried (no pruning, never
//!   a wrong answer).
//! * On the executor running the join ([`FilterRelay::rewrite`]), the network boundary under the
//!   join's probe side is wrapped in a [`PublishFilter`] that shows the filter to the join (so
//!   the join computes it although its consumer is not in the plan) and, once the join marks it
//!   complete, sends it: to this executor's own waiting scans, and to the coordinator, which
//!   passes it to every other live executor.
//! * On an executor running a scan that consumes a named filter, the scan is wrapped in an
//!   [`AwaitFilters`] that waits for the filter before it opens its first file, at most
//!   [`RelayConfig::wait`]; the update fills the scan's copy and marks it complete, and the scan
//!   prunes files, row groups and rows with it as it would in one process.
//!
//! A filter that arrives late only costs pruning; one that never arrives (lost, dropped by the
//! test hook, a producer that never ran) delays the scan by the wait at most, never blocks it,
//! and never changes a result: a dynamic filter only removes rows that cannot join.
//! Both wrappers delegate downcasts, metrics and children to the node they wrap, so the worker
//! plan keeps the coordinator's shape (per-task metrics line up).

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions, displayable,
};
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::DefaultPhysicalExtensionCodec;
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::protobuf;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use quiver_proto::cluster::DynamicFilterUpdate;

use crate::task::AbortOnDrop;

/// The header that names, per attempt, the filters the coordinator wants carried across stages:
/// their expression ids, comma-separated.
pub(crate) const RELAYED_FILTERS_HEADER: &str = "x-quiver-relayed-filters";

/// How long a scan waits for a named filter by default before it reads without it.
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_millis(1000);

/// Updates kept for scans that have not registered yet, at most this long.
const PENDING_TTL: Duration = Duration::from_secs(300);

/// Test hook, read from `QUIVER_TEST_FILTER_RELAY` when an executor starts: `drop` publishes
/// nothing, `delay:MS` publishes each filter MS milliseconds late. Never set in production.
pub(crate) const TEST_HOOK_ENV: &str = "QUIVER_TEST_FILTER_RELAY";

/// Where finished filters go beyond this executor (the coordinator, in a running executor).
pub(crate) type Publisher =
    Arc<dyn Fn(DynamicFilterUpdate) -> BoxFuture<'static, ()> + Send + Sync>;

/// How an executor's relay behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayConfig {
    /// How long a scan waits for a named filter before it reads without it.
    pub(crate) wait: Duration,
    /// The test hook: publish nothing.
    pub(crate) drop_updates: bool,
    /// The test hook: publish this late.
    pub(crate) delay: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            wait: DEFAULT_WAIT,
            drop_updates: false,
            delay: Duration::ZERO,
        }
    }
}

impl RelayConfig {
    /// The default config, amended by [`TEST_HOOK_ENV`] (an unknown value is an error, so a
    /// mistyped hook cannot silently test nothing).
    pub(crate) fn from_env() -> std::result::Result<Self, String> {
        Self::with_hook(std::env::var(TEST_HOOK_ENV).ok().as_deref())
    }

    /// The default config with the test hook's value, if any.
    fn with_hook(hook: Option<&str>) -> std::result::Result<Self, String> {
        let mut config = Self::default();
        match hook {
            None => {}
            Some("drop") => config.drop_updates = true,
            Some(v) => {
                let ms = v
                    .strip_prefix("delay:")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .ok_or_else(|| format!("{TEST_HOOK_ENV}={v}: expected 'drop' or 'delay:MS'"))?;
                config.delay = Duration::from_millis(ms);
            }
        }
        Ok(config)
    }
}

/// The filters of one attempt, as a task session carries them (a config extension).
#[derive(Debug)]
pub(crate) struct TaskFilters {
    pub(crate) attempt: String,
    pub(crate) relayed: HashSet<u64>,
}

impl TaskFilters {
    /// From the header value [`RELAYED_FILTERS_HEADER`] carries; unparsable ids are ignored
    /// (the filter is then not carried: pruning lost, nothing else).
    pub(crate) fn parse(attempt: &str, header: &str) -> Self {
        Self {
            attempt: attempt.to_string(),
            relayed: header
                .split(',')
                .filter_map(|id| id.trim().parse().ok())
                .collect(),
        }
    }
}

/// The header value naming `ids`.
pub(crate) fn header_value(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Copies of one filter on this executor, and its update if it came first.
struct Slot {
    consumers: Vec<Weak<DynamicFilterPhysicalExpr>>,
    update: Option<Arc<DecodedUpdate>>,
    touched: Instant,
}

/// The slot of `key`, made or refreshed now; slots nobody touched for [`PENDING_TTL`] (an
/// attempt long over, an update whose scans never came) are dropped first.
fn touch(slots: &mut HashMap<(String, u64), Slot>, key: (String, u64)) -> &mut Slot {
    let now = Instant::now();
    slots.retain(|_, slot| now.duration_since(slot.touched) < PENDING_TTL);
    let slot = slots.entry(key).or_insert_with(|| Slot {
        consumers: Vec::new(),
        update: None,
        touched: now,
    });
    slot.touched = now;
    slot
}

struct DecodedUpdate {
    children: Vec<Arc<dyn PhysicalExpr>>,
    expr: Arc<dyn PhysicalExpr>,
}

/// An executor's side of the relay: fills its scans' copies of filters built elsewhere, and
/// publishes the filters its joins build.
pub(crate) struct FilterRelay {
    slots: Mutex<HashMap<(String, u64), Slot>>,
    publisher: Publisher,
    config: RelayConfig,
}

impl fmt::Debug for FilterRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterRelay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl FilterRelay {
    pub(crate) fn new(config: RelayConfig, publisher: Publisher) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::default(),
            publisher,
            config,
        })
    }

    /// Rewrites a decoded task plan of `filters`' attempt: publishes the named filters its
    /// joins produce for other stages, and makes its scans wait for the named filters they
    /// consume but no join of the plan produces.
    pub(crate) fn rewrite(
        self: &Arc<Self>,
        plan: Arc<dyn ExecutionPlan>,
        filters: &TaskFilters,
        is_network_boundary: &dyn Fn(&dyn ExecutionPlan) -> bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if filters.relayed.is_empty() {
            return Ok(plan);
        }
        let produced = produced_here(&plan, &filters.relayed);
        let plan = plan
            .transform_up(|node| {
                if let Some(join) = node.downcast_ref::<HashJoinExec>()
                    && let Some(filter) = collect_left_filter(node.as_ref())
                    && let Some(id) = filter.expression_id()
                    && filters.relayed.contains(&id)
                {
                    let right = Arc::clone(join.right());
                    let Some(right) =
                        self.publish_under(right, filter, &filters.attempt, is_network_boundary)?
                    else {
                        return Ok(Transformed::no(node));
                    };
                    let left = Arc::clone(join.left());
                    return Ok(Transformed::yes(Arc::clone(&node).replace_children(
                        vec![left, right],
                        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
                    )?));
                }
                let waited: Vec<_> = consumed_filters(node.as_ref())
                    .into_iter()
                    .filter(|f| {
                        f.expression_id().is_some_and(|id| {
                            filters.relayed.contains(&id) && !produced.contains(&id)
                        })
                    })
                    .collect();
                if waited.is_empty() || !node.children().is_empty() {
                    return Ok(Transformed::no(node));
                }
                for filter in &waited {
                    self.register(&filters.attempt, filter);
                }
                Ok(Transformed::yes(
                    Arc::new(AwaitFilters::new(node, waited, self.config.wait))
                        as Arc<dyn ExecutionPlan>,
                ))
            })?
            .data;
        Ok(plan)
    }

    /// `probe` with its first network boundary wrapped in a [`PublishFilter`] of `filter`;
    /// `None` when there is no boundary (the consumer is then local, or gone).
    fn publish_under(
        self: &Arc<Self>,
        probe: Arc<dyn ExecutionPlan>,
        filter: Arc<DynamicFilterPhysicalExpr>,
        attempt: &str,
        is_network_boundary: &dyn Fn(&dyn ExecutionPlan) -> bool,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let mut wrapped = false;
        let schema = probe.schema();
        let probe = probe
            .transform_down(|node| {
                if wrapped {
                    return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
                }
                if is_network_boundary(node.as_ref()) {
                    wrapped = true;
                    let publish = PublishFilter {
                        input: node,
                        filter: Arc::clone(&filter),
                        schema: Arc::clone(&schema),
                        attempt: attempt.to_string(),
                        relay: Arc::downgrade(self),
                        task: OnceLock::new(),
                    };
                    return Ok(Transformed::new(
                        Arc::new(publish) as Arc<dyn ExecutionPlan>,
                        true,
                        TreeNodeRecursion::Jump,
                    ));
                }
                Ok(Transformed::no(node))
            })?
            .data;
        Ok(wrapped.then_some(probe))
    }

    /// Records a scan's copy of a filter; fills it at once if its update came first.
    fn register(&self, attempt: &str, filter: &Arc<DynamicFilterPhysicalExpr>) {
        let Some(id) = filter.expression_id() else {
            return;
        };
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = touch(&mut slots, (attempt.to_string(), id));
        if let Some(update) = &slot.update {
            fill(filter, update);
        } else {
            slot.consumers.push(Arc::downgrade(filter));
        }
    }

    /// Fills this executor's copies of the filter in `update` (and keeps it for copies still
    /// to come). Bad bytes are an error for the caller to log; they change nothing.
    pub(crate) fn apply(&self, update: &DynamicFilterUpdate) -> Result<()> {
        let decoded = Arc::new(decode(update)?);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = touch(&mut slots, (update.attempt_id.clone(), update.filter_id));
        if slot.update.is_some() {
            // Every task of a broadcast join builds the same filter: the first one wins.
            return Ok(());
        }
        let mut filled = 0;
        for consumer in slot.consumers.drain(..) {
            if let Some(consumer) = consumer.upgrade() {
                fill(&consumer, &decoded);
                filled += 1;
            }
        }
        tracing::debug!(
            attempt = %update.attempt_id,
            filter = update.filter_id,
            filled,
            "dynamic filter from another stage arrived"
        );
        slot.update = Some(decoded);
        Ok(())
    }

    /// Sends a filter one of this executor's joins finished: to this executor's own scans, then
    /// beyond (unless the test hook drops it).
    async fn publish(&self, update: DynamicFilterUpdate) {
        if self.config.drop_updates {
            tracing::debug!(
                filter = update.filter_id,
                "test hook: dynamic filter dropped"
            );
            return;
        }
        if !self.config.delay.is_zero() {
            tokio::time::sleep(self.config.delay).await;
        }
        tracing::debug!(
            attempt = %update.attempt_id,
            filter = update.filter_id,
            bytes = update.expr.len(),
            "publishing a dynamic filter built here"
        );
        if let Err(e) = self.apply(&update) {
            tracing::warn!(error = %e, "a dynamic filter built here could not be applied here");
        }
        (self.publisher)(update).await;
    }
}

/// The dynamic filter a `CollectLeft` hash join produces (the only filters carried).
pub(crate) fn collect_left_filter(
    node: &dyn ExecutionPlan,
) -> Option<Arc<DynamicFilterPhysicalExpr>> {
    let join = node.downcast_ref::<HashJoinExec>()?;
    if join.mode != PartitionMode::CollectLeft {
        return None;
    }
    join.dynamic_expressions_produced()
        .into_iter()
        .find_map(|expr| (expr as Arc<dyn Any + Send + Sync>).downcast().ok())
}

/// The ids of the named filters a node of `plan` produces.
fn produced_here(plan: &Arc<dyn ExecutionPlan>, named: &HashSet<u64>) -> HashSet<u64> {
    let mut produced = HashSet::new();
    // `apply` only fails if the closure does.
    let _ = plan.apply(|node| {
        for expr in node.dynamic_expressions_produced() {
            if let Some(id) = expr.expression_id().filter(|id| named.contains(id)) {
                produced.insert(id);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    produced
}

/// The dynamic filters inside `node`'s own expressions (a scan's predicate).
fn consumed_filters(node: &dyn ExecutionPlan) -> Vec<Arc<DynamicFilterPhysicalExpr>> {
    let mut found: Vec<Arc<DynamicFilterPhysicalExpr>> = Vec::new();
    let _ = node.apply_expressions(&mut |root| {
        root.apply(|expr| {
            if let Some(filter) = (Arc::clone(expr) as Arc<dyn Any + Send + Sync>)
                .downcast::<DynamicFilterPhysicalExpr>()
                .ok()
                && !found
                    .iter()
                    .any(|f| f.expression_id() == filter.expression_id())
            {
                found.push(filter);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    });
    found
}

/// Fills a consumer's copy: through a view of it in the producer's own column terms (what the
/// update is written in), so that each copy remaps it to its own schema as DataFusion does.
fn fill(consumer: &Arc<DynamicFilterPhysicalExpr>, update: &DecodedUpdate) {
    let original = Arc::clone(consumer).with_new_children(update.children.clone());
    let filled = original.and_then(|view| {
        let view = (view as Arc<dyn Any + Send + Sync>)
            .downcast::<DynamicFilterPhysicalExpr>()
            .map_err(|_| DataFusionError::Internal("a dynamic filter's view is not one".into()))?;
        view.update(Arc::clone(&update.expr))?;
        view.mark_complete();
        Ok(())
    });
    if let Err(e) = filled {
        // The scan then reads without the filter: slower, still right.
        tracing::warn!(error = %e, "a dynamic filter from another stage could not be applied");
        consumer.mark_complete();
    }
}

/// The update for a filter its producer marked complete.
fn encode(
    attempt: &str,
    filter: &DynamicFilterPhysicalExpr,
    schema: &Schema,
) -> Result<DynamicFilterUpdate> {
    let codec = DefaultPhysicalExtensionCodec {};
    let id = filter
        .expression_id()
        .ok_or_else(|| DataFusionError::Internal("a dynamic filter without an id".into()))?;
    let children = filter
        .children()
        .into_iter()
        .map(|c| Ok(serialize_physical_expr(c, &codec)?.encode_to_vec()))
        .collect::<Result<Vec<_>>>()?;
    // The join-side hash table lookup cannot travel: DataFusion encodes it as `true`, leaving
    // the bounds (and the key list of small builds).
    let expr = serialize_physical_expr(&filter.current()?, &codec)?.encode_to_vec();
    let schema = protobuf::Schema::try_from(schema)
        .map_err(|e| DataFusionError::Internal(format!("encoding a schema: {e}")))?;
    Ok(DynamicFilterUpdate {
        attempt_id: attempt.to_string(),
        filter_id: id,
        schema: schema.encode_to_vec(),
        children,
        expr,
        from_worker_url: String::new(),
    })
}

fn decode(update: &DynamicFilterUpdate) -> Result<DecodedUpdate> {
    let bad = |what: &str, e: &dyn fmt::Display| {
        DataFusionError::Plan(format!("dynamic filter update: bad {what}: {e}"))
    };
    let schema =
        protobuf::Schema::decode(update.schema.as_slice()).map_err(|e| bad("schema", &e))?;
    let schema = Schema::try_from(&schema).map_err(|e| bad("schema", &e))?;
    // Built-in expressions only (bounds, key lists, hashes): no session functions needed.
    let ctx = SessionContext::new().task_ctx();
    let codec = DefaultPhysicalExtensionCodec {};
    let expr_of = |bytes: &[u8]| {
        let node = protobuf::PhysicalExprNode::decode(bytes).map_err(|e| bad("expression", &e))?;
        parse_physical_expr(&node, &ctx, &schema, &codec)
    };
    Ok(DecodedUpdate {
        children: update
            .children
            .iter()
            .map(|c| expr_of(c))
            .collect::<Result<_>>()?,
        expr: expr_of(&update.expr)?,
    })
}

/// A network boundary under a join's probe side, shown to the join as the consumer of its
/// filter; sends the filter once the join completes it. Everything else is the boundary's.
struct PublishFilter {
    input: Arc<dyn ExecutionPlan>,
    filter: Arc<DynamicFilterPhysicalExpr>,
    /// The join's probe-side schema, the filter's column terms.
    schema: SchemaRef,
    attempt: String,
    relay: Weak<FilterRelay>,
    /// Waits for the filter; dies with the plan.
    task: OnceLock<AbortOnDrop>,
}

impl fmt::Debug for PublishFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishFilter")
            .field("input", &self.input.name())
            .finish_non_exhaustive()
    }
}

impl PublishFilter {
    fn start(&self) {
        self.task.get_or_init(|| {
            let filter = Arc::clone(&self.filter);
            let schema = Arc::clone(&self.schema);
            let attempt = self.attempt.clone();
            let relay = Weak::clone(&self.relay);
            AbortOnDrop::spawn_named("a dynamic filter publisher", async move {
                filter.wait_complete().await;
                let Some(relay) = relay.upgrade() else {
                    return;
                };
                match encode(&attempt, &filter, &schema) {
                    Ok(update) => relay.publish(update).await,
                    Err(e) => tracing::warn!(error = %e, "a dynamic filter could not be encoded"),
                }
            })
        });
    }
}

impl DisplayAs for PublishFilter {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", displayable(self.input.as_ref()).one_line())
    }
}

impl ExecutionPlan for PublishFilter {
    fn name(&self) -> &str {
        self.input.name()
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.input.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        // What makes the join compute its filter: a consumer under its probe side.
        let filter = Arc::clone(&self.filter) as Arc<dyn PhysicalExpr>;
        match f(&filter)? {
            TreeNodeRecursion::Stop => Ok(TreeNodeRecursion::Stop),
            _ => self.input.apply_expressions(f),
        }
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            input: Arc::clone(&self.input).replace_children(children, options)?,
            filter: Arc::clone(&self.filter),
            schema: Arc::clone(&self.schema),
            attempt: self.attempt.clone(),
            relay: Weak::clone(&self.relay),
            task: OnceLock::new(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.start();
        self.input.execute(partition, context)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.input.metrics()
    }
}

/// A scan that waits for the filters named for it before it starts reading, at most until a
/// deadline set by its first partition. Everything else is the scan's.
struct AwaitFilters {
    input: Arc<dyn ExecutionPlan>,
    filters: Vec<Arc<DynamicFilterPhysicalExpr>>,
    wait: Duration,
    deadline: Arc<OnceLock<tokio::time::Instant>>,
}

impl fmt::Debug for AwaitFilters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwaitFilters")
            .field("input", &self.input.name())
            .field("filters", &self.filters.len())
            .finish()
    }
}

impl AwaitFilters {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        filters: Vec<Arc<DynamicFilterPhysicalExpr>>,
        wait: Duration,
    ) -> Self {
        Self {
            input,
            filters,
            wait,
            deadline: Arc::default(),
        }
    }
}

impl DisplayAs for AwaitFilters {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", displayable(self.input.as_ref()).one_line())
    }
}

impl ExecutionPlan for AwaitFilters {
    fn name(&self) -> &str {
        self.input.name()
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.input.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.input.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.input.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Self {
            input: Arc::clone(&self.input).replace_children(children, options)?,
            filters: self.filters.clone(),
            wait: self.wait,
            deadline: Arc::clone(&self.deadline),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let deadline = *self
            .deadline
            .get_or_init(|| tokio::time::Instant::now() + self.wait);
        let filters = self.filters.clone();
        let input = Arc::clone(&self.input);
        let schema = input.schema();
        let opened = async move {
            let all = futures::future::join_all(filters.iter().map(|f| f.wait_complete()));
            if tokio::time::timeout_at(deadline, all).await.is_err() {
                tracing::debug!(
                    partition,
                    "a dynamic filter from another stage did not come in time: reading without it"
                );
            }
            input.execute(partition, context)
        };
        let stream = futures::stream::once(opened).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.boxed(),
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.input.metrics()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, Field};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, Column, lit};
    use datafusion::physical_plan::empty::EmptyExec;

    use super::*;

    fn schema() -> Schema {
        Schema::new(vec![Field::new("k", DataType::Int64, false)])
    }

    fn col(name: &str, index: usize) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(name, index))
    }

    fn as_filter(expr: Arc<dyn PhysicalExpr>) -> Arc<DynamicFilterPhysicalExpr> {
        (expr as Arc<dyn Any + Send + Sync>)
            .downcast()
            .expect("a dynamic filter")
    }

    /// A copy of `filter` as another stage decodes it: same id, its own state.
    fn decoded_copy(filter: &Arc<DynamicFilterPhysicalExpr>) -> Arc<DynamicFilterPhysicalExpr> {
        let codec = DefaultPhysicalExtensionCodec {};
        let expr = Arc::clone(filter) as Arc<dyn PhysicalExpr>;
        let node = serialize_physical_expr(&expr, &codec).unwrap();
        let ctx = SessionContext::new().task_ctx();
        as_filter(parse_physical_expr(&node, &ctx, &schema(), &codec).unwrap())
    }

    fn complete(filter: &DynamicFilterPhysicalExpr) -> bool {
        futures::FutureExt::now_or_never(filter.wait_complete()).is_some()
    }

    fn relay(config: RelayConfig) -> Arc<FilterRelay> {
        FilterRelay::new(config, Arc::new(|_| Box::pin(async {})))
    }

    /// A producer's filter, then its finished update `k >= 5 AND k <= 9`.
    fn produced() -> (Arc<DynamicFilterPhysicalExpr>, DynamicFilterUpdate) {
        let filter = Arc::new(DynamicFilterPhysicalExpr::new(vec![col("k", 0)], lit(true)));
        (Arc::clone(&filter), {
            let copy = decoded_copy(&filter);
            let bounds = Arc::new(BinaryExpr::new(
                Arc::new(BinaryExpr::new(col("k", 0), Operator::GtEq, lit(5i64))),
                Operator::And,
                Arc::new(BinaryExpr::new(col("k", 0), Operator::LtEq, lit(9i64))),
            ));
            copy.update(bounds).unwrap();
            copy.mark_complete();
            encode("a1", &copy, &schema()).unwrap()
        })
    }

    #[test]
    fn updates_fill_every_copy_in_its_own_columns_whenever_it_registers() {
        let (producer, update) = produced();
        let relay = relay(RelayConfig::default());
        // A scan whose schema has the key at index 2, registered before the update came.
        let early = decoded_copy(&producer);
        let early_view = as_filter(
            Arc::clone(&early)
                .with_new_children(vec![col("k", 2)])
                .unwrap(),
        );
        relay.register("a1", &early_view);
        // Another attempt's copy of the same filter is not this update's.
        let other = decoded_copy(&producer);
        relay.register("a2", &other);
        assert_eq!(early_view.current().unwrap().to_string(), "true");

        relay.apply(&update).unwrap();
        assert_eq!(
            early_view.current().unwrap().to_string(),
            "k@2 >= 5 AND k@2 <= 9"
        );
        assert!(complete(&early_view));
        assert_eq!(other.current().unwrap().to_string(), "true");
        assert!(!complete(&other));

        // A copy registered after the update is filled at once; a second update is ignored.
        let late = decoded_copy(&producer);
        relay.register("a1", &late);
        assert_eq!(late.current().unwrap().to_string(), "k@0 >= 5 AND k@0 <= 9");
        relay.apply(&update).unwrap();
    }

    #[test]
    fn bad_updates_are_errors_and_fill_nothing() {
        let (producer, mut update) = produced();
        let relay = relay(RelayConfig::default());
        let copy = decoded_copy(&producer);
        relay.register("a1", &copy);
        update.expr = vec![0xff, 0x01, 0x02];
        assert!(relay.apply(&update).is_err());
        assert!(!complete(&copy));
    }

    #[test]
    fn headers_and_the_test_hook_parse() {
        let task = TaskFilters::parse("a", &header_value(&[3, 17]));
        assert_eq!(task.relayed, HashSet::from([3, 17]));
        assert!(TaskFilters::parse("a", "x,,4").relayed == HashSet::from([4]));
        assert_eq!(
            RelayConfig::with_hook(None).unwrap(),
            RelayConfig::default()
        );
        assert_eq!(
            RelayConfig::with_hook(Some("delay:25")).unwrap().delay,
            Duration::from_millis(25)
        );
        assert!(RelayConfig::with_hook(Some("drop")).unwrap().drop_updates);
        assert!(RelayConfig::with_hook(Some("sometimes")).is_err());
    }

    #[tokio::test]
    async fn a_waiting_scan_starts_when_its_filter_comes_or_at_its_deadline() {
        let (producer, update) = produced();
        let relay = relay(RelayConfig::default());
        let scan: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::new(schema())));
        let ctx = SessionContext::new().task_ctx();

        // Never filled: it reads without the filter once the wait is over.
        let lost = decoded_copy(&producer);
        let waiting = AwaitFilters::new(Arc::clone(&scan), vec![lost], Duration::from_millis(100));
        let started = Instant::now();
        let batches: Vec<_> = waiting
            .execute(0, Arc::clone(&ctx))
            .unwrap()
            .collect()
            .await;
        assert!(batches.iter().all(|b| b.is_ok()));
        assert!(started.elapsed() >= Duration::from_millis(100));

        // Filled while it waits: it starts then, well before its (long) deadline.
        let copy = decoded_copy(&producer);
        relay.register("a1", &copy);
        let waiting = AwaitFilters::new(scan, vec![copy], Duration::from_secs(30));
        let stream = waiting.execute(0, ctx).unwrap();
        let started = Instant::now();
        let read = AbortOnDrop::spawn(stream.collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(20)).await;
        relay.apply(&update).unwrap();
        let batches = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the scan started")
            .unwrap();
        assert!(batches.iter().all(|b| b.is_ok()));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
