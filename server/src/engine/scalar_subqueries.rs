//! Uncorrelated scalar subqueries, run before the query that uses them.
//!
//! DataFusion runs such a subquery inside the query's own plan (`ScalarSubqueryExec`) and hands
//! its value to the rest of the plan through in-process state, which cannot cross stages; with
//! that off it joins the subquery's one row to the query's rows instead, which hides the value
//! from every scan. Quiver runs each one first, as a supervised query of its own on the cluster
//! ([`super::run::PlanRunner`]), and plans the query with the value as a literal: scans then
//! prune files, row groups and pages with it as with any constant (`d_month_seq = (SELECT …)`
//! reads one month of sales).
//!
//! Contract:
//! * only subqueries without outer references are run first; correlated ones are decorrelated
//!   into joins, as before;
//! * SQL's rules hold: no row is a typed NULL, more than one row is an error (the run stops at
//!   the second row);
//! * a query's subqueries run [`AT_ONCE`] at a time (TPC-DS q9 has 15), each a run of its own
//!   with its own memory budget; a subquery nested in one runs when that one is planned;
//! * the rewritten query keeps its column names (a projected `(SELECT max(x) FROM t)` is still
//!   called that).

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::FieldRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Expr, LogicalPlan, Subquery};
use futures::{Stream, StreamExt};

/// How many of one query's scalar subqueries run at once.
pub(super) const AT_ONCE: usize = 16;

