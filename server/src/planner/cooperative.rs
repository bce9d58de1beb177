//! Joins yield to the scheduler.
//!
//! DataFusion streams give Tokio's scheduler a turn only when a budget of record batches is
//! spent, and it counts batches where data enters a pipeline (scans, exchanges). A join can emit
//! thousands of output batches per input batch (a nested-loop join over two large inputs never
//! asks its inputs for more), so the task driving it would keep a runtime thread for as long as it
//! runs: the executor could not answer its status RPC, notice that a query was cancelled, or drop
//! the query's streams. [`YieldingJoins`] puts a [`CooperativeExec`] above every join, so each
//! batch a join produces spends the budget and a cancelled query stops at the next batch.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
};

/// Wraps every join in a [`CooperativeExec`] (once: a join already under one is left alone); runs after DataFusion's own physical optimizer
/// rules, before the plan is split into stages.
#[derive(Debug, Default)]
pub(crate) struct YieldingJoins;

fn is_join(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<NestedLoopJoinExec>()
        || plan.is::<CrossJoinExec>()
        || plan.is::<HashJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
}

impl PhysicalOptimizerRule for YieldingJoins {
    fn name(&self) -> &str {
        "quiver_yielding_joins"
    }

    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = plan
            .transform_up(|node| {
                if node.is::<CooperativeExec>() {
                    return Ok(Transformed::no(node));
                }
                let wrap = node.children().iter().any(|child| is_join(child.as_ref()));
                if !wrap {
                    return Ok(Transformed::no(node));
                }
                let children = node
                    .children()
                    .into_iter()
                    .map(|child| {
                        if is_join(child.as_ref()) {
                            Arc::new(CooperativeExec::new(Arc::clone(child)))
                                as Arc<dyn ExecutionPlan>
                        } else {
                            Arc::clone(child)
                        }
                    })
                    .collect();
                Ok(Transformed::yes(replace_children_if_necessary(
                    node, children,
                )?))
            })?
            .data;
        Ok(if is_join(plan.as_ref()) {
            Arc::new(CooperativeExec::new(plan))
        } else {
            plan
        })
    }

    fn schema_check(&self) -> bool {
        true
    }
}
