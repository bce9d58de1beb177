//! Arrow types that every Flight SQL client can read.
//!
//! DataFusion produces `Utf8View`/`BinaryView` and dictionary-encoded columns; JDBC ≤ 18.3,
//! flightsql-dbapi and Superset cannot read them. Everything Quiver sends to a client (and the
//! demo data it writes) goes through [`plain_schema`] and [`cast_batch`], which turn views into
//! their plain counterparts and dictionaries into their value type, recursively. The schema a
//! client is promised and the batches it receives are converted by the same functions, so they
//! always agree.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::error::ArrowError;

/// `data_type` with every view and dictionary replaced by a plain type.
pub(crate) fn plain_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::Dictionary(_, value) => plain_type(value),
        DataType::ListView(f) => DataType::List(plain_field(f)),
        DataType::LargeListView(f) => DataType::LargeList(plain_field(f)),
        DataType::List(f) => DataType::List(plain_field(f)),
        DataType::LargeList(f) => DataType::LargeList(plain_field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(plain_field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(plain_field).collect()),
        DataType::Map(f, sorted) => DataType::Map(plain_field(f), *sorted),
        other => other.clone(),
    }
}

fn plain_field(field: &FieldRef) -> FieldRef {
    let data_type = plain_type(field.data_type());
    if &data_type == field.data_type() {
        return Arc::clone(field);
    }
    Arc::new(Field::clone(field).with_data_type(data_type))
}

/// `schema` with `plain_type` applied to every field; names, nullability and metadata kept.
pub fn plain_schema(schema: &Schema) -> SchemaRef {
    let fields: Fields = schema.fields().iter().map(plain_field).collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Casts `batch` to `schema` (which must come from [`plain_schema`] of the batch's own schema or
/// of a schema with the same field types) and labels it with `schema`.
pub fn cast_batch(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    if batch.num_columns() != schema.fields().len() {
        return Err(ArrowError::SchemaError(format!(
            "result has {} columns, its announced schema {}",
            batch.num_columns(),
            schema.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<ArrayRef>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array, StringViewArray};
    use arrow::datatypes::Int32Type;

    #[test]
    fn views_and_dictionaries_become_plain() {
        let schema = Schema::new(vec![
            Field::new("s", DataType::Utf8View, true),
            Field::new(
                "d",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8View)),
                false,
            ),
            Field::new("i", DataType::Int32, false),
        ]);
        let plain = plain_schema(&schema);
        assert_eq!(plain.field(0).data_type(), &DataType::Utf8);
        assert!(plain.field(0).is_nullable());
        assert_eq!(plain.field(1).data_type(), &DataType::Utf8);
        assert!(!plain.field(1).is_nullable());
        assert_eq!(plain.field(2).data_type(), &DataType::Int32);

        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let dict = arrow::compute::cast(
            &dict,
            &DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8View)),
        )
        .unwrap();
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringViewArray::from(vec![Some("x"), None, Some("z")])),
                dict,
                Arc::new(Int32Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let out = cast_batch(&batch, &plain).unwrap();
        assert_eq!(out.schema(), plain);
        assert_eq!(out.num_rows(), 3);
    }
}
