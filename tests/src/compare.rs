//! Result comparison: same columns, same rows (in order when the query orders them), floats
//! within a relative tolerance.

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};

const FLOAT_TOLERANCE: f64 = 1e-9;

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Float(f64),
    Text(String),
}

impl Cell {
    /// Sort key: floats rounded so tiny differences do not reorder rows.
    fn key(&self) -> String {
        match self {
            Cell::Null => "\u{0}NULL".into(),
            Cell::Float(f) => format!("{f:.4}"),
            Cell::Text(s) => s.clone(),
        }
    }

    fn matches(&self, other: &Cell) -> bool {
        match (self, other) {
            // NaN (0/0 in a ratio, as in TPC-DS q12) is a value both engines must agree on.
            (Cell::Float(a), Cell::Float(b)) => {
                a == b
                    || (a.is_nan() && b.is_nan())
                    || (a - b).abs() <= FLOAT_TOLERANCE * a.abs().max(b.abs()).max(1.0)
            }
            (a, b) => a == b,
        }
    }
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let options = FormatOptions::default();
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formatter"))
            .collect();
        for row in 0..batch.num_rows() {
            let mut cells = Vec::with_capacity(batch.num_columns());
            for (col, formatter) in batch.columns().iter().zip(&formatters) {
                let cell = if col.is_null(row) {
                    Cell::Null
                } else {
                    let text = formatter.value(row).to_string();
                    match col.data_type() {
                        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                            Cell::Float(text.parse().expect("float"))
                        }
                        _ => Cell::Text(text),
                    }
                };
                cells.push(cell);
            }
            out.push(cells);
        }
    }
    out
}

fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .first()
        .map(|b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Compares `actual` with `expected`; `Err` describes the first difference.
pub fn compare(
    expected: &[RecordBatch],
    actual: &[RecordBatch],
    ordered: bool,
) -> Result<(), String> {
    let (expected_names, actual_names) = (column_names(expected), column_names(actual));
    if !expected_names.is_empty() && !actual_names.is_empty() && expected_names != actual_names {
        return Err(format!(
            "columns differ: expected {expected_names:?}, got {actual_names:?}"
        ));
    }
    let mut expected = rows(expected);
    let mut actual = rows(actual);
    if expected.len() != actual.len() {
        return Err(format!(
            "expected {} rows, got {}",
            expected.len(),
            actual.len()
        ));
    }
    if !ordered {
        let sort = |rows: &mut Vec<Vec<Cell>>| {
            rows.sort_by_cached_key(|r| r.iter().map(Cell::key).collect::<Vec<_>>())
        };
        sort(&mut expected);
        sort(&mut actual);
    }
    for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
        if e.len() != a.len() || !e.iter().zip(a).all(|(x, y)| x.matches(y)) {
            return Err(format!(
                "row {i} differs:\n  expected {e:?}\n  got      {a:?}"
            ));
        }
    }
    Ok(())
}

/// Whether the statement's outermost query orders its rows.
pub fn is_ordered(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains("order by")
}

/// What the outermost ORDER BY of a statement sorts on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SortKey {
    /// A result column, by name (an unqualified or qualified column, or an alias).
    Name(String),
    /// A result column, by position (1-based).
    Position(usize),
    /// Anything else: an expression, which the result does not show.
    Other,
}

/// How the outermost query of a statement orders and cuts its rows (parsed with DataFusion's
/// SQL parser).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outer {
    keys: Vec<SortKey>,
    limit: Option<usize>,
}

fn outer(sql: &str) -> Option<Outer> {
    use datafusion::sql::sqlparser::ast::{
        Expr, LimitClause, OrderByKind, Statement, Value, ValueWithSpan,
    };
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    let statements = Parser::parse_sql(&GenericDialect {}, sql).ok()?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return None;
    };
    let number = |expr: &Expr| match expr {
        Expr::Value(ValueWithSpan {
            value: Value::Number(n, _),
            ..
        }) => n.parse::<usize>().ok(),
        _ => None,
    };
    let keys = match query.order_by.as_ref().map(|o| &o.kind) {
        None => Vec::new(),
        Some(OrderByKind::All(_)) => return None,
        Some(OrderByKind::Expressions(exprs)) => exprs
            .iter()
            .map(|e| match &e.expr {
                Expr::Identifier(ident) => SortKey::Name(ident.value.clone()),
                Expr::CompoundIdentifier(parts) => parts
                    .last()
                    .map_or(SortKey::Other, |p| SortKey::Name(p.value.clone())),
                other => number(other).map_or(SortKey::Other, SortKey::Position),
            })
            .collect(),
    };
    let limit = match &query.limit_clause {
        None => None,
        Some(LimitClause::LimitOffset {
            limit: None,
            offset: None,
            limit_by,
        }) if limit_by.is_empty() => None,
        Some(LimitClause::LimitOffset {
            limit: Some(expr),
            offset: None,
            limit_by,
        }) if limit_by.is_empty() => Some(number(expr)?),
        Some(_) => return None,
    };
    if query.fetch.is_some() {
        return None;
    }
    Some(Outer { keys, limit })
}

