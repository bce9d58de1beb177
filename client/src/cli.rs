//! `quiver sql`: run SQL against a Quiver server from a terminal or a script.
//!
//! `-c SQL` runs one statement, `-f FILE` runs each `;`-separated statement of a file, and with
//! neither it reads statements from standard input (a REPL on a terminal). Results print as a
//! table followed by the row count and the elapsed time. The exit code is non-zero if any
//! statement failed.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use arrow::util::pretty::pretty_format_batches;
use clap::Args;

use crate::{ClientError, QueryResult, QuiverClient};

#[derive(Debug, Clone, Args)]
pub struct SqlArgs {
    /// Server URL.
    #[arg(long, default_value = "grpc://127.0.0.1:50051", env = "QUIVER_URL")]
    pub url: String,
    /// Run this statement and exit.
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
    /// Print at most this many rows of each result (0 = all); the row count is always exact.
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

async fn run(args: SqlArgs) -> ExitCode {
    let mut client = match QuiverClient::connect_with(
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
    let statements = if let Some(sql) = &args.command {
        vec![sql.clone()]
    } else if let Some(path) = &args.file {
        match std::fs::read_to_string(path) {
            Ok(text) => split_statements(&text),
            Err(e) => {
                eprintln!("quiver sql: reading {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    } else {
        return repl(&mut client, args.max_rows).await;
    };
    let mut ok = true;
    for sql in statements {
        ok &= run_one(&mut client, &sql, args.max_rows).await;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_one(client: &mut QuiverClient, sql: &str, max_rows: usize) -> bool {
    let started = Instant::now();
    match client.query(sql).await {
        Ok(result) => {
            print_result(&result, max_rows, started.elapsed().as_secs_f64());
            true
        }
        Err(e) => {
            print_error(&e);
            false
        }
    }
}

fn print_result(result: &QueryResult, max_rows: usize, seconds: f64) {
    let rows = result.num_rows();
    if !result.schema.fields().is_empty() {
        let shown = if max_rows == 0 {
            rows
        } else {
            rows.min(max_rows)
        };
        let mut batches = Vec::new();
        let mut left = shown;
        for batch in &result.batches {
            if left == 0 {
                break;
            }
            let take = batch.num_rows().min(left);
            batches.push(batch.slice(0, take));
            left -= take;
        }
        if batches.is_empty() {
            batches.push(arrow::array::RecordBatch::new_empty(std::sync::Arc::clone(
                &result.schema,
            )));
        }
        match pretty_format_batches(&batches) {
            Ok(table) => println!("{table}"),
            Err(e) => eprintln!("cannot format the result: {e}"),
        }
        if shown < rows {
            println!("({shown} of {rows} rows shown; use --max-rows 0 for all)");
        }
    }
    let noun = if rows == 1 { "row" } else { "rows" };
    println!("{rows} {noun} in {seconds:.3} s");
}

fn print_error(e: &ClientError) {
    eprintln!("Error: {e}");
}

async fn repl(client: &mut QuiverClient, max_rows: usize) -> ExitCode {
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut buffer = String::new();
    let mut ok = true;
    let prompt = |continuation: bool| {
        if interactive {
            print!("{}", if continuation { "     -> " } else { "quiver> " });
            let _ = std::io::stdout().flush();
        }
    };
    prompt(false);
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let trimmed = line.trim();
        if buffer.is_empty() && matches!(trimmed, "\\q" | "quit" | "exit") {
            break;
        }
        buffer.push_str(&line);
        buffer.push('\n');
        if trimmed.ends_with(';') {
            for sql in split_statements(&buffer) {
                ok &= run_one(client, &sql, max_rows).await;
            }
            buffer.clear();
        }
        prompt(!buffer.trim().is_empty());
    }
    for sql in split_statements(&buffer) {
        ok &= run_one(client, &sql, max_rows).await;
    }
    if ok || interactive {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Splits a script at `;` outside quotes and comments; drops empty statements.
pub fn split_statements(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                current.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    current.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    // Line comment: skip to the end of the line.
                    for c in chars.by_ref() {
                        if c == '\n' {
                            current.push('\n');
                            break;
                        }
                    }
                }
                ';' => {
                    if !current.trim().is_empty() {
                        statements.push(current.trim().to_string());
                    }
                    current.clear();
                }
                _ => current.push(c),
            },
        }
    }
    if !current.trim().is_empty() {
        statements.push(current.trim().to_string());
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_outside_quotes_and_comments() {
        let s = split_statements("select 1; -- a; comment\nselect ';' ; ;select \"a;b\" from t");
        assert_eq!(s, vec!["select 1", "select ';'", "select \"a;b\" from t"]);
        assert!(split_statements("  ;; ").is_empty());
    }
}
