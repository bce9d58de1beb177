//! `quiver sql`: run SQL against a Quiver server from a terminal or a script.
//!
//! `-c TEXT` runs the statements (and meta commands) of TEXT, `-f FILE` those of a file, and
//! with neither it reads standard input: a REPL on a terminal (line editing, history in
//! `~/.quiver_history` or `$QUIVER_HISTORY`, statements spanning lines until `;`), a script
//! otherwise. Results print as a table (`\x`: one line per column), CSV or JSON
//! (`--format`, `\format`), or go to a file (`--output FILE`, `\g FILE`) in the format its
//! extension names. psql-style meta commands (`meta`) are handled here, never sent as SQL.
//!
//! On a terminal a progress line (`progress`) shows while a statement runs; Ctrl-C then
//! cancels it (`CancelFlightInfo`) and the REPL goes on, while at the prompt Ctrl-C clears the
//! line and Ctrl-D or `\q` leaves. In a script Ctrl-C cancels the running statement and stops
//! with exit code 130. Errors print as the server's code and message
//! (`ERROR (NOT_FOUND): table 'nope' not found`). The exit code of `-c`, `-f` and a script on
//! standard input is non-zero if any statement failed.

mod input;
mod meta;
mod output;
mod progress;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use clap::Args;
use futures::StreamExt;

pub use input::split_statements;
pub use output::Format;

use crate::{ClientError, QuiverClient};
use input::{InputBuffer, Item};
use meta::Meta;
use output::{Sink, TableStyle, Written};
use progress::Progress;

#[derive(Debug, Clone, Args)]
pub struct SqlArgs {
    /// Server URL.
    #[arg(long, default_value = "grpc://127.0.0.1:50051", env = "QUIVER_URL")]
    pub url: String,
    /// Run these statements (or a meta command such as `\d`) and exit.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SQL",
        conflicts_with = "file"
    )]
    pub command: Option<String>,
    /// Run the statements in this file and exit.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How results print: an aligned table, CSV with a header, or a JSON array of objects.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write each result to FILE instead, in the format its extension names: .parquet, .arrow
    /// (Arrow IPC file), .csv, .json (array) or .jsonl (one object per line). A later result
    /// replaces an earlier one; statements without columns leave the file alone.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Expanded tables: one line per column, one block per row (`\x`).
    #[arg(short = 'x', long)]
    pub expanded: bool,
    /// Do not print how long each statement took (`\timing` toggles it).
    #[arg(long)]
    pub no_timing: bool,
    /// Print at most this many rows of each table (0 = all); the row count is always exact.
    #[arg(long, default_value_t = 100)]
    pub max_rows: usize,
    /// Log in as this user (Basic handshake).
    #[arg(long, env = "QUIVER_USER")]
    pub user: Option<String>,
    /// Password for --user.
    #[arg(long, env = "QUIVER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// A bearer token to send instead of logging in.
    #[arg(
        long,
        env = "QUIVER_TOKEN",
        hide_env_values = true,
        conflicts_with = "user"
    )]
    pub token: Option<String>,
    /// PEM certificate (or CA) to trust for grpc+tls:// URLs.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

/// Entry point of `quiver sql`.
pub fn main(args: SqlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quiver sql: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

/// The exit code of a script stopped by Ctrl-C (128 + SIGINT), as shells report it.
const INTERRUPTED: u8 = 130;
/// How long a cancelled statement's stream may take to end once the server was told.
const CANCEL_LIMIT: Duration = Duration::from_secs(5);
/// Bounds for calls that answer at once (cancel, the catalog's tables).
const RPC_LIMIT: Duration = Duration::from_secs(30);

async fn run(args: SqlArgs) -> ExitCode {
    let client = match QuiverClient::connect_with(
        &args.url,
        &crate::ConnectOptions {
            user: args.user.clone(),
            password: args.password.clone(),
            token: args.token.clone(),
            tls_ca: args.tls_ca.clone(),
        },
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("quiver sql: {e}");
            return ExitCode::FAILURE;
        }
    };
    let interrupts = match Interrupts::new() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("quiver sql: cannot watch for Ctrl-C: {e}");
            return ExitCode::FAILURE;
        }
    };
    let repl = args.command.is_none() && args.file.is_none() && std::io::stdin().is_terminal();
    let mut session = Session {
        client,
        format: args.format,
        expanded: args.expanded,
        timing: !args.no_timing,
        max_rows: args.max_rows,
        output: args.output.clone(),
        progress: std::io::stderr().is_terminal(),
        last_sql: None,
        interrupts,
        failed: false,
    };
    if let Some(text) = &args.command {
        session.script(text).await
    } else if let Some(path) = &args.file {
        match std::fs::read_to_string(path) {
            Ok(text) => session.script(&text).await,
            Err(e) => {
                eprintln!("quiver sql: reading {}: {e}", path.display());
                ExitCode::FAILURE
            }
        }
    } else if repl {
        session.repl(&args.url).await
    } else {
        session.stdin_script().await
    }
}

