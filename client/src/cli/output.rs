//! Where and how `quiver sql` writes a result.
//!
//! A [`Sink`] takes a result's batches as they arrive and writes them: to standard output as a
//! table (only the first `--max-rows` rows are kept; the row count stays exact), expanded
//! records (`\x`), CSV or JSON (streamed as they come), or to a file whose extension picks its
//! format (`.parquet`, `.arrow` IPC file, `.csv`, `.json`, `.jsonl`). A file is written under a
//! temporary name beside it and renamed into place once complete, so a failed or cancelled
//! statement leaves no partial file behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow::util::pretty::pretty_format_batches;

/// How results print on standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// An aligned table (or one record per block with `\x`).
    #[default]
    Table,
    /// CSV with a header line.
    Csv,
    /// A JSON array of objects, one object per line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "table" | "aligned" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown format '{s}': use table, csv or json")),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Table => "table",
            Self::Csv => "csv",
            Self::Json => "json",
        })
    }
}

/// A file format, told by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Parquet,
    /// The Arrow IPC file format.
    Arrow,
    Csv,
    /// A JSON array of objects.
    Json,
    /// One JSON object per line.
    JsonLines,
}

impl FileKind {
    pub(crate) fn of(path: &Path) -> Result<Self, String> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("parquet") => Ok(Self::Parquet),
            Some("arrow" | "ipc" | "feather") => Ok(Self::Arrow),
            Some("csv") => Ok(Self::Csv),
            Some("json") => Ok(Self::Json),
            Some("jsonl" | "ndjson") => Ok(Self::JsonLines),
            _ => Err(format!(
                "cannot tell the format of '{}' from its extension: use .parquet, .arrow, .csv, .json or .jsonl",
                path.display()
            )),
        }
    }
}

/// How a table prints.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableStyle {
    /// At most this many rows (0: all).
    pub(crate) max_rows: usize,
    pub(crate) expanded: bool,
}

/// A JSON array with one object per line: valid JSON, and still readable (and greppable)
/// line by line, as arrow's own array format (all on one line) is not.
#[derive(Debug, Default)]
struct JsonArrayLines;

impl arrow::json::writer::JsonFormat for JsonArrayLines {
    fn start_stream<W: Write>(&self, writer: &mut W) -> Result<(), ArrowError> {
        writer.write_all(b"[")?;
        Ok(())
    }

    fn start_row<W: Write>(&self, writer: &mut W, is_first_row: bool) -> Result<(), ArrowError> {
        writer.write_all(if is_first_row { b"\n" } else { b",\n" })?;
        Ok(())
    }

    fn end_stream<W: Write>(&self, writer: &mut W) -> Result<(), ArrowError> {
        writer.write_all(b"\n]\n")?;
        Ok(())
    }
}

type JsonWriter<W> = arrow::json::Writer<W, JsonArrayLines>;
type JsonLinesWriter<W> = arrow::json::Writer<W, arrow::json::writer::LineDelimited>;

/// Standard output, flushed after each batch so rows show as they arrive.
type Stdout = std::io::Stdout;

enum Writer {
    Table {
        style: TableStyle,
        kept: Vec<RecordBatch>,
        kept_rows: usize,
    },
    Csv(arrow::csv::Writer<Stdout>),
    Json(Box<JsonWriter<Stdout>>),
    File {
        file: FileWriter,
        temp: tempfile::TempPath,
        path: PathBuf,
    },
}

enum FileWriter {
    Parquet(Box<parquet::arrow::ArrowWriter<std::fs::File>>),
    Arrow(arrow::ipc::writer::FileWriter<std::io::BufWriter<std::fs::File>>),
    Csv(arrow::csv::Writer<std::io::BufWriter<std::fs::File>>),
    Json(Box<JsonWriter<std::io::BufWriter<std::fs::File>>>),
    JsonLines(Box<JsonLinesWriter<std::io::BufWriter<std::fs::File>>>),
}

/// What a finished sink wrote.
#[derive(Debug)]
pub(crate) enum Written {
    /// Standard output; for a table, its text (printed by the caller, after the progress line
    /// is gone) and the rows left out.
    Stdout {
        table: Option<String>,
        omitted: usize,
    },
    /// A file, complete and in place.
    File(PathBuf),
}