/// Compares the result of `sql` on two engines, as far as SQL defines it. Without an outermost
/// ORDER BY the rows are compared as a multiset. With one whose keys are all result columns
/// (by name or position), the key values must match row by row, and the rows of each run of
/// equal keys as a multiset (SQL leaves the order among ties open); where a LIMIT may have cut
/// the last run (as many rows as the limit), which of its tied rows made the cut is open too,
/// so only its keys are compared. An ORDER BY on anything else is compared row by row. A LIMIT
/// without ORDER BY that may have cut rows is reported as not comparable, never passed.
pub fn compare_statement(
    expected: &[RecordBatch],
    actual: &[RecordBatch],
    sql: &str,
) -> Result<(), String> {
    let Some(outer) = outer(sql) else {
        return compare(expected, actual, is_ordered(sql));
    };
    let names = column_names(expected);
    let mut keys = Vec::with_capacity(outer.keys.len());
    for key in &outer.keys {
        let index = match key {
            SortKey::Name(name) => names.iter().position(|n| n.eq_ignore_ascii_case(name)),
            SortKey::Position(p) => p.checked_sub(1).filter(|&i| i < names.len()),
            SortKey::Other => None,
        };
        match index {
            Some(i) => keys.push(i),
            // Ties cannot be told apart: the strictest comparison.
            None => return compare(expected, actual, true),
        }
    }
    let cut = outer.limit.is_some_and(|limit| {
        let rows: usize = expected.iter().map(RecordBatch::num_rows).sum();
        rows >= limit
    });
    if keys.is_empty() {
        if cut {
            return Err(format!(
                "LIMIT {} without ORDER BY cut the result: which rows is open, so they are not comparable",
                outer.limit.unwrap_or_default()
            ));
        }
        return compare(expected, actual, false);
    }
    // Columns and row count first.
    compare_shape(expected, actual)?;
    let expected = rows(expected);
    let actual = rows(actual);
    if let Some(i) = (0..expected.len()).find(|&i| expected[i].len() != actual[i].len()) {
        return Err(format!(
            "row {i}: expected {} columns, got {}",
            expected[i].len(),
            actual[i].len()
        ));
    }
    let key_of = |row: &[Cell]| keys.iter().map(|&k| row[k].clone()).collect::<Vec<_>>();
    let same =
        |a: &[Cell], b: &[Cell]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.matches(y));
    let mut start = 0;
    while start < expected.len() {
        let key = key_of(&expected[start]);
        let mut end = start + 1;
        while end < expected.len() && same(&key_of(&expected[end]), &key) {
            end += 1;
        }
        for (i, row) in actual.iter().enumerate().take(end).skip(start) {
            if !same(&key_of(row), &key) {
                return Err(format!(
                    "row {i}: sort key differs:\n  expected {key:?}\n  got      {:?}\n  (row {row:?})",
                    key_of(row),
                ));
            }
        }
        let last = end == expected.len();
        if !(last && cut) {
            let mut e = expected[start..end].to_vec();
            let mut a = actual[start..end].to_vec();
            let sort = |rows: &mut Vec<Vec<Cell>>| {
                rows.sort_by_cached_key(|r| r.iter().map(Cell::key).collect::<Vec<_>>())
            };
            sort(&mut e);
            sort(&mut a);
            for (j, (e, a)) in e.iter().zip(&a).enumerate() {
                if !same(e, a) {
                    return Err(format!(
                        "rows {start}..{end} (sort key {key:?}) differ, at {j} of them sorted:\n  expected {e:?}\n  got      {a:?}"
                    ));
                }
            }
        }
        start = end;
    }
    Ok(())
}

