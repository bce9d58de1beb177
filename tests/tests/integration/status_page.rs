//! The coordinator's status page in a real browser (headless Chromium, driven by Playwright from
//! `tests/browser/status_page.mjs`), with `[auth]` on: a visit without credentials is refused; with
//! them, a long query shows stage progress that advances, and its Cancel button stops it: the
//! client's stream ends with CANCELLED and every executor is idle within 5 s. Screenshots go to
//! `target/test-artifacts/`.
//!
//! Chromium (`/usr/bin/chromium`), Node and `tests/browser/node_modules` (`npm ci`) come from
//! `scripts/test`. Without them the test skips with a message, except under CI (`CI` or
//! `QUIVER_REQUIRE_BROWSER=1`), where it fails.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{FlightClient, FlightDescriptor};
use base64::Engine as _;
use futures::StreamExt;
use prost::Message;
use quiver_tests::oracle::tpch_dataset;
use quiver_tests::secure::Security;
use quiver_tests::{ClusterOptions, TestCluster, within, workspace_root};
use tonic::Code;

use crate::QUERY_LIMIT;

/// Row pairs streamed to the client as fast as it reads them: runs far longer than the test, and
/// its last stage's rows grow all the while.
const LONG_QUERY: &str =
    "SELECT a.l_orderkey, b.l_partkey FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment";

const CHROMIUM: &str = "/usr/bin/chromium";

/// What the browser test needs, or why it cannot run.
fn browser_setup() -> Result<(PathBuf, PathBuf), String> {
    let chromium =
        PathBuf::from(std::env::var("QUIVER_CHROMIUM").unwrap_or_else(|_| CHROMIUM.to_string()));
    if !chromium.exists() {
        return Err(format!(
            "{} not found (scripts/test installs Debian's chromium)",
            chromium.display()
        ));
    }
    let node = std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("node"))
                .find(|p| p.exists())
        })
        .ok_or("node not found on PATH")?;
    let playwright = workspace_root().join("tests/browser/node_modules/playwright-core");
    if !playwright.exists() {
        return Err(format!(
            "{} not found (run `npm ci` in tests/browser; scripts/test does)",
            playwright.display()
        ));
    }
    Ok((chromium, node))
}

fn browser_required() -> bool {
    std::env::var_os("CI").is_some()
        || std::env::var("QUIVER_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_progress_and_cancels_with_auth() {
    let (chromium, node) = match browser_setup() {
        Ok(found) => found,
        Err(missing) if browser_required() => panic!("the browser test cannot run: {missing}"),
        Err(missing) => {
            eprintln!("SKIPPED status page browser test: {missing}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let security = Security::create(dir.path());
    let cluster = TestCluster::start(ClusterOptions {
        coordinator_args: security.args(false),
        http: true,
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let status_url = format!("http://{}/", cluster.http_addr(&cluster.coordinator));

    // The long query, as the page's user (Basic credentials on every call).
    let mut flight = FlightClient::new(cluster.channel().await);
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", security.user, security.password));
    flight
        .add_header("authorization", &format!("Basic {basic}"))
        .expect("header");
    let command = CommandStatementQuery {
        query: LONG_QUERY.to_string(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let info = within(
        QUERY_LIMIT,
        "get_flight_info",
        flight.get_flight_info(descriptor),
    )
    .await
    .expect("flight info");
    let metadata: serde_json::Value =
        serde_json::from_slice(&info.app_metadata).expect("app_metadata is JSON");
    let query_id = metadata["query_id"]
        .as_str()
        .expect("app_metadata names the query id")
        .to_string();
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = within(QUERY_LIMIT, "do_get", flight.do_get(ticket))
        .await
        .expect("do_get");
    // Read as fast as it comes, so that its rows keep growing; keep how it ended.
    let reader = tokio::spawn(async move {
        let mut rows = 0;
        while let Some(item) = stream.next().await {
            match item {
                Ok(batch) => rows += batch.num_rows(),
                Err(e) => return (rows, Some(e)),
            }
        }
        (rows, None)
    });

    let artifacts = workspace_root().join("target/test-artifacts");
    let mut script = tokio::process::Command::new(node);
    script
        .arg(workspace_root().join("tests/browser/status_page.mjs"))
        .current_dir(workspace_root().join("tests/browser"))
        .env("QUIVER_STATUS_URL", &status_url)
        .env("QUIVER_USER", &security.user)
        .env("QUIVER_PASSWORD", &security.password)
        .env("QUIVER_QUERY_ID", &query_id)
        .env("QUIVER_ARTIFACTS", &artifacts)
        .env("QUIVER_CHROMIUM", &chromium)
        .kill_on_drop(true);
    let output = within(
        Duration::from_secs(300),
        "the browser script",
        script.output(),
    )
    .await
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the status page script failed:\n{stdout}\n{stderr}\ncoordinator log:\n{}",
        cluster.coordinator.log_text()
    );
    let cancelled_at = Instant::now();

    let (rows, error) = within(Duration::from_secs(10), "the cancelled stream ends", reader)
        .await
        .expect("reader task");
    let error =
        error.unwrap_or_else(|| panic!("the stream ended without an error after {rows} rows"));
    let code = match &error {
        arrow_flight::error::FlightError::Tonic(status) => status.code(),
        other => panic!("the stream ended with {other}, not a gRPC status"),
    };
    assert_eq!(code, Code::Cancelled, "{error}");
    assert!(rows > 0, "the client read rows before the cancel");

    // Every executor lets go of the query's tasks within 5 s of the cancel.
    within(
        Duration::from_secs(5),
        "executors idle after the cancel",
        async {
            loop {
                let mut running = 0;
                for i in 0..cluster.executors.len() {
                    running += cluster.executor_status(i).await.tasks_running;
                }
                if running == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
}