/// Writes one result as its batches arrive.
pub(crate) struct Sink {
    schema: SchemaRef,
    writer: Writer,
    rows: usize,
}

impl Sink {
    /// A sink to standard output in `format`.
    pub(crate) fn stdout(
        schema: SchemaRef,
        format: Format,
        style: TableStyle,
    ) -> Result<Self, String> {
        let writer = match format {
            Format::Table => Writer::Table {
                style,
                kept: Vec::new(),
                kept_rows: 0,
            },
            Format::Csv => {
                let mut csv = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(std::io::stdout());
                // The header, even for an empty result.
                csv.write(&RecordBatch::new_empty(Arc::clone(&schema)))
                    .map_err(|e| write_error("standard output", e))?;
                Writer::Csv(csv)
            }
            Format::Json => Writer::Json(Box::new(JsonWriter::new(std::io::stdout()))),
        };
        Ok(Self {
            schema,
            writer,
            rows: 0,
        })
    }

    /// A sink to `path`, in the format its extension names.
    pub(crate) fn file(schema: SchemaRef, path: &Path) -> Result<Self, String> {
        let kind = FileKind::of(path)?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let temp = tempfile::Builder::new()
            .prefix(".quiver-sql-")
            .tempfile_in(dir)
            .map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
        let (file, temp) = temp.into_parts();
        let file = match kind {
            FileKind::Parquet => FileWriter::Parquet(Box::new(
                parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), None)
                    .map_err(|e| write_error(path, e))?,
            )),
            FileKind::Arrow => FileWriter::Arrow(
                arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(file), &schema)
                    .map_err(|e| write_error(path, e))?,
            ),
            FileKind::Csv => {
                let mut csv = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(std::io::BufWriter::new(file));
                csv.write(&RecordBatch::new_empty(Arc::clone(&schema)))
                    .map_err(|e| write_error(path, e))?;
                FileWriter::Csv(csv)
            }
            FileKind::Json => {
                FileWriter::Json(Box::new(JsonWriter::new(std::io::BufWriter::new(file))))
            }
            FileKind::JsonLines => FileWriter::JsonLines(Box::new(JsonLinesWriter::new(
                std::io::BufWriter::new(file),
            ))),
        };
        Ok(Self {
            schema,
            writer: Writer::File {
                file,
                temp,
                path: path.to_path_buf(),
            },
            rows: 0,
        })
    }

    /// Rows taken so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Whether writing a batch prints something now (and so the progress line must go first).
    pub(crate) fn streams_to_stdout(&self) -> bool {
        matches!(self.writer, Writer::Csv(_) | Writer::Json(_))
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        self.rows += batch.num_rows();
        match &mut self.writer {
            Writer::Table {
                style,
                kept,
                kept_rows,
            } => {
                let room = if style.max_rows == 0 {
                    batch.num_rows()
                } else {
                    style.max_rows.saturating_sub(*kept_rows)
                };
                let take = batch.num_rows().min(room);
                if take > 0 {
                    kept.push(batch.slice(0, take));
                    *kept_rows += take;
                }
                Ok(())
            }
            Writer::Csv(csv) => {
                csv.write(batch)
                    .map_err(|e| write_error("standard output", e))?;
                std::io::stdout()
                    .flush()
                    .map_err(|e| write_error("standard output", e))
            }
            Writer::Json(json) => {
                json.write(batch)
                    .map_err(|e| write_error("standard output", e))?;
                std::io::stdout()
                    .flush()
                    .map_err(|e| write_error("standard output", e))
            }
            Writer::File { file, path, .. } => {
                let path = path.clone();
                match file {
                    FileWriter::Parquet(w) => w.write(batch).map_err(|e| write_error(&path, e)),
                    FileWriter::Arrow(w) => w.write(batch).map_err(|e| write_error(&path, e)),
                    FileWriter::Csv(w) => w.write(batch).map_err(|e| write_error(&path, e)),
                    FileWriter::Json(w) => w.write(batch).map_err(|e| write_error(&path, e)),
                    FileWriter::JsonLines(w) => w.write(batch).map_err(|e| write_error(&path, e)),
                }
            }
        }
    }

    /// Completes the output: renders a table, closes a file and moves it into place.
    pub(crate) fn finish(self) -> Result<Written, String> {
        match self.writer {
            Writer::Table {
                style,
                mut kept,
                kept_rows,
            } => {
                if self.schema.fields().is_empty() {
                    return Ok(Written::Stdout {
                        table: None,
                        omitted: 0,
                    });
                }
                if kept.is_empty() {
                    kept.push(RecordBatch::new_empty(Arc::clone(&self.schema)));
                }
                let table = if style.expanded {
                    expanded(&kept)
                } else {
                    pretty_format_batches(&kept).map(|t| t.to_string())
                }
                .map_err(|e| format!("cannot format the result: {e}"))?;
                Ok(Written::Stdout {
                    table: Some(table),
                    omitted: self.rows - kept_rows,
                })
            }
            Writer::Csv(csv) => {
                let mut out = csv.into_inner();
                out.flush().map_err(|e| write_error("standard output", e))?;
                Ok(Written::Stdout {
                    table: None,
                    omitted: 0,
                })
            }
            Writer::Json(mut json) => {
                json.finish()
                    .map_err(|e| write_error("standard output", e))?;
                json.get_mut()
                    .flush()
                    .map_err(|e| write_error("standard output", e))?;
                Ok(Written::Stdout {
                    table: None,
                    omitted: 0,
                })
            }
            Writer::File { file, temp, path } => {
                let flushed: Result<(), String> = match file {
                    FileWriter::Parquet(w) => {
                        w.close().map(|_| ()).map_err(|e| write_error(&path, e))
                    }
                    FileWriter::Arrow(mut w) => w
                        .finish()
                        .map_err(|e| write_error(&path, e))
                        .and_then(|()| w.get_mut().flush().map_err(|e| write_error(&path, e))),
                    FileWriter::Csv(w) => w.into_inner().flush().map_err(|e| write_error(&path, e)),
                    FileWriter::Json(mut w) => w
                        .finish()
                        .map_err(|e| write_error(&path, e))
                        .and_then(|()| w.get_mut().flush().map_err(|e| write_error(&path, e))),
                    FileWriter::JsonLines(mut w) => w
                        .finish()
                        .map_err(|e| write_error(&path, e))
                        .and_then(|()| w.get_mut().flush().map_err(|e| write_error(&path, e))),
                };
                flushed?;
                temp.persist(&path).map_err(|e| {
                    format!(
                        "cannot move the result into {}: {}",
                        path.display(),
                        e.error
                    )
                })?;
                Ok(Written::File(path))
            }
        }
    }
}

