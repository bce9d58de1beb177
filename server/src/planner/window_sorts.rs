//! Window inputs stay sorted by their partition columns across exchanges.
//!
//! DataFusion drops a `PARTITION BY` column from the sort below a window when it knows the column
//! is constant there (`WHERE o_custkey = 370 ... PARTITION BY o_custkey`). That knowledge travels
//! through equivalence properties, which datafusion-distributed's network exchanges do not carry:
//! in a later stage the window finds its partition column unsorted and fails ("Expects PARTITION
//! BY expression to be ordered"). Contract: [`SortWindowPartitions`] puts every partition column
//! the sort below a window lacks back at the front of that sort, or adds a sort when there is
//! none (a window without ORDER BY). The rows' order does not change (the input already satisfied
//! the window, so those columns are constant or equal to leading sort columns), but the order is
//! now explicit and survives any exchange.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};

/// Runs after DataFusion's own physical optimizer rules, before the plan is split into stages.
#[derive(Debug, Default)]
pub(crate) struct SortWindowPartitions;

/// The partition columns of a window node, if `plan` is one.
fn partition_by(plan: &dyn ExecutionPlan) -> Option<Vec<Arc<dyn PhysicalExpr>>> {
    let exprs = if let Some(window) = plan.downcast_ref::<BoundedWindowAggExec>() {
        window.window_expr()
    } else if let Some(window) = plan.downcast_ref::<WindowAggExec>() {
        window.window_expr()
    } else {
        return None;
    };
    Some(exprs.first()?.partition_by().to_vec())
}

/// The `partition_by` columns `ordering` does not name.
fn missing_from(
    ordering: Option<&LexOrdering>,
    partition_by: &[Arc<dyn PhysicalExpr>],
) -> Vec<PhysicalSortExpr> {
    partition_by
        .iter()
        .filter(|column| {
            !ordering.is_some_and(|ordering| ordering.iter().any(|s| s.expr.eq(*column)))
        })
        .map(|column| PhysicalSortExpr::new_default(Arc::clone(column)))
        .collect()
}

/// The window's input, sorted explicitly by the partition columns (in front of whatever order
/// it had); `None` if nothing is missing. A sort below the window is extended; otherwise (a
/// window without ORDER BY over a constant partition column has no sort) one is added.
fn sorted_input(
    input: &Arc<dyn ExecutionPlan>,
    partition_by: &[Arc<dyn PhysicalExpr>],
) -> Option<Arc<dyn ExecutionPlan>> {
    if let Some(sort) = input.downcast_ref::<SortExec>() {
        let missing = missing_from(Some(sort.expr()), partition_by);
        if missing.is_empty() {
            return None;
        }
        let ordering = LexOrdering::new(missing.into_iter().chain(sort.expr().iter().cloned()))?;
        let sorted = SortExec::new(ordering, Arc::clone(sort.input()))
            .with_preserve_partitioning(sort.preserve_partitioning())
            .with_fetch(sort.fetch());
        return Some(Arc::new(sorted));
    }
    let existing = input.output_ordering();
    let missing = missing_from(existing, partition_by);
    if missing.is_empty() {
        return None;
    }
    let ordering = LexOrdering::new(
        missing
            .into_iter()
            .chain(existing.into_iter().flat_map(|o| o.iter().cloned())),
    )?;
    let partitions = input.properties().partitioning.partition_count();
    Some(Arc::new(
        SortExec::new(ordering, Arc::clone(input)).with_preserve_partitioning(partitions > 1),
    ))
}

impl PhysicalOptimizerRule for SortWindowPartitions {
    fn name(&self) -> &str {
        "quiver_sort_window_partitions"
    }

    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(partition_by) = partition_by(node.as_ref()) else {
                return Ok(Transformed::no(node));
            };
            let [input] = node.children()[..] else {
                return Ok(Transformed::no(node));
            };
            if partition_by.is_empty() {
                return Ok(Transformed::no(node));
            }
            let Some(resorted) = sorted_input(input, &partition_by) else {
                return Ok(Transformed::no(node));
            };
            Ok(Transformed::yes(replace_children_if_necessary(
                Arc::clone(&node),
                vec![resorted],
            )?))
        })
        .map(|t| t.data)
    }

    fn schema_check(&self) -> bool {
        true
    }
}
