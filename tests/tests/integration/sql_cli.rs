//! `quiver sql` as a person uses it: the REPL on a real terminal (tmux, typed keys, the screen
//! read back) and `-c` runs whose output is parsed.
//!
//! Under tmux: a long query shows a live progress line that moves, Ctrl-C cancels it (the
//! executors stop its tasks) and the prompt returns; Ctrl-C at the prompt clears the line; a
//! statement spans lines until `;`; `\d` and `\d TABLE` describe the catalog; an unknown meta
//! command is refused, not sent; an error prints as `ERROR (NOT_FOUND): ...`; `\q` exits; the
//! history is there in the next session. The test needs `tmux` (`scripts/test` installs it):
//! under `CI` it fails without it, elsewhere it is skipped. With `-c`: CSV and JSON output, a
//! result written to Parquet and Arrow files (read back and compared with single-node
//! DataFusion), and errors with their codes and a non-zero exit status.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::process::quiver_bin;
use quiver_tests::{ClusterOptions, TestCluster, within};

const CLI_LIMIT: Duration = Duration::from_secs(60);
/// How long the screen may take to show what a keystroke caused.
const SCREEN_LIMIT: Duration = Duration::from_secs(30);

/// Runs for minutes on the test data, streaming rows all along (about one pair in a thousand
/// passes the filter), so the progress line has rows to count when Ctrl-C comes.
const LONG_QUERY: &str = "SELECT a.l_orderkey, b.l_orderkey FROM lineitem a, lineitem b \
                          WHERE a.l_comment < b.l_comment AND a.l_quantity + b.l_quantity = 3;";

