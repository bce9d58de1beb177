//! Hive-style partition directories (`col=value/`), shared by the writer and the reader of
//! managed tables, so both agree on every byte of a path.
//!
//! Contract:
//! * a partitioned file lives at `c1=v1/c2=v2/…/file` relative to its table directory, one
//!   directory per partition column, in the table's `partition_by` order, and nothing else in
//!   between;
//! * column names and values are escaped as Hive and Spark do (`FileUtils.escapePathName`): the
//!   characters that break paths or the `name=value` split (`/`, `=`, `%`, `\`, `"`, `'`, `#`,
//!   `?`, `:`, `*`, `[`, `]`, `{`, `^`, control characters, DEL) become `%XX` (upper-case hex);
//!   everything else, non-ASCII included, is kept as is. Decoding accepts any `%XX` (so paths
//!   written by engines that escape more, such as DataFusion, read back) and keeps a `%` that
//!   starts no valid escape;
//! * NULL is written as [`NULL_PARTITION`], and so is the empty string, as Hive does: an empty
//!   directory name component cannot be told from a missing one. Both read back as NULL, and so
//!   does a value that literally is `__HIVE_DEFAULT_PARTITION__`;
//! * only types whose values have one obvious text form are partition columns
//!   ([`check_partition_type`]); the reader turns the text back into the column's type.

use arrow::datatypes::DataType;

use crate::error::{QuiverError, Result};

/// The directory value that stands for NULL (and the empty string), as in Hive and Spark.
pub(crate) const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// The partition directories of one file, e.g. `a=1/b=x%2Fy/`: one `name=value/` per column, in
/// the order given. Empty input gives the empty string (an unpartitioned file sits at the top).
pub(crate) fn partition_dir(values: &[(&str, Option<&str>)]) -> String {
    let mut dir = String::new();
    for (column, value) in values {
        escape_into(&mut dir, column);
        dir.push('=');
        match value {
            Some(value) if !value.is_empty() => escape_into(&mut dir, value),
            _ => dir.push_str(NULL_PARTITION),
        }
        dir.push('/');
    }
    dir
}

/// The decoded partition values, in `columns` order, of a file at `relative_path` (relative to
/// the table directory). [`NULL_PARTITION`] reads as `None`. A path whose directories are not
/// exactly one `column=value` per partition column, in order, is an error: the catalog entry
/// does not describe a file of this table.
pub(crate) fn parse_partition_values(
    relative_path: &str,
    columns: &[String],
) -> Result<Vec<Option<String>>> {
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let mut segments: Vec<&str> = relative_path.split('/').collect();
    // The last segment is the file's name; only the directories carry values.
    let file_name = segments.pop().unwrap_or_default();
    if file_name.is_empty() {
        return Err(QuiverError::InvalidArgument(format!(
            "data file '{relative_path}' does not name a file"
        )));
    }
    let expected = || {
        columns
            .iter()
            .map(|c| format!("{}=…/", escape(c)))
            .collect::<String>()
    };
    if segments.len() != columns.len() {
        return Err(QuiverError::InvalidArgument(format!(
            "data file '{relative_path}' is not in a partition directory of this table (expected {}FILE)",
            expected()
        )));
    }
    let mut values = Vec::with_capacity(columns.len());
    for (segment, column) in segments.iter().zip(columns) {
        // Names and values are escaped, so the first '=' is the separator.
        let found = segment
            .split_once('=')
            .map(|(name, value)| Ok::<_, QuiverError>((unescape(name)?, value)))
            .transpose()?;
        match found {
            Some((name, value)) if name == *column => values.push(if value == NULL_PARTITION {
                None
            } else {
                Some(unescape(value)?)
            }),
            _ => {
                return Err(QuiverError::InvalidArgument(format!(
                    "data file '{relative_path}': directory '{segment}' is not partition column '{column}' (expected {}FILE)",
                    expected()
                )));
            }
        }
    }
    Ok(values)
}

/// Whether `data_type` can be the type of partition column `column`: types whose values have
/// one obvious, lossless text form in a directory name (floats, decimals and timestamps do not).
pub(crate) fn check_partition_type(column: &str, data_type: &DataType) -> Result<()> {
    match data_type {
        DataType::Boolean
        | DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Date32
        | DataType::Date64 => Ok(()),
        other => Err(QuiverError::InvalidArgument(format!(
            "column '{column}' of type {other} cannot be a partition column: partition by a \
             boolean, integer, string or date column"
        ))),
    }
}

/// Whether Hive escapes `c` in a path name (`FileUtils.charToEscape`, plus NUL).
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{0}'
            ..='\u{1f}'
                | '\u{7f}'
                | '"'
                | '#'
                | '%'
                | '\''
                | '*'
                | '/'
                | ':'
                | '='
                | '?'
                | '\\'
                | '{'
                | '['
                | ']'
                | '^'
    )
}

fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        if needs_escape(c) {
            // Only ASCII is escaped, so the char is one byte.
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// Reverses any `%XX` escape (of any byte, so UTF-8 escaped by other engines decodes too).
fn unescape(s: &str) -> Result<String> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        QuiverError::InvalidArgument(format!(
            "partition directory name '{s}' does not decode to UTF-8"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn directories_are_escaped_like_hive() {
        assert_eq!(partition_dir(&[]), "");
        assert_eq!(
            partition_dir(&[("a", Some("1")), ("b", Some("x/y"))]),
            "a=1/b=x%2Fy/"
        );
        assert_eq!(
            partition_dir(&[("k", Some("a=b%c:d?e#f\\g\"h'i*j"))]),
            "k=a%3Db%25c%3Ad%3Fe%23f%5Cg%22h%27i%2Aj/"
        );
        assert_eq!(
            partition_dir(&[("c", Some("tab\there\n"))]),
            "c=tab%09here%0A/"
        );
        // Spaces and non-ASCII stay readable, as in Hive.
        assert_eq!(partition_dir(&[("c", Some("São Paulo"))]), "c=São Paulo/");
        assert_eq!(partition_dir(&[("we=ird", Some("v"))]), "we%3Dird=v/");
        assert_eq!(
            partition_dir(&[("a", None), ("b", Some(""))]),
            format!("a={NULL_PARTITION}/b={NULL_PARTITION}/")
        );
    }

    #[test]
    fn awkward_values_round_trip() {
        let awkward = [
            "plain",
            "x/y",
            "a=b",
            "100%",
            "%2F",
            "%zz and a trailing %",
            "with space",
            "日本語/ünïcødé 🎉",
            "..",
            ".",
            "C:\\dir\\file",
            "quote\"s and 'apostrophes'",
            "#?*[]{}^",
            "\u{1}\u{7f}\r\n",
        ];
        let columns = cols(&["first", "second=odd/name"]);
        for value in awkward {
            let dir = partition_dir(&[("first", Some(value)), ("second=odd/name", None)]);
            // One directory per column: nothing the value holds may split a segment.
            assert_eq!(dir.matches('/').count(), 2, "{dir}");
            let path = format!("{dir}part-0.parquet");
            let parsed = parse_partition_values(&path, &columns).unwrap();
            assert_eq!(parsed, vec![Some(value.to_string()), None], "{path}");
        }
    }

    #[test]
    fn other_engines_escapes_decode() {
        // DataFusion escapes spaces and non-ASCII bytes too.
        let parsed =
            parse_partition_values("city=S%C3%A3o%20Paulo/f.parquet", &cols(&["city"])).unwrap();
        assert_eq!(parsed, vec![Some("São Paulo".to_string())]);
        let parsed = parse_partition_values("c=%2f/f.parquet", &cols(&["c"])).unwrap();
        assert_eq!(parsed, vec![Some("/".to_string())]);
        assert!(parse_partition_values("c=%FF/f.parquet", &cols(&["c"])).is_err());
    }

    #[test]
    fn paths_that_do_not_match_the_columns_are_rejected() {
        let columns = cols(&["a", "b"]);
        assert_eq!(
            parse_partition_values("a=1/b=2/f.parquet", &columns).unwrap(),
            vec![Some("1".into()), Some("2".into())]
        );
        for bad in [
            "f.parquet",
            "a=1/f.parquet",
            "b=2/a=1/f.parquet",
            "a=1/c=2/f.parquet",
            "a=1/b=2/c=3/f.parquet",
            "a=1/b2/f.parquet",
            "a=1/b=2/",
        ] {
            let e = parse_partition_values(bad, &columns).unwrap_err();
            assert!(matches!(e, QuiverError::InvalidArgument(_)), "{bad}: {e}");
        }
        // Unpartitioned tables carry no values, wherever the file is.
        assert!(parse_partition_values("f.parquet", &[]).unwrap().is_empty());
    }

    #[test]
    fn partition_types() {
        for ok in [
            DataType::Boolean,
            DataType::Int8,
            DataType::UInt64,
            DataType::Utf8,
            DataType::LargeUtf8,
            DataType::Utf8View,
            DataType::Date32,
            DataType::Date64,
        ] {
            check_partition_type("c", &ok).unwrap();
        }
        let e = check_partition_type("price", &DataType::Float64).unwrap_err();
        let QuiverError::InvalidArgument(message) = e else {
            panic!("{e:?}")
        };
        assert!(
            message.contains("price") && message.contains("Float64"),
            "{message}"
        );
        assert!(message.contains("integer, string or date"), "{message}");
    }
}