/// Whether `plan` (its subqueries included) has a scalar subquery at all: the cheap check that
/// spares other queries a second optimizer pass.
pub(super) fn any(plan: &LogicalPlan) -> bool {
    let mut found = false;
    // The closures never fail.
    let _ = plan.apply_with_subqueries(|node| {
        for expr in node.expressions() {
            let _ = expr.apply(|e| {
                found |= matches!(e, Expr::ScalarSubquery(_));
                Ok(if found {
                    TreeNodeRecursion::Stop
                } else {
                    TreeNodeRecursion::Continue
                })
            });
        }
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The distinct uncorrelated scalar subqueries of `plan`'s own expressions (a plan as SQL planned
/// it, before the optimizer), in the order they first appear; those nested in them are left to
/// their own planning, and those nested in correlated subqueries to the optimizer's joins.
pub(super) fn uncorrelated(plan: &LogicalPlan) -> Vec<Subquery> {
    let mut found: Vec<Subquery> = Vec::new();
    // The closures never fail.
    let _ = plan.apply(|node| {
        for expr in node.expressions() {
            let _ = expr.apply(|e| {
                if let Expr::ScalarSubquery(sq) = e
                    && sq.outer_ref_columns.is_empty()
                    && !found.contains(sq)
                {
                    found.push(sq.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The one column of `subquery`'s result: its type, the type its value has.
pub(super) fn value_field(subquery: &Subquery) -> Result<FieldRef> {
    let fields = subquery.subquery.schema().fields();
    match fields.len() {
        1 => Ok(std::sync::Arc::clone(&fields[0])),
        n => Err(DataFusionError::Plan(format!(
            "a scalar subquery must return one column, this one returns {n}"
        ))),
    }
}

/// The value of a scalar subquery whose result is `batches` of one `field` column: its one row,
/// a typed NULL when there is none, an error at a second row (reading stops there, which drops
/// the stream and so stops the subquery's run).
pub(super) async fn single_value<E>(
    field: &FieldRef,
    batches: impl Stream<Item = std::result::Result<RecordBatch, E>>,
) -> std::result::Result<ScalarValue, E>
where
    E: From<DataFusionError>,
{
    let mut batches = std::pin::pin!(batches);
    let mut value = None;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        if value.is_some() || batch.num_rows() > 1 {
            return Err(DataFusionError::Execution(
                "a scalar subquery returned more than one row".into(),
            )
            .into());
        }
        value = Some(ScalarValue::try_from_array(batch.column(0), 0)?);
    }
    match value {
        Some(value) => Ok(value),
        None => Ok(ScalarValue::try_from(field.data_type())?),
    }
}

/// `plan` with each subquery of `values` replaced by its value, every expression keeping its
/// name and every node's schema recomputed (a literal may be non-nullable where the subquery
/// was nullable).
pub(super) fn substitute(
    plan: LogicalPlan,
    values: &[(Subquery, ScalarValue)],
) -> Result<LogicalPlan> {
    plan.transform_up(|node| {
        let names = NamePreserver::new(&node);
        let rewritten = node.map_expressions(|expr| {
            let name = names.save(&expr);
            let rewritten = expr.transform_up(|e| {
                let Expr::ScalarSubquery(sq) = &e else {
                    return Ok(Transformed::no(e));
                };
                match values.iter().find(|(s, _)| s == sq) {
                    Some((_, value)) => Ok(Transformed::yes(Expr::Literal(value.clone(), None))),
                    None => Ok(Transformed::no(e)),
                }
            })?;
            Ok(if rewritten.transformed {
                rewritten.update_data(|e| name.restore(e))
            } else {
                rewritten
            })
        })?;
        // A child's schema may have changed even where this node's expressions did not.
        Ok(Transformed::yes(rewritten.data.recompute_schema()?))
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::SessionContext;
    use futures::stream;

    use super::*;

    /// A context with Quiver's settings, which turn uncorrelated scalar subqueries into joins.
    async fn context() -> SessionContext {
        let ctx =
            SessionContext::new_with_config(crate::planner::settings::session_config(1).unwrap());
        ctx.sql("CREATE TABLE t (k BIGINT, v BIGINT) AS VALUES (1, 10), (2, 20), (3, 30)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        ctx
    }

    async fn logical(ctx: &SessionContext, sql: &str) -> LogicalPlan {
        ctx.state().create_logical_plan(sql).await.unwrap()
    }

    #[tokio::test]
    async fn finds_uncorrelated_subqueries_once_and_leaves_correlated_ones() {
        let ctx = context().await;
        let sql = "SELECT k FROM t WHERE v > (SELECT avg(v) FROM t) \
                   AND k < (SELECT avg(v) FROM t) \
                   AND v = (SELECT max(i.v) FROM t i WHERE i.k = t.k)";
        let plan = logical(&ctx, sql).await;
        assert!(any(&plan));
        let found = uncorrelated(&plan);
        // Both uses of `avg(v)` are one subquery; the correlated one is left to the optimizer.
        assert_eq!(found.len(), 1, "{}", plan.display_indent());
        // Which joins them all (Quiver's settings).
        assert!(!any(&ctx.state().optimize(&plan).unwrap()));
        assert!(!any(&logical(&ctx, "SELECT k FROM t WHERE v > 1").await));
    }

    #[tokio::test]
    async fn substituted_plans_keep_names_and_answer_as_before() {
        let ctx = context().await;
        let sql = "SELECT k, (SELECT max(v) FROM t) AS top, (SELECT min(v) FROM t) \
                   FROM t WHERE v >= (SELECT avg(v) FROM t) ORDER BY k";
        let plan = logical(&ctx, sql).await;
        let mut values = Vec::new();
        for sq in uncorrelated(&plan) {
            let field = value_field(&sq).unwrap();
            let df = ctx
                .execute_logical_plan(sq.subquery.as_ref().clone())
                .await
                .unwrap();
            let value = single_value(&field, df.execute_stream().await.unwrap())
                .await
                .unwrap();
            values.push((sq, value));
        }
        assert_eq!(values.len(), 3);
        let substituted = substitute(plan.clone(), &values).unwrap();
        assert!(!any(&substituted));
        assert_eq!(
            substituted.schema().field_names(),
            plan.schema().field_names()
        );
        let got = ctx
            .execute_logical_plan(substituted)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let want = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        assert_eq!(
            datafusion::arrow::util::pretty::pretty_format_batches(&got)
                .unwrap()
                .to_string(),
            datafusion::arrow::util::pretty::pretty_format_batches(&want)
                .unwrap()
                .to_string()
        );
    }

    fn batch(values: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
    }

    #[tokio::test]
    async fn one_row_is_the_value_none_is_null_two_are_an_error() {
        let field: FieldRef = Arc::new(Field::new("v", DataType::Int64, true));
        let one = stream::iter([Ok::<_, DataFusionError>(batch(&[])), Ok(batch(&[7]))]);
        assert_eq!(
            single_value(&field, one).await.unwrap(),
            ScalarValue::Int64(Some(7))
        );
        let none = stream::iter([Ok::<_, DataFusionError>(batch(&[]))]);
        assert_eq!(
            single_value(&field, none).await.unwrap(),
            ScalarValue::Int64(None)
        );
        // The second row ends the read: the third batch (an error) is never polled.
        let two = stream::iter([
            Ok(batch(&[1])),
            Ok(batch(&[2])),
            Err(DataFusionError::Internal("read too far".into())),
        ]);
        let err = single_value(&field, two).await.unwrap_err();
        assert!(err.to_string().contains("more than one row"), "{err}");
    }
}