async fn quiver_sql(url: &str, args: &[&str]) -> Output {
    within(
        CLI_LIMIT,
        "quiver sql",
        tokio::process::Command::new(quiver_bin())
            .args(["sql", "--url", url])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run quiver sql")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A tmux server of this test alone (its own socket), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// `tmux` if installed; `None` (skip) if not, except under CI, which must run this test.
    fn find() -> Option<()> {
        let found = std::process::Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
            assert!(
                !ci,
                "tmux is missing: scripts/test installs it (apt-get install tmux)"
            );
            eprintln!("skipped: tmux is not installed");
            return None;
        }
        Some(())
    }

    /// Starts `command` in a new 200x50 session named `quiver` (wide enough that no typed
    /// statement wraps).
    fn start(dir: &Path, command: &str, env: &[(&str, &str)]) -> Self {
        let tmux = Self {
            socket: dir.join("tmux.sock"),
        };
        let mut cmd = std::process::Command::new("tmux");
        cmd.arg("-S")
            .arg(&tmux.socket)
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "quiver"])
            .args(["-x", "200", "-y", "50"]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        let status = cmd.arg(command).status().expect("run tmux");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn tmux(&self, args: &[&str]) -> Output {
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Types `keys` literally.
    fn type_text(&self, keys: &str) {
        // tmux reads an argument ending in `;` as a command separator: type that one as hex.
        let (body, semicolon) = match keys.strip_suffix(';') {
            Some(body) => (body, true),
            None => (keys, false),
        };
        if !body.is_empty() {
            let out = self.tmux(&["send-keys", "-t", "quiver", "-l", body]);
            assert!(out.status.success(), "send-keys: {}", text(&out.stderr));
        }
        if semicolon {
            let out = self.tmux(&["send-keys", "-t", "quiver", "-H", "3b"]);
            assert!(out.status.success(), "send-keys ;: {}", text(&out.stderr));
        }
    }

    /// Presses a key (`Enter`, `C-c`, `Up`).
    fn press(&self, key: &str) {
        let out = self.tmux(&["send-keys", "-t", "quiver", key]);
        assert!(
            out.status.success(),
            "send-keys {key}: {}",
            text(&out.stderr)
        );
    }

    fn line(&self, keys: &str) {
        self.type_text(keys);
        self.press("Enter");
    }

    /// The screen and its scrollback.
    fn screen(&self) -> String {
        text(
            &self
                .tmux(&["capture-pane", "-p", "-t", "quiver", "-S", "-2000"])
                .stdout,
        )
    }

    /// Whether the session (the program in it) is still running.
    fn alive(&self) -> bool {
        self.tmux(&["has-session", "-t", "quiver"]).status.success()
    }

    /// Waits until `test` holds for the screen; returns that screen.
    async fn wait_for(&self, what: &str, test: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN_LIMIT;
        loop {
            let screen = self.screen();
            if test(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen did not show {what} within {SCREEN_LIMIT:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the screen's last non-empty line is the prompt (and `test` holds).
    async fn wait_for_prompt(&self, what: &str, test: impl Fn(&str) -> bool) -> String {
        self.wait_for(what, |s| last_line(s) == "quiver>" && test(s))
            .await
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

fn last_line(screen: &str) -> &str {
    screen
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// The progress line's numbers: seconds, rows, and tasks done if shown
/// (`12.3 s  1,234 rows  stages 1/3  tasks 5/8  (Ctrl-C cancels)`).
fn progress(screen: &str) -> Option<(f64, u64, Option<u64>)> {
    let line = last_line(screen);
    if !line.ends_with("(Ctrl-C cancels)") {
        return None;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    let seconds = words.first()?.parse().ok()?;
    let rows = words.get(2)?.replace(',', "").parse().ok()?;
    let tasks = words
        .iter()
        .position(|w| *w == "tasks")
        .and_then(|i| words.get(i + 1))
        .and_then(|t| t.split('/').next())
        .and_then(|t| t.parse().ok());
    Some((seconds, rows, tasks))
}

/// Whether no executor reports a running task.
async fn executors_idle(cluster: &TestCluster) -> bool {
    let mut idle = true;
    for i in 0..cluster.executors.len() {
        idle &= cluster.executor_status(i).await.tasks_running == 0;
    }
    idle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repl_under_a_terminal() {
    if Tmux::find().is_none() {
        return;
    }
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let history = dir.path().join("history");
    let history_env = history.display().to_string();
    let command = format!("{} sql --url {}", quiver_bin().display(), cluster.url());
    let env = [("QUIVER_HISTORY", history_env.as_str())];
    let tmux = Tmux::start(dir.path(), &command, &env);
    tmux.wait_for_prompt("the prompt", |_| true).await;

    // A long query: the progress line appears and moves.
    tmux.line(LONG_QUERY);
    let first = tmux
        .wait_for("a progress line with rows", |s| {
            progress(s).is_some_and(|(_, rows, _)| rows > 0)
        })
        .await;
    let (seconds, rows, tasks) = progress(&first).expect("progress");
    tmux.wait_for("the progress line moving", |s| {
        progress(s).is_some_and(|(s2, r2, t2)| s2 > seconds && (r2 > rows || t2 > tasks))
    })
    .await;

    // Ctrl-C cancels it: the executors stop its tasks and the prompt returns.
    tmux.press("C-c");
    let cancelled = Instant::now();
    let screen = tmux
        .wait_for_prompt("the prompt after Ctrl-C", |s| s.contains("ERROR"))
        .await;
    assert!(
        screen.contains("ERROR (CANCELLED)") || screen.contains("ERROR: cancelled"),
        "{screen}"
    );
    assert!(
        progress(&screen).is_none(),
        "the progress line is erased:\n{screen}"
    );
    within(
        Duration::from_secs(10),
        "executors stop the cancelled query",
        async {
            while !executors_idle(&cluster).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert!(cancelled.elapsed() < Duration::from_secs(10));

    // Ctrl-C at the prompt clears the line; statements span lines until `;`.
    tmux.type_text("SELECT 'never run'");
    tmux.press("C-c");
    tmux.line("SELECT 40 +");
    tmux.line("2 AS answer;");
    let screen = tmux
        .wait_for_prompt("the multi-line result", |s| s.contains("| 42 "))
        .await;
    assert!(!screen.contains("| never run"), "{screen}");

    // The catalog, a table's columns, an unknown meta command, a server error.
    tmux.line("\\d");
    tmux.wait_for_prompt("the table list", |s| {
        s.contains("List of tables") && s.contains("| public | lineitem |")
    })
    .await;
    tmux.line("\\d lineitem");
    tmux.wait_for_prompt("lineitem's columns", |s| {
        s.contains("Table \"public.lineitem\"") && s.contains("| l_orderkey ")
    })
    .await;
    tmux.line("\\nope");
    tmux.wait_for_prompt("the unknown meta command refused", |s| {
        s.contains("ERROR: invalid command \\nope")
    })
    .await;
    tmux.line("SELECT * FROM nope;");
    tmux.wait_for_prompt("the server's error", |s| {
        s.contains("ERROR (NOT_FOUND): table 'nope' not found")
    })
    .await;
    let screen = tmux.screen();
    assert!(
        !screen.contains("Some requested entity") && !screen.contains("Error during planning"),
        "{screen}"
    );

    // `\q` leaves; the history is there for the next session.
    tmux.line("\\q");
    within(Duration::from_secs(10), "quiver sql exits", async {
        while tmux.alive() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let saved = std::fs::read_to_string(&history).expect("the history file");
    assert!(
        saved.contains("SELECT * FROM nope;") && saved.contains("answer"),
        "{saved}"
    );
    drop(tmux);
    let tmux = Tmux::start(dir.path(), &command, &env);
    tmux.wait_for_prompt("the prompt", |_| true).await;
    tmux.press("Up");
    tmux.wait_for("the last statement recalled", |s| {
        last_line(s) == "quiver> \\q"
    })
    .await;
    tmux.press("C-c");
    tmux.press("C-d");
    within(Duration::from_secs(10), "Ctrl-D exits", async {
        while tmux.alive() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

const NATIONS: &str = "SELECT n_nationkey, n_name, n_regionkey FROM nation ORDER BY n_nationkey";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_mode_formats_files_and_errors() {
    let cluster = TestCluster::start(ClusterOptions {
        executors: 1,
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let url = cluster.url();

    let out = quiver_sql(&url, &["--format", "csv", "-c", NATIONS]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv = text(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 26, "{csv}");
    assert_eq!(lines[0], "n_nationkey,n_name,n_regionkey");
    assert_eq!(lines[1], "0,ALGERIA,0");
    assert_eq!(lines[25], "24,UNITED STATES,1");

    let out = quiver_sql(&url, &["--format", "json", "-c", NATIONS]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    let rows = json.as_array().expect("an array");
    assert_eq!(rows.len(), 25);
    assert_eq!(
        rows[7],
        serde_json::json!({"n_nationkey": 7, "n_name": "GERMANY", "n_regionkey": 3})
    );

    // Files: the result read back equals single-node DataFusion's.
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let sql = "SELECT l_orderkey, l_linenumber, l_extendedprice, l_shipdate, l_comment \
               FROM lineitem WHERE l_orderkey < 500";
    let expected = oracle::run(&ctx, &[sql.to_string()]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["result.parquet", "result.arrow"] {
        let path = dir.path().join(name);
        let path_arg = path.display().to_string();
        let out = quiver_sql(&url, &["--output", &path_arg, "-c", sql]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains(" rows written to "), "{stdout}");
        let back = read_file(&path);
        compare(&expected, &back, false).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // `\g FILE` after a statement writes it too.
    let path = dir.path().join("again.parquet");
    let script = format!("{NATIONS} \\g {}", path.display());
    let out = quiver_sql(&url, &["-c", &script]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        read_file(&path).iter().map(|b| b.num_rows()).sum::<usize>(),
        25
    );

    // Errors: the server's code and message, a non-zero exit; nothing is left of the file.
    let failing = dir.path().join("failing.parquet");
    let failing_arg = failing.display().to_string();
    let out = quiver_sql(
        &url,
        &["--output", &failing_arg, "-c", "SELECT * FROM nope"],
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim(),
        "ERROR (NOT_FOUND): table 'nope' not found"
    );
    assert!(!failing.exists());
    let out = quiver_sql(&url, &["-c", "SELEC 1"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "ERROR (INVALID_ARGUMENT): syntax error: Expected: an SQL statement, found: SELEC"
        ),
        "{stderr}"
    );
    let out = quiver_sql(&url, &["-c", "\\nope"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("ERROR: invalid command \\nope"));
    // One failing statement among good ones still fails the run; the good ones print.
    let out = quiver_sql(
        &url,
        &[
            "-c",
            "SELECT 1 AS one; SELECT * FROM nope; SELECT 2 AS two;",
        ],
    )
    .await;
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("| one") && stdout.contains("| two"),
        "{stdout}"
    );

    // Meta commands work in -c too; `\x` and `\timing off` change how results print.
    let out = quiver_sql(&url, &["-c", "\\d nation"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("| n_name "),
        "{}",
        text(&out.stdout)
    );
    let script = "\\x\n\\timing off\nSELECT n_name FROM nation WHERE n_nationkey = 7;";
    let out = quiver_sql(&url, &["-c", script]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("-[ RECORD 1 ]") && stdout.contains("n_name | GERMANY"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("\n1 row"), "{stdout}");
}

/// The batches of a Parquet or Arrow IPC file.
fn read_file(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "parquet") {
        datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 8192)
            .expect("a Parquet file")
            .collect::<Result<_, _>>()
            .expect("Parquet batches")
    } else {
        arrow::ipc::reader::FileReader::try_new(file, None)
            .expect("an Arrow IPC file")
            .collect::<Result<_, _>>()
            .expect("IPC batches")
    }
}
