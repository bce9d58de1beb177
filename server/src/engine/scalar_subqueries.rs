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
//! * only subqueries without outer references, and of those only the ones worth it
//!   ([`to_run_first`]: used more than once, or compared with for equality), run first; the
//!   others, and correlated ones, are decorrelated into joins, as before;
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
use datafusion::logical_expr::{BinaryExpr, Expr, LogicalPlan, Operator, Subquery};
use futures::{Stream, StreamExt};

/// How many of one query's scalar subqueries run at once.
pub(super) const AT_ONCE: usize = 16;

/// Whether `plan` (its subqueries included) has a scalar subquery at all, run first or joined.
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

/// The uncorrelated scalar subqueries of `plan`'s own expressions (a plan as SQL planned it,
/// before the optimizer) whose values are worth more as constants than as joins, distinct, in
/// the order they first appear:
/// * one the query uses more than once (TPC-DS q14 compares with one average in three places):
///   run first it runs once, joined it runs once per use;
/// * one a column is compared with for equality (`d_month_seq = (SELECT …)`): as a constant it
///   prunes files, row groups and pages, and the optimizer knows the selectivity.
///
/// The others stay subqueries, which the optimizer joins: the one row is computed inside the
/// query's plan, in parallel with the rest, without a run of its own. Subqueries nested in one
/// are left to its own planning, those nested in correlated subqueries to the optimizer's joins.
pub(super) fn to_run_first(plan: &LogicalPlan) -> Vec<Subquery> {
    // Each distinct subquery with its number of uses and whether a column equals it.
    let mut found: Vec<(Subquery, usize, bool)> = Vec::new();
    fn entry<'a>(
        found: &'a mut Vec<(Subquery, usize, bool)>,
        sq: &Subquery,
    ) -> &'a mut (Subquery, usize, bool) {
        let at = match found.iter().position(|(s, _, _)| s == sq) {
            Some(at) => at,
            None => {
                found.push((sq.clone(), 0, false));
                found.len() - 1
            }
        };
        &mut found[at]
    }
    // The closures never fail.
    let _ = plan.apply(|node| {
        for expr in node.expressions() {
            let _ = expr.apply(|e| {
                match e {
                    Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::Eq,
                        right,
                    }) => {
                        for (side, other) in [(left, right), (right, left)] {
                            if let Expr::ScalarSubquery(sq) = side.as_ref()
                                && sq.outer_ref_columns.is_empty()
                                && !matches!(other.as_ref(), Expr::ScalarSubquery(_))
                            {
                                entry(&mut found, sq).2 = true;
                            }
                        }
                    }
                    // Every use is counted here, those compared with too.
                    Expr::ScalarSubquery(sq) if sq.outer_ref_columns.is_empty() => {
                        entry(&mut found, sq).1 += 1;
                    }
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
        .into_iter()
        .filter(|(_, uses, equality)| *uses > 1 || *equality)
        .map(|(sq, _, _)| sq)
        .collect()
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
    async fn runs_first_the_subqueries_used_twice_or_compared_for_equality() {
        let ctx = context().await;
        let sql = "SELECT k FROM t WHERE v > (SELECT avg(v) FROM t) \
                   AND k < (SELECT avg(v) FROM t) \
                   AND k = (SELECT min(k) FROM t) \
                   AND v < (SELECT max(v) FROM t) \
                   AND v = (SELECT max(i.v) FROM t i WHERE i.k = t.k)";
        let plan = logical(&ctx, sql).await;
        assert!(any(&plan));
        let first = to_run_first(&plan);
        // `avg(v)` (used twice) and `min(k)` (equality), in the order they appear; `max(v)` (once,
        // in a range) stays a join, as does the correlated one.
        let texts: Vec<String> = first
            .iter()
            .map(|sq| sq.subquery.display().to_string())
            .collect();
        assert_eq!(first.len(), 2, "{texts:?}");
        assert!(
            texts[0].contains("avg") && texts[1].contains("min"),
            "{texts:?}"
        );
        // Quiver's optimizer joins all the others.
        assert!(!any(&ctx
            .state()
            .optimize(&substitute(plan.clone(), &[]).unwrap())
            .unwrap()));
        assert!(to_run_first(&logical(&ctx, "SELECT k FROM t WHERE v > 1").await).is_empty());
    }

    /// Runs `sql` with the subqueries [`to_run_first`] picks replaced by their values (the rest
    /// joined), and as DataFusion runs it with Quiver's settings (all joined).
    async fn both_ways(ctx: &SessionContext, sql: &str) -> (usize, String, String) {
        let plan = logical(ctx, sql).await;
        let mut values = Vec::new();
        for sq in to_run_first(&plan) {
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
        let substituted = substitute(plan.clone(), &values).unwrap();
        assert_eq!(
            substituted.schema().field_names(),
            plan.schema().field_names()
        );
        let got = ctx.execute_logical_plan(substituted).await.unwrap();
        let got = got.collect().await.unwrap();
        let want = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let text = |b| {
            datafusion::arrow::util::pretty::pretty_format_batches(b)
                .unwrap()
                .to_string()
        };
        (values.len(), text(&got), text(&want))
    }

    #[tokio::test]
    async fn substituted_plans_keep_names_and_answer_as_before() {
        let ctx = context().await;
        // All three run first (each used twice), named and unnamed.
        let sql = "SELECT k, (SELECT max(v) FROM t) AS top, (SELECT min(v) FROM t) FROM t \
                   WHERE v >= (SELECT avg(v) FROM t) AND v <= (SELECT max(v) FROM t) \
                   AND v >= (SELECT min(v) FROM t) AND k > (SELECT avg(v) FROM t) - 100 \
                   ORDER BY k";
        let (ran_first, got, want) = both_ways(&ctx, sql).await;
        assert_eq!(ran_first, 3);
        assert_eq!(got, want);
        // One runs first (equality), the other stays a join.
        let sql = "SELECT k FROM t WHERE k = (SELECT min(k) FROM t) OR v > (SELECT avg(v) FROM t) \
                   ORDER BY k";
        let (ran_first, got, want) = both_ways(&ctx, sql).await;
        assert_eq!(ran_first, 1);
        assert_eq!(got, want);
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