/// What running one item did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Failed,
    /// Ctrl-C stopped it.
    Cancelled,
    /// `\q`.
    Quit,
}

struct Session {
    client: QuiverClient,
    format: Format,
    expanded: bool,
    timing: bool,
    max_rows: usize,
    output: Option<PathBuf>,
    /// Standard error is a terminal: draw the progress line.
    progress: bool,
    /// What `\g` without a statement runs again.
    last_sql: Option<String>,
    interrupts: Interrupts,
    /// Whether any statement failed.
    failed: bool,
}

impl Session {
    /// Runs `text` (`-c`, `-f`): every statement and meta command, then what is left unfinished.
    async fn script(&mut self, text: &str) -> ExitCode {
        let mut buffer = InputBuffer::new();
        let items = buffer.push(text);
        match self.run_items(items, &mut buffer).await {
            Some(code) => code,
            None => self.finish(&mut buffer).await,
        }
    }

    /// Runs standard input as a script, line by line as it arrives.
    async fn stdin_script(&mut self) -> ExitCode {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut buffer = InputBuffer::new();
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line,
                () = self.interrupts.recv() => return ExitCode::from(INTERRUPTED),
            };
            match line {
                Ok(Some(line)) => {
                    let items = buffer.push(&format!("{line}\n"));
                    if let Some(code) = self.run_items(items, &mut buffer).await {
                        return code;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("quiver sql: reading standard input: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        self.finish(&mut buffer).await
    }

    /// Runs `items` of a script; `Some(code)` if the script stops here.
    async fn run_items(&mut self, items: Vec<Item>, buffer: &mut InputBuffer) -> Option<ExitCode> {
        for item in items {
            match self.run_item(item, buffer).await {
                Outcome::Done | Outcome::Failed => {}
                Outcome::Cancelled => return Some(ExitCode::from(INTERRUPTED)),
                Outcome::Quit => return Some(self.exit_code()),
            }
        }
        None
    }

    /// The unfinished statement at the end of a script runs too (as psql does).
    async fn finish(&mut self, buffer: &mut InputBuffer) -> ExitCode {
        if let Some(sql) = buffer.take() {
            match self.run_item(Item::Sql(sql), buffer).await {
                Outcome::Cancelled => return ExitCode::from(INTERRUPTED),
                Outcome::Done | Outcome::Failed | Outcome::Quit => {}
            }
        }
        self.exit_code()
    }

    fn exit_code(&self) -> ExitCode {
        if self.failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }

    async fn repl(&mut self, url: &str) -> ExitCode {
        use rustyline::error::ReadlineError;
        let config = rustyline::Config::builder()
            .max_history_size(10_000)
            .map(|c| c.history_ignore_space(true).auto_add_history(false).build());
        let config = match config {
            Ok(config) => config,
            Err(e) => {
                eprintln!("quiver sql: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut editor = match Editor::with_config(config) {
            Ok(editor) => editor,
            Err(e) => {
                eprintln!("quiver sql: cannot set up the terminal: {e}");
                return ExitCode::FAILURE;
            }
        };
        editor.set_helper(Some(SqlHelper::default()));
        let history = history_file();
        if let Some(path) = &history
            && path.exists()
            && let Err(e) = editor.load_history(path)
        {
            eprintln!(
                "quiver sql: cannot read the history in {}: {e}",
                path.display()
            );
        }
        eprintln!("quiver sql: connected to {url}. Type \\? for help, \\q to quit.");
        let mut buffer = InputBuffer::new();
        loop {
            if let Some(helper) = editor.helper_mut() {
                helper.carried = buffer.clone();
            }
            let prompt = if buffer.is_blank() {
                "quiver> "
            } else {
                "quiver-> "
            };
            // Read on a blocking thread, so the connection's tasks keep running meanwhile.
            let read = tokio::task::spawn_blocking(move || {
                let line = editor.readline(prompt);
                (editor, line)
            })
            .await;
            let line;
            (editor, line) = match read {
                Ok(read) => read,
                Err(e) => {
                    eprintln!("quiver sql: the line editor failed: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match line {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = editor.add_history_entry(line.as_str());
                        // Appended at once, so that a crash or a second session loses nothing.
                        if let Some(path) = &history
                            && let Err(e) = editor.append_history(path)
                        {
                            eprintln!(
                                "quiver sql: cannot write the history to {}: {e}",
                                path.display()
                            );
                        }
                    }
                    // A Ctrl-C pressed since the last statement is not for the next one.
                    self.interrupts.drain();
                    for item in buffer.push(&format!("{line}\n")) {
                        match self.run_item(item, &mut buffer).await {
                            Outcome::Quit => return ExitCode::SUCCESS,
                            // Ctrl-C stops the rest of the entry too.
                            Outcome::Cancelled => {
                                buffer.clear();
                                break;
                            }
                            Outcome::Done | Outcome::Failed => {}
                        }
                    }
                }
                // Ctrl-C at the prompt clears what was typed (psql).
                Err(ReadlineError::Interrupted) => buffer.clear(),
                Err(ReadlineError::Eof) => return ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("quiver sql: reading a line: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    async fn run_item(&mut self, item: Item, buffer: &mut InputBuffer) -> Outcome {
        let outcome = match item {
            Item::Sql(sql) => self.execute(&sql, None).await,
            Item::Meta(text) => match meta::parse(&text) {
                Ok(meta) => self.run_meta(meta, buffer).await,
                Err(message) => {
                    eprintln!("ERROR: {message}");
                    Outcome::Failed
                }
            },
            Item::Go(text, sql) => match meta::parse(&text) {
                Ok(Meta::Go(file)) => match sql.or_else(|| self.last_sql.clone()) {
                    Some(sql) => self.execute(&sql, file).await,
                    None => {
                        eprintln!("ERROR: \\g: no statement to run");
                        Outcome::Failed
                    }
                },
                Ok(_) => Outcome::Failed,
                Err(message) => {
                    eprintln!("ERROR: {message}");
                    Outcome::Failed
                }
            },
        };
        if outcome == Outcome::Failed {
            self.failed = true;
        }
        outcome
    }

    async fn run_meta(&mut self, meta: Meta, buffer: &mut InputBuffer) -> Outcome {
        let on_off = |on: bool| if on { "on" } else { "off" };
        match meta {
            Meta::Quit => return Outcome::Quit,
            Meta::Help => println!("{}", meta::HELP),
            Meta::Timing(on) => {
                self.timing = on.unwrap_or(!self.timing);
                println!("Timing is {}.", on_off(self.timing));
            }
            Meta::Expanded(on) => {
                self.expanded = on.unwrap_or(!self.expanded);
                println!("Expanded display is {}.", on_off(self.expanded));
            }
            Meta::Format(format) => {
                self.format = format;
                println!("Output format is {format}.");
            }
            Meta::Go(file) => {
                let Some(sql) = buffer.take().or_else(|| self.last_sql.clone()) else {
                    eprintln!("ERROR: \\g: no statement to run");
                    return Outcome::Failed;
                };
                return self.execute(&sql, file).await;
            }
            Meta::Describe(table) => return self.describe(table).await,
        }
        Outcome::Done
    }

    /// Runs one statement, printing its result (or writing it to `file`, else `--output`).
    async fn execute(&mut self, sql: &str, file: Option<PathBuf>) -> Outcome {
        let file = file.or_else(|| self.output.clone());
        if let Some(path) = &file
            && let Err(message) = output::FileKind::of(path)
        {
            eprintln!("ERROR: {message}");
            return Outcome::Failed;
        }
        self.last_sql = Some(sql.to_string());
        let started = Instant::now();
        let mut progress = Progress::start(self.progress, started);
        let info = tokio::select! {
            info = self.client.start(sql) => info,
            () = self.interrupts.recv() => {
                drop(progress);
                // Nothing ran yet: the server only planned the statement.
                eprintln!("ERROR: cancelled");
                return Outcome::Cancelled;
            }
        };
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                drop(progress);
                eprintln!("{}", output::error_line(&e));
                return Outcome::Failed;
            }
        };
        if let Some(id) = crate::query_id(&info) {
            progress.watch(&self.client, id);
        }
        let (schema, mut stream) = match self.client.stream(info.clone()) {
            Ok(s) => s,
            Err(e) => {
                drop(progress);
                eprintln!("{}", output::error_line(&e));
                return Outcome::Failed;
            }
        };
        let style = TableStyle {
            max_rows: self.max_rows,
            expanded: self.expanded,
        };
        // A statement without columns (DDL, a write) leaves the output file alone.
        let sink = match &file {
            Some(path) if !schema.fields().is_empty() => Sink::file(Arc::clone(&schema), path),
            _ => Sink::stdout(Arc::clone(&schema), self.format, style),
        };
        let mut sink = match sink {
            Ok(sink) => sink,
            Err(message) => {
                drop(progress);
                eprintln!("ERROR: {message}");
                return Outcome::Failed;
            }
        };
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = self.interrupts.recv() => {
                    drop(progress);
                    return self.cancel(&info, stream).await;
                }
            };
            match next {
                None => break,
                Some(Ok(batch)) => {
                    progress.add_rows(batch.num_rows());
                    let streams = sink.streams_to_stdout();
                    if streams {
                        progress.clear();
                    }
                    let written = sink.write(&batch);
                    if streams {
                        progress.resume();
                    }
                    if let Err(message) = written {
                        drop(progress);
                        eprintln!("ERROR: {message}");
                        return Outcome::Failed;
                    }
                }
                Some(Err(e)) => {
                    drop(progress);
                    eprintln!("{}", output::error_line(&e));
                    return Outcome::Failed;
                }
            }
        }
        drop(progress);
        let rows = sink.rows();
        let written = match sink.finish() {
            Ok(written) => written,
            Err(message) => {
                eprintln!("ERROR: {message}");
                return Outcome::Failed;
            }
        };
        self.report(written, rows, started.elapsed());
        Outcome::Done
    }

    /// Tells the server to stop a running statement and waits (briefly) for its stream to end
    /// with the server's answer.
    async fn cancel(
        &mut self,
        info: &arrow_flight::FlightInfo,
        mut stream: crate::BatchStream,
    ) -> Outcome {
        let cancelled = tokio::select! {
            r = tokio::time::timeout(RPC_LIMIT, self.client.cancel(info)) => r,
            // A second Ctrl-C: stop waiting (dropping the stream stops the query too).
            () = self.interrupts.recv() => {
                eprintln!("ERROR: cancelled");
                return Outcome::Cancelled;
            }
        };
        match cancelled {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!(
                    "{} (the statement is stopped by closing its stream)",
                    output::error_line(&e)
                );
                return Outcome::Cancelled;
            }
            Err(_) => {
                eprintln!(
                    "ERROR: the server did not answer the cancel request (the statement is stopped by closing its stream)"
                );
                return Outcome::Cancelled;
            }
        }
        let end = tokio::time::timeout(CANCEL_LIMIT, async {
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    return Some(e);
                }
            }
            None
        });
        let end = tokio::select! {
            end = end => end,
            () = self.interrupts.recv() => Ok(None),
        };
        match end {
            Ok(Some(e)) => eprintln!("{}", output::error_line(&e)),
            _ => eprintln!("ERROR: cancelled"),
        }
        Outcome::Cancelled
    }

    /// The line after a result: its row count and, with `\timing`, how long it took.
    fn report(&self, written: Written, rows: usize, elapsed: Duration) {
        let noun = if rows == 1 { "row" } else { "rows" };
        let took = if self.timing {
            format!(" in {:.3} s", elapsed.as_secs_f64())
        } else {
            String::new()
        };
        match written {
            Written::Stdout { table, omitted } => {
                let mut out = std::io::stdout().lock();
                if let Some(table) = table {
                    let _ = writeln!(out, "{table}");
                    if omitted > 0 {
                        let shown = rows - omitted;
                        let _ = writeln!(
                            out,
                            "({shown} of {rows} rows shown; use --max-rows 0 for all)"
                        );
                    }
                }
                let summary = format!("{rows} {noun}{took}");
                if self.format == Format::Table {
                    let _ = writeln!(out, "{summary}");
                } else if std::io::stderr().is_terminal() {
                    // CSV and JSON keep standard output to the data alone.
                    eprintln!("{summary}");
                }
                let _ = out.flush();
            }
            Written::File(path) => {
                println!("{rows} {noun} written to {}{took}", path.display());
            }
        }
    }

    /// `\d`: the catalog's tables; `\d NAME`: one table's columns (Flight SQL `GetTables`).
    async fn describe(&mut self, table: Option<String>) -> Outcome {
        let tables = tokio::select! {
            r = tokio::time::timeout(RPC_LIMIT, self.client.tables(table.is_some())) => r,
            () = self.interrupts.recv() => {
                eprintln!("ERROR: cancelled");
                return Outcome::Cancelled;
            }
        };
        let tables = match tables {
            Ok(Ok(tables)) => tables,
            Ok(Err(e)) => {
                eprintln!("{}", output::error_line(&e));
                return Outcome::Failed;
            }
            Err(_) => {
                eprintln!("ERROR: the server did not list its tables within {RPC_LIMIT:?}");
                return Outcome::Failed;
            }
        };
        let listing = match TableListing::read(&tables.batches) {
            Ok(listing) => listing,
            Err(e) => {
                eprintln!("{}", output::error_line(&e));
                return Outcome::Failed;
            }
        };
        let batch = match &table {
            None => listing.tables_batch(),
            Some(name) => listing.columns_batch(name),
        };
        match batch {
            Ok((title, batch)) => {
                if self.format == Format::Table {
                    println!("{title}");
                }
                self.print_batch(batch)
            }
            Err(message) => {
                eprintln!("ERROR: {message}");
                Outcome::Failed
            }
        }
    }

    /// Prints a batch made here (`\d`) like a result, without timing.
    fn print_batch(&self, batch: RecordBatch) -> Outcome {
        let style = TableStyle {
            max_rows: 0,
            expanded: self.expanded,
        };
        let written = Sink::stdout(batch.schema(), self.format, style).and_then(|mut sink| {
            sink.write(&batch)?;
            sink.finish()
        });
        match written {
            Ok(Written::Stdout {
                table: Some(table), ..
            }) => {
                println!("{table}");
                Outcome::Done
            }
            Ok(_) => Outcome::Done,
            Err(message) => {
                eprintln!("ERROR: {message}");
                Outcome::Failed
            }
        }
    }
}

/// One row of a `GetTables` answer.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TableEntry {
    schema: String,
    name: String,
    kind: String,
    /// The IPC-encoded Arrow schema, when asked for.
    ipc: Option<Vec<u8>>,
}