fn write_error(what: impl AsRef<Path>, e: impl std::fmt::Display) -> String {
    format!("cannot write to {}: {e}", what.as_ref().display())
}

/// psql's expanded display: a `-[ RECORD n ]-` line, then `column | value` per column.
pub(crate) fn expanded(batches: &[RecordBatch]) -> Result<String, ArrowError> {
    let Some(first) = batches.first() else {
        return Ok(String::new());
    };
    let schema = first.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let name_width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let options = FormatOptions::default();
    let mut out = String::new();
    let mut record = 0;
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            record += 1;
            let values: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            let value_width = values.iter().map(|v| v.chars().count()).max().unwrap_or(0);
            let header = format!("-[ RECORD {record} ]");
            let width = (name_width + 3 + value_width).max(header.chars().count());
            out.push_str(&header);
            out.push_str(&"-".repeat(width - header.chars().count()));
            out.push('\n');
            for (name, value) in names.iter().zip(&values) {
                out.push_str(&format!("{name:<name_width$} | {value}\n"));
            }
        }
    }
    if record == 0 {
        out.push_str("(0 rows)\n");
    }
    Ok(out.trim_end().to_string())
}

/// How an error prints: `ERROR (NOT_FOUND): table 'nope' not found` for a server's answer (its
/// own message and code), `ERROR: ...` for anything else.
pub(crate) fn error_line(e: &crate::ClientError) -> String {
    match e.status() {
        Some(status) => {
            let message = status.message().trim();
            let message = if message.is_empty() {
                status.code().description()
            } else {
                message
            };
            format!(
                "ERROR ({}): {message}",
                crate::status_code_name(status.code())
            )
        }
        None => format!("ERROR: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 22])),
                Arc::new(StringArray::from(vec![Some("ALGERIA"), None])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn expanded_rows_are_one_line_per_column() {
        let text = expanded(&[batch()]).unwrap();
        assert_eq!(
            text,
            "-[ RECORD 1 ]-\nn    | 1\nname | ALGERIA\n-[ RECORD 2 ]\nn    | 22\nname |"
        );
        let empty = RecordBatch::new_empty(batch().schema());
        assert_eq!(expanded(&[empty]).unwrap(), "(0 rows)");
    }

    #[test]
    fn file_formats_come_from_extensions() {
        assert_eq!(
            FileKind::of(Path::new("a/b.parquet")),
            Ok(FileKind::Parquet)
        );
        assert_eq!(FileKind::of(Path::new("x.ARROW")), Ok(FileKind::Arrow));
        assert_eq!(FileKind::of(Path::new("x.csv")), Ok(FileKind::Csv));
        assert_eq!(FileKind::of(Path::new("x.json")), Ok(FileKind::Json));
        assert_eq!(FileKind::of(Path::new("x.jsonl")), Ok(FileKind::JsonLines));
        assert!(
            FileKind::of(Path::new("x.xlsx"))
                .unwrap_err()
                .contains(".parquet")
        );
        assert!(FileKind::of(Path::new("noextension")).is_err());
    }

    #[test]
    fn formats_parse() {
        assert_eq!("CSV".parse::<Format>(), Ok(Format::Csv));
        assert_eq!("table".parse::<Format>(), Ok(Format::Table));
        assert!("xml".parse::<Format>().is_err());
    }

    #[test]
    fn a_table_keeps_only_the_rows_it_shows() {
        let style = TableStyle {
            max_rows: 3,
            expanded: false,
        };
        let mut sink = Sink::stdout(batch().schema(), Format::Table, style).unwrap();
        for _ in 0..3 {
            sink.write(&batch()).unwrap();
        }
        assert_eq!(sink.rows(), 6);
        match sink.finish().unwrap() {
            Written::Stdout { table, omitted } => {
                assert_eq!(omitted, 3);
                let table = table.unwrap();
                assert_eq!(table.matches("ALGERIA").count(), 2, "{table}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn files_are_written_whole_in_their_format() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["r.parquet", "r.arrow", "r.csv", "r.json", "r.jsonl"] {
            let path = dir.path().join(name);
            let mut sink = Sink::file(batch().schema(), &path).unwrap();
            sink.write(&batch()).unwrap();
            assert!(!path.exists(), "{name} appears only once complete");
            assert!(matches!(sink.finish().unwrap(), Written::File(_)));
            let bytes = std::fs::read(&path).unwrap();
            match name {
                "r.parquet" => {
                    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(
                        bytes::Bytes::from(bytes),
                        1024,
                    )
                    .unwrap();
                    let back: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
                    assert_eq!(back, vec![batch()]);
                }
                "r.arrow" => {
                    let reader =
                        arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
                            .unwrap();
                    let back: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
                    assert_eq!(back, vec![batch()]);
                }
                "r.csv" => assert_eq!(
                    String::from_utf8(bytes).unwrap(),
                    "n,name\n1,ALGERIA\n22,\n"
                ),
                "r.json" => {
                    let text = String::from_utf8(bytes).unwrap();
                    assert_eq!(text, "[\n{\"n\":1,\"name\":\"ALGERIA\"},\n{\"n\":22}\n]\n");
                    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(value.as_array().map(Vec::len), Some(2));
                }
                _ => assert_eq!(
                    String::from_utf8(bytes).unwrap(),
                    "{\"n\":1,\"name\":\"ALGERIA\"}\n{\"n\":22}\n"
                ),
            }
        }
        // Only the results are left: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 5);
    }

    #[test]
    fn an_unfinished_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.parquet");
        let mut sink = Sink::file(batch().schema(), &path).unwrap();
        sink.write(&batch()).unwrap();
        drop(sink);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn server_errors_print_their_code_and_message() {
        let e = crate::ClientError::Server(tonic::Status::not_found("table 'nope' not found"));
        assert_eq!(error_line(&e), "ERROR (NOT_FOUND): table 'nope' not found");
        let e = crate::ClientError::Protocol("bad".into());
        assert_eq!(error_line(&e), "ERROR: bad response from the server: bad");
    }
}
