//! SQL type names for Arrow columns, as Flight SQL column metadata.
//!
//! JDBC's `getColumns` and Power BI read a column's SQL type from the field metadata
//! `ARROW:FLIGHT:SQL:TYPE_NAME` (and `PRECISION` / `SCALE` for decimals) of the table schemas in
//! `GetTables`; without it they show no type.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

const TYPE_NAME: &str = "ARROW:FLIGHT:SQL:TYPE_NAME";
const PRECISION: &str = "ARROW:FLIGHT:SQL:PRECISION";
const SCALE: &str = "ARROW:FLIGHT:SQL:SCALE";

/// The SQL name of an Arrow type, in DataFusion's dialect.
pub(super) fn sql_type_name(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Null => "NULL",
        DataType::Boolean => "BOOLEAN",
        DataType::Int8 => "TINYINT",
        DataType::Int16 => "SMALLINT",
        DataType::Int32 => "INTEGER",
        DataType::Int64 => "BIGINT",
        DataType::UInt8 => "TINYINT UNSIGNED",
        DataType::UInt16 => "SMALLINT UNSIGNED",
        DataType::UInt32 => "INTEGER UNSIGNED",
        DataType::UInt64 => "BIGINT UNSIGNED",
        DataType::Float16 | DataType::Float32 => "REAL",
        DataType::Float64 => "DOUBLE",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR",
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "BYTEA",
        DataType::Date32 | DataType::Date64 => "DATE",
        DataType::Time32(_) | DataType::Time64(_) => "TIME",
        DataType::Timestamp(_, None) => "TIMESTAMP",
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP WITH TIME ZONE",
        DataType::Duration(_) | DataType::Interval(_) => "INTERVAL",
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => "DECIMAL",
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::ListView(_)
        | DataType::LargeListView(_) => "ARRAY",
        DataType::Struct(_) => "STRUCT",
        DataType::Map(..) => "MAP",
        DataType::Union(..) => "UNION",
        DataType::Dictionary(_, value) => sql_type_name(value),
        DataType::RunEndEncoded(_, values) => sql_type_name(values.data_type()),
    }
}

/// `schema` with the SQL type of every column in its field metadata.
pub(super) fn with_sql_types(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|field| {
            let mut metadata: HashMap<String, String> = field.metadata().clone();
            metadata.insert(TYPE_NAME.into(), sql_type_name(field.data_type()).into());
            if let DataType::Decimal32(p, s)
            | DataType::Decimal64(p, s)
            | DataType::Decimal128(p, s)
            | DataType::Decimal256(p, s) = field.data_type()
            {
                metadata.insert(PRECISION.into(), p.to_string());
                metadata.insert(SCALE.into(), s.to_string());
            }
            Field::clone(field).with_metadata(metadata)
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_carry_precision_and_scale() {
        let schema = Schema::new(vec![
            Field::new("price", DataType::Decimal128(15, 2), false),
            Field::new("name", DataType::Utf8, true),
        ]);
        let typed = with_sql_types(&schema);
        let price = typed.field(0).metadata();
        assert_eq!(price[TYPE_NAME], "DECIMAL");
        assert_eq!(price[PRECISION], "15");
        assert_eq!(price[SCALE], "2");
        assert_eq!(typed.field(1).metadata()[TYPE_NAME], "VARCHAR");
        assert!(!typed.field(1).metadata().contains_key(PRECISION));
    }
}
