//! The `GetXdbcTypeInfo` answer: the SQL types Quiver accepts, for JDBC's `getTypeInfo` and ODBC's
//! `SQLGetTypeInfo` (Power BI's generic ODBC path calls it).

use arrow_flight::sql::metadata::{XdbcTypeInfo, XdbcTypeInfoData, XdbcTypeInfoDataBuilder};
use arrow_flight::sql::{Nullable, Searchable, XdbcDataType};

use crate::error::{QuiverError, Result};

fn entry(name: &str, data_type: XdbcDataType, column_size: i32) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.to_string(),
        data_type,
        column_size: Some(column_size),
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: false,
        searchable: Searchable::Basic,
        unsigned_attribute: None,
        fixed_prec_scale: false,
        auto_increment: None,
        local_type_name: Some(name.to_string()),
        minimum_scale: None,
        maximum_scale: None,
        sql_data_type: data_type,
        datetime_subcode: None,
        num_prec_radix: None,
        interval_precision: None,
    }
}

fn numeric(name: &str, data_type: XdbcDataType, digits: i32) -> XdbcTypeInfo {
    XdbcTypeInfo {
        unsigned_attribute: Some(false),
        num_prec_radix: Some(10),
        auto_increment: Some(false),
        ..entry(name, data_type, digits)
    }
}

fn quoted(name: &str, data_type: XdbcDataType, prefix: &str) -> XdbcTypeInfo {
    XdbcTypeInfo {
        literal_prefix: Some(prefix.to_string()),
        literal_suffix: Some("'".to_string()),
        ..entry(name, data_type, i32::MAX)
    }
}

/// Builds the type table, in the order of the XDBC data type codes as JDBC expects.
pub(super) fn xdbc_type_info() -> Result<XdbcTypeInfoData> {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(numeric("BIGINT", XdbcDataType::XdbcBigint, 19));
    b.append(numeric("TINYINT", XdbcDataType::XdbcTinyint, 3));
    b.append(entry("BOOLEAN", XdbcDataType::XdbcBit, 1));
    b.append(quoted("BYTEA", XdbcDataType::XdbcVarbinary, "X'"));
    b.append(XdbcTypeInfo {
        create_params: Some(vec!["precision".into(), "scale".into()]),
        fixed_prec_scale: true,
        minimum_scale: Some(0),
        maximum_scale: Some(38),
        ..numeric("DECIMAL", XdbcDataType::XdbcDecimal, 38)
    });
    b.append(numeric("INTEGER", XdbcDataType::XdbcInteger, 10));
    b.append(numeric("SMALLINT", XdbcDataType::XdbcSmallint, 5));
    b.append(numeric("REAL", XdbcDataType::XdbcReal, 7));
    b.append(numeric("DOUBLE", XdbcDataType::XdbcDouble, 15));
    b.append(XdbcTypeInfo {
        case_sensitive: true,
        searchable: Searchable::Full,
        ..quoted("VARCHAR", XdbcDataType::XdbcVarchar, "'")
    });
    b.append(quoted("DATE", XdbcDataType::XdbcDate, "DATE '"));
    b.append(quoted("TIME", XdbcDataType::XdbcTime, "TIME '"));
    b.append(quoted(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        "TIMESTAMP '",
    ));
    b.build()
        .map_err(|e| QuiverError::Internal(format!("XdbcTypeInfo: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_table_builds_and_filters() {
        let data = xdbc_type_info().unwrap();
        assert_eq!(data.record_batch(None).unwrap().num_rows(), 13);
        let varchar = data.record_batch(XdbcDataType::XdbcVarchar as i32).unwrap();
        assert_eq!(varchar.num_rows(), 1);
    }
}
