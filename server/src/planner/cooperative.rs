//! Joins yield to the scheduler.
//!
//! DataFusion streams give Tokio's scheduler a turn only when a budget of record batches is
//! spent, and it counts batches where data enters a pipeline (scans, exchanges). A join can emit
//! thousands of output batches per input batch (a nested-loop join over two large inputs never
//! asks its inputs for more), so the task driving it would keep a runtime thread for as long as it
//! runs: the executor could not answer its status RPC, notice that a query was cancelled, or drop
//! the query's streams. [`YieldingJoins`] puts a [`CooperativeExec`] above every join, so each
//! batch a join produces spends the budget and a cancelled query stops at the next batch.
//!
//! The wrappers do not travel: a plan sent to an executor goes without them ([`strip`]) and the
//! executor puts them back where they were ([`restore`]). prost decodes at most 100 levels of
//! nested messages and each wrapper costs two, so a deep stage (TPC-DS q64 in one task: some 20
//! joins in a chain) failed to decode with them.

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

/// `plan` without the [`CooperativeExec`]s directly above its joins: what is sent to an executor.
pub(crate) fn strip(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(plan
        .transform_up(|node| {
            Ok(match node.downcast_ref::<CooperativeExec>() {
                Some(coop) if is_join(coop.input().as_ref()) => {
                    Transformed::yes(Arc::clone(coop.input()))
                }
                _ => Transformed::no(node),
            })
        })?
        .data)
}

/// A [`strip`]ped plan with its joins' [`CooperativeExec`]s back: the shape the coordinator
/// planned (so per-task metrics line up with its plan).
pub(crate) fn restore(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    YieldingJoins.optimize(plan, &ConfigOptions::default())
}

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

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;

    use super::*;

    fn count_wrappers(plan: &Arc<dyn ExecutionPlan>) -> usize {
        let mut n = 0;
        plan.apply(|node| {
            n += usize::from(node.is::<CooperativeExec>());
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .expect("walk");
        n
    }

    #[tokio::test]
    async fn stripped_plans_are_restored_to_the_shape_planned() {
        let ctx = SessionContext::new();
        for t in ["a", "b", "c"] {
            ctx.sql(&format!(
                "CREATE TABLE {t} AS SELECT * FROM (VALUES (1, 'x'), (2, 'y')) v(k, s)"
            ))
            .await
            .expect("create")
            .collect()
            .await
            .expect("create");
        }
        let plan = ctx
            .sql("SELECT * FROM a JOIN b ON a.k = b.k JOIN c ON b.k = c.k CROSS JOIN a AS d")
            .await
            .expect("plan")
            .create_physical_plan()
            .await
            .expect("physical plan");
        let planned = YieldingJoins
            .optimize(plan, &ConfigOptions::default())
            .expect("wrap");
        let wrappers = count_wrappers(&planned);
        assert!(
            wrappers >= 3,
            "{}",
            displayable(planned.as_ref()).indent(false)
        );

        let stripped = strip(Arc::clone(&planned)).expect("strip");
        assert_eq!(count_wrappers(&stripped), 0);
        let restored = restore(stripped).expect("restore");
        assert_eq!(
            displayable(restored.as_ref()).indent(false).to_string(),
            displayable(planned.as_ref()).indent(false).to_string()
        );
    }
}