/// The rows of a `GetTables` answer, sorted by schema and name.
#[derive(Debug, Default)]
struct TableListing {
    tables: Vec<TableEntry>,
}

impl TableListing {
    fn read(batches: &[RecordBatch]) -> Result<Self, ClientError> {
        let mut listing = Self::default();
        let bad = |what: &str| ClientError::Protocol(format!("GetTables: no {what} column"));
        for batch in batches {
            let strings = |name: &str| -> Result<&StringArray, ClientError> {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_string_opt::<i32>())
                    .ok_or_else(|| bad(name))
            };
            let schemas = strings("db_schema_name")?;
            let names = strings("table_name")?;
            let types = strings("table_type")?;
            let ipc = batch
                .column_by_name("table_schema")
                .and_then(|c| c.as_binary_opt::<i32>());
            for row in 0..batch.num_rows() {
                listing.tables.push(TableEntry {
                    schema: schemas.value(row).to_string(),
                    name: names.value(row).to_string(),
                    kind: types.value(row).to_string(),
                    ipc: ipc.map(|c| c.value(row).to_vec()),
                });
            }
        }
        listing.tables.sort();
        Ok(listing)
    }

    /// `\d`: the user's tables; the `system` and `information_schema` schemas are left out, as
    /// psql leaves out its catalogs (`\d system.queries` still describes one).
    fn tables_batch(&self) -> Result<(String, RecordBatch), String> {
        let listed: Vec<&TableEntry> = self
            .tables
            .iter()
            .filter(|t| t.schema != "system" && t.schema != "information_schema")
            .collect();
        let column = |f: fn(&TableEntry) -> &str| {
            Arc::new(StringArray::from_iter_values(listed.iter().map(|t| f(t))))
                as arrow::array::ArrayRef
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("Schema", DataType::Utf8, false),
            Field::new("Name", DataType::Utf8, false),
            Field::new("Type", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                column(|t| &t.schema),
                column(|t| &t.name),
                column(|t| &t.kind),
            ],
        )
        .map_err(|e| e.to_string())?;
        Ok(("List of tables".to_string(), batch))
    }

    /// The columns of table `name` (`table`, `schema.table` or `catalog.schema.table`); an
    /// unqualified name in several schemas means the default schema's, `public`.
    fn columns_batch(&self, name: &str) -> Result<(String, RecordBatch), String> {
        let parts: Vec<&str> = name.split('.').collect();
        let (schema, table) = match parts.as_slice() {
            [table] => (None, *table),
            [schema, table] | [_, schema, table] => (Some(*schema), *table),
            _ => return Err(format!("'{name}' is not a table name")),
        };
        let matching = |exact: bool| -> Vec<_> {
            self.tables
                .iter()
                .filter(|t| {
                    let same = |a: &str, b: &str| {
                        if exact {
                            a == b
                        } else {
                            a.eq_ignore_ascii_case(b)
                        }
                    };
                    same(&t.name, table) && schema.is_none_or(|s| same(&t.schema, s))
                })
                .collect()
        };
        // SQL folds unquoted names to lower case; `\d Lineitem` finds `lineitem`.
        let mut found = matching(true);
        if found.is_empty() {
            found = matching(false);
        }
        if found.len() > 1 {
            found.retain(|t| t.schema == "public");
        }
        let [
            TableEntry {
                schema,
                name: table,
                ipc,
                ..
            },
        ] = found.as_slice()
        else {
            return Err(if found.is_empty() {
                format!("no table named '{name}' (\\d lists the tables)")
            } else {
                format!("'{name}' names tables in several schemas: qualify it as schema.table")
            });
        };
        let ipc = ipc
            .as_ref()
            .ok_or_else(|| "the server sent no table schema".to_string())?;
        let arrow_schema = crate::table_schema(ipc).map_err(|e| e.to_string())?;
        let fields = arrow_schema.fields();
        let columns = StringArray::from_iter_values(fields.iter().map(|f| f.name().as_str()));
        let types = StringArray::from_iter_values(fields.iter().map(|f| f.data_type().to_string()));
        let nullable = StringArray::from_iter_values(
            fields
                .iter()
                .map(|f| if f.is_nullable() { "yes" } else { "no" }),
        );
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("Column", DataType::Utf8, false),
                Field::new("Type", DataType::Utf8, false),
                Field::new("Nullable", DataType::Utf8, false),
            ])),
            vec![Arc::new(columns), Arc::new(types), Arc::new(nullable)],
        )
        .map_err(|e| e.to_string())?;
        Ok((format!("Table \"{schema}.{table}\""), batch))
    }
}