/// Same column names (when both sides have a schema) and the same number of rows.
fn compare_shape(expected: &[RecordBatch], actual: &[RecordBatch]) -> Result<(), String> {
    let (expected_names, actual_names) = (column_names(expected), column_names(actual));
    if !expected_names.is_empty() && !actual_names.is_empty() && expected_names != actual_names {
        return Err(format!(
            "columns differ: expected {expected_names:?}, got {actual_names:?}"
        ));
    }
    let count = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
    if count(expected) != count(actual) {
        return Err(format!(
            "expected {} rows, got {}",
            count(expected),
            count(actual)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array};
    use std::sync::Arc;

    fn batch(ints: Vec<i32>, floats: Vec<f64>) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("i", Arc::new(Int32Array::from(ints)) as _),
            ("f", Arc::new(Float64Array::from(floats)) as _),
        ])
        .unwrap()
    }

    #[test]
    fn tolerant_and_order_aware() {
        let a = batch(vec![1, 2], vec![0.1 + 0.2, 5.0]);
        let b = batch(vec![2, 1], vec![5.0, 0.3]);
        let a = std::slice::from_ref(&a);
        let b = std::slice::from_ref(&b);
        assert!(compare(a, b, false).is_ok());
        assert!(compare(a, b, true).is_err());
        let c = batch(vec![1, 2], vec![0.31, 5.0]);
        assert!(compare(a, &[c], false).is_err());
        assert!(compare(a, &[a[0].slice(0, 1)], false).is_err());
        let nan = batch(vec![1], vec![f64::NAN]);
        assert!(compare(std::slice::from_ref(&nan), std::slice::from_ref(&nan), true).is_ok());
        assert!(compare(&[nan], &[batch(vec![1], vec![0.0])], true).is_err());
    }

    #[test]
    fn ties_are_open_only_where_sql_leaves_them_open() {
        // Sorted on `i`: ties at 1 (in the middle) and at 3 (at a LIMIT 4 cut).
        let expected = [batch(vec![1, 1, 2, 3], vec![10.0, 11.0, 12.0, 13.0])];
        let swapped_tie = [batch(vec![1, 1, 2, 3], vec![11.0, 10.0, 12.0, 13.0])];
        let other_cut = [batch(vec![1, 1, 2, 3], vec![10.0, 11.0, 12.0, 14.0])];
        let wrong_middle = [batch(vec![1, 1, 2, 3], vec![10.0, 11.0, 15.0, 13.0])];
        let wrong_key = [batch(vec![1, 1, 2, 4], vec![10.0, 11.0, 12.0, 13.0])];
        let limited = "SELECT i, f FROM t ORDER BY i LIMIT 4";
        let by_position = "SELECT i, f FROM t ORDER BY 1 DESC LIMIT 4";
        let unlimited = "SELECT i, f FROM t ORDER BY t.i";
        for sql in [limited, by_position, unlimited] {
            assert!(
                compare_statement(&expected, &expected, sql).is_ok(),
                "{sql}"
            );
            assert!(
                compare_statement(&expected, &swapped_tie, sql).is_ok(),
                "{sql}"
            );
            assert!(
                compare_statement(&expected, &wrong_middle, sql).is_err(),
                "{sql}"
            );
            assert!(
                compare_statement(&expected, &wrong_key, sql).is_err(),
                "{sql}"
            );
            assert!(
                compare_statement(&expected, &[expected[0].slice(0, 3)], sql).is_err(),
                "{sql}"
            );
        }
        // Which tied row made the cut is open only when the LIMIT cut.
        assert!(compare_statement(&expected, &other_cut, limited).is_ok());
        assert!(
            compare_statement(
                &expected,
                &other_cut,
                "SELECT i, f FROM t ORDER BY i LIMIT 5"
            )
            .is_err()
        );
        assert!(compare_statement(&expected, &other_cut, unlimited).is_err());
        // ORDER BY an expression: row by row.
        let by_expr = "SELECT i, f FROM t ORDER BY i + 1 LIMIT 4";
        assert!(compare_statement(&expected, &expected, by_expr).is_ok());
        assert!(compare_statement(&expected, &swapped_tie, by_expr).is_err());
        // No ORDER BY: a multiset, unless a LIMIT cut it.
        let reversed = [batch(vec![3, 2, 1, 1], vec![13.0, 12.0, 11.0, 10.0])];
        assert!(compare_statement(&expected, &reversed, "SELECT i, f FROM t").is_ok());
        assert!(compare_statement(&expected, &reversed, "SELECT i, f FROM t LIMIT 10").is_ok());
        assert!(compare_statement(&expected, &expected, "SELECT i, f FROM t LIMIT 4").is_err());
    }
}
