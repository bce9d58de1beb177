//! The `GetSqlInfo` answer.
//!
//! JDBC-based tools (DBeaver, Tableau, IntelliJ) build `DatabaseMetaData` from one
//! `GetSqlInfo(info=[])` call and cast each value to a fixed Java type: a missing key is a
//! NullPointerException in drivers ≤ 18.3 and a value in the wrong union child is a
//! ClassCastException in every version. So every id below is one JDBC reads, in the child it
//! expects (`&str` → string, `bool` → bool, `i64` → bigint, `i32` → int32 bitmask, string lists,
//! the int32 map), and no id outside FlightSql.proto is sent. Transactions are reported as not
//! supported, so ADBC keeps autocommit on.

use std::collections::HashMap;

use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};

use crate::error::{QuiverError, Result};

const NUMERIC_FUNCTIONS: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "cos", "degrees", "exp", "floor", "ln",
    "log", "log10", "log2", "pi", "power", "radians", "random", "round", "signum", "sin", "sqrt",
    "tan", "trunc",
];
const STRING_FUNCTIONS: &[&str] = &[
    "ascii",
    "btrim",
    "char_length",
    "chr",
    "concat",
    "concat_ws",
    "initcap",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "octet_length",
    "position",
    "repeat",
    "replace",
    "reverse",
    "right",
    "rpad",
    "rtrim",
    "split_part",
    "starts_with",
    "strpos",
    "substr",
    "substring",
    "translate",
    "trim",
    "upper",
];
const SYSTEM_FUNCTIONS: &[&str] = &["arrow_typeof", "coalesce", "nullif", "version"];
const DATETIME_FUNCTIONS: &[&str] = &[
    "current_date",
    "current_time",
    "date_bin",
    "date_part",
    "date_trunc",
    "extract",
    "now",
    "to_date",
    "to_timestamp",
    "to_unixtime",
];
const KEYWORDS: &[&str] = &[
    "EXPLAIN", "ANALYZE", "EXTERNAL", "STORED", "LOCATION", "OPTIONS", "PARQUET", "CSV", "JSON",
];

/// Builds the server's SqlInfo table.
pub(super) fn sql_info() -> Result<SqlInfoData> {
    let mut b = SqlInfoDataBuilder::new();
    // Server.
    b.append(0u32, "Quiver");
    b.append(1u32, env!("CARGO_PKG_VERSION"));
    b.append(2u32, "59");
    b.append(3u32, false); // read only
    b.append(4u32, true); // SQL
    b.append(5u32, false); // Substrait
    b.append(8u32, 0i32); // transactions: none
    b.append(9u32, false); // CancelQuery action
    b.append(100u32, 0i32); // statement timeout: none
    b.append(101u32, 0i32); // transaction timeout: none
    // SQL dialect.
    b.append(500u32, false); // CREATE CATALOG
    b.append(501u32, false); // CREATE SCHEMA
    b.append(502u32, true); // CREATE TABLE
    b.append(503u32, 1i32); // identifier case: lowercase
    b.append(504u32, "\"");
    b.append(505u32, 3i32); // quoted identifier case: sensitive
    b.append(506u32, true); // all tables selectable
    b.append(507u32, 1i32); // nulls sorted high
    b.append(508u32, KEYWORDS);
    b.append(509u32, NUMERIC_FUNCTIONS);
    b.append(510u32, STRING_FUNCTIONS);
    b.append(511u32, SYSTEM_FUNCTIONS);
    b.append(512u32, DATETIME_FUNCTIONS);
    b.append(513u32, "\\");
    b.append(514u32, "");
    b.append(515u32, true); // column aliasing
    b.append(516u32, true); // NULL + NULL is NULL
    b.append(517u32, HashMap::<i32, Vec<i32>>::new()); // CONVERT: none
    b.append(518u32, true); // table correlation names
    b.append(519u32, false); // different table correlation names
    b.append(520u32, true); // expressions in ORDER BY
    b.append(521u32, true); // ORDER BY unrelated columns
    b.append(522u32, 3i32); // GROUP BY: unrelated | beyond select
    b.append(523u32, true); // LIKE ... ESCAPE
    b.append(524u32, true); // non-nullable columns
    b.append(525u32, 3i32); // grammar: minimum | core
    b.append(526u32, 1i32); // ANSI-92: entry level
    b.append(527u32, false); // integrity enhancement facility
    b.append(528u32, 2i32); // outer joins: full
    b.append(529u32, "schema");
    b.append(530u32, "procedure");
    b.append(531u32, "catalog");
    b.append(532u32, true); // catalog at start of a qualified name
    b.append(533u32, 0i32); // schema actions
    b.append(534u32, 0i32); // catalog actions
    b.append(535u32, 0i32); // positioned commands
    b.append(536u32, false); // SELECT FOR UPDATE
    b.append(537u32, false); // stored procedures
    b.append(538u32, 15i32); // subqueries: comparisons | EXISTS | IN | quantified
    b.append(539u32, true); // correlated subqueries
    b.append(540u32, 3i32); // UNION | UNION ALL
    for id in 541u32..=555 {
        b.append(id, 0i64); // maximum lengths and counts: no limit
    }
    b.append(556u32, false); // max row size includes blobs
    for id in 557u32..=561 {
        b.append(id, 0i64);
    }
    b.append(562u32, 0i64); // default transaction isolation: none (JDBC reads a long)
    b.append(563u32, false); // transactions
    b.append(564u32, 0i32); // isolation levels
    b.append(565u32, false); // DDL commits a transaction
    b.append(566u32, false); // DDL in transactions ignored
    b.append(567u32, 2i32); // result set types: forward only
    for id in 568u32..=571 {
        b.append(id, 0i32);
    }
    b.append(572u32, false); // batch updates
    b.append(573u32, false); // savepoints
    b.append(574u32, false); // named parameters
    b.append(575u32, false); // locators update copy
    b.append(576u32, false); // stored functions with CALL
    b.build()
        .map_err(|e| QuiverError::Internal(format!("SqlInfo: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, UInt32Array, UnionArray};

    /// The union child (type id) JDBC casts each id to.
    fn expected_child(id: u32) -> i8 {
        match id {
            0 | 1 | 2 | 504 | 513 | 514 | 529 | 530 | 531 => 0,
            541..=555 | 557..=562 => 2,
            8
            | 100
            | 101
            | 503
            | 505
            | 507
            | 522
            | 525
            | 526
            | 528
            | 533..=535
            | 538
            | 540
            | 564
            | 567..=571 => 3,
            508..=512 => 4,
            517 => 5,
            _ => 1,
        }
    }

    #[test]
    fn every_id_in_the_child_jdbc_expects() {
        let data = sql_info().unwrap();
        let batch = data.record_batch(std::iter::empty()).unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<UInt32Array>()
            .unwrap();
        let values = batch
            .column(1)
            .as_any()
            .downcast_ref::<UnionArray>()
            .unwrap();
        assert!(ids.len() > 80);
        for row in 0..ids.len() {
            let id = ids.value(row);
            assert_eq!(values.type_id(row), expected_child(id), "SqlInfo id {id}");
        }
        let ids: Vec<u32> = ids.values().to_vec();
        for required in [0, 1, 504, 513, 526, 562, 563, 508] {
            assert!(ids.contains(&required), "missing {required}");
        }
        assert!(
            !ids.contains(&10) && !ids.contains(&11),
            "bulk-ingest ids break old drivers"
        );
    }
}