/// The history file: `$QUIVER_HISTORY` (empty: none), else `~/.quiver_history`.
fn history_file() -> Option<PathBuf> {
    match std::env::var_os("QUIVER_HISTORY") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::home_dir().map(|home| home.join(".quiver_history")),
    }
}

type Editor = rustyline::Editor<SqlHelper, rustyline::history::FileHistory>;

/// The line editor's helper: Enter ends the entry only once its statements are complete.
#[derive(Default)]
struct SqlHelper {
    /// What earlier entries left unfinished (a statement interrupted by a meta command).
    carried: InputBuffer,
}

impl rustyline::Helper for SqlHelper {}
impl rustyline::completion::Completer for SqlHelper {
    type Candidate = String;
}
impl rustyline::hint::Hinter for SqlHelper {
    type Hint = String;
}
impl rustyline::highlight::Highlighter for SqlHelper {}

impl rustyline::validate::Validator for SqlHelper {
    fn validate(
        &self,
        ctx: &mut rustyline::validate::ValidationContext<'_>,
    ) -> rustyline::Result<rustyline::validate::ValidationResult> {
        Ok(if input::is_complete(&self.carried, ctx.input()) {
            rustyline::validate::ValidationResult::Valid(None)
        } else {
            rustyline::validate::ValidationResult::Incomplete
        })
    }
}

