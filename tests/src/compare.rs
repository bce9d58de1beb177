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
            (Cell::Float(a), Cell::Float(b)) => {
                a == b || (a - b).abs() <= FLOAT_TOLERANCE * a.abs().max(b.abs()).max(1.0)
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
    }
}