/// Ctrl-C presses (SIGINT), watched for the whole session: once watched, SIGINT no longer
/// ends the process, and each statement decides what a press means.
struct Interrupts {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
        })
    }

    /// The next press.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            // `None`: the signal driver is gone; never fire again.
            if self.signal.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Forgets presses that came in between statements.
    fn drain(&mut self) {
        #[cfg(unix)]
        while let Some(Some(())) = futures::FutureExt::now_or_never(self.signal.recv()) {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(schema: &str, name: &str, columns: &[(&str, DataType, bool)]) -> TableEntry {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, t, null)| Field::new(*n, t.clone(), *null))
            .collect();
        let options = arrow::ipc::writer::IpcWriteOptions::default();
        let arrow_flight::IpcMessage(ipc) =
            arrow_flight::SchemaAsIpc::new(&Schema::new(fields), &options)
                .try_into()
                .unwrap();
        TableEntry {
            schema: schema.into(),
            name: name.into(),
            kind: "TABLE".into(),
            ipc: Some(ipc.to_vec()),
        }
    }

    fn listing() -> TableListing {
        let mut tables = vec![
            entry(
                "public",
                "lineitem",
                &[
                    ("l_orderkey", DataType::Int64, false),
                    ("l_comment", DataType::Utf8, true),
                ],
            ),
            entry("public", "t", &[("a", DataType::Int32, true)]),
            entry("other", "t", &[("b", DataType::Int32, true)]),
            entry("system", "queries", &[("id", DataType::Utf8, false)]),
        ];
        tables.sort();
        TableListing { tables }
    }

    fn text(batch: &RecordBatch) -> String {
        arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
            .unwrap()
            .to_string()
    }

    #[test]
    fn backslash_d_lists_user_tables_sorted_without_system_schemas() {
        let (title, batch) = listing().tables_batch().unwrap();
        assert_eq!(title, "List of tables");
        let names: Vec<_> = batch
            .column(1)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        // `system.queries` is in the listing but `\d` leaves the system schemas out.
        assert_eq!(names, vec!["t", "lineitem", "t"]);
        assert!(text(&batch).contains("| public | lineitem | TABLE |"));
    }

    #[test]
    fn backslash_d_table_shows_its_columns() {
        let listing = listing();
        let (title, batch) = listing.columns_batch("lineitem").unwrap();
        assert_eq!(title, "Table \"public.lineitem\"");
        let shown = text(&batch);
        assert!(
            shown.contains("| l_orderkey | Int64 | no       |"),
            "{shown}"
        );
        assert!(
            shown.contains("| l_comment  | Utf8  | yes      |"),
            "{shown}"
        );
        // Unquoted names fold to lower case; the default schema wins; qualifiers pick.
        assert!(listing.columns_batch("LineItem").is_ok());
        assert_eq!(listing.columns_batch("t").unwrap().0, "Table \"public.t\"");
        assert_eq!(
            listing.columns_batch("other.t").unwrap().0,
            "Table \"other.t\""
        );
        assert_eq!(
            listing.columns_batch("quiver.system.queries").unwrap().0,
            "Table \"system.queries\""
        );
        assert!(
            listing
                .columns_batch("nope")
                .unwrap_err()
                .contains("no table named 'nope'")
        );
        assert!(listing.columns_batch("a.b.c.d").is_err());
    }
}
