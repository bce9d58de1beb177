//! arrow-flight's own command-line client, `flight_sql_client`, against a cluster: metadata
//! commands, a plain statement, a prepared statement with a `$1` parameter, and a login with
//! `--username/--password` against a coordinator with authentication.
//!
//! The binary is built by `scripts/test` (`cargo build -p quiver-flight-sql-cli -p arrow-flight
//! --features quiver-flight-sql-cli/cli --bin flight_sql_client`) into the same target directory
//! as this test; `QUIVER_FLIGHT_SQL_CLIENT` overrides where it is looked for.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::process::built_binary;
use quiver_tests::secure::Security;
use quiver_tests::{ClusterOptions, TestCluster, within};

const CLI_LIMIT: Duration = Duration::from_secs(60);

/// arrow-flight's `flight_sql_client`, built next to the `quiver` binary.
fn cli_bin() -> PathBuf {
    built_binary(
        "flight_sql_client",
        "QUIVER_FLIGHT_SQL_CLIENT",
        "build arrow-flight's Flight SQL CLI into the same target directory first with \
         `cargo build --locked -p quiver-flight-sql-cli -p arrow-flight --features \
         quiver-flight-sql-cli/cli --bin flight_sql_client` (scripts/test does)",
    )
}

/// Runs `flight_sql_client --host .. --port .. <auth> <args>`.
async fn cli(addr: &str, auth: &[&str], args: &[&str]) -> Output {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut command = tokio::process::Command::new(cli_bin());
    command
        .args(["--host", host, "--port", port])
        .args(auth)
        .args(args)
        .kill_on_drop(true);
    within(
        CLI_LIMIT,
        &format!("flight_sql_client {args:?}"),
        command.output(),
    )
    .await
    .expect("run flight_sql_client")
}

/// Runs the CLI, fails with its output unless it succeeds; returns stdout.
async fn cli_ok(addr: &str, auth: &[&str], args: &[&str], log: impl Fn() -> String) -> String {
    let output = cli(addr, auth, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "flight_sql_client {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}\nserver log:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        log()
    );
    stdout
}

async fn lineitem_rows() -> String {
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let batches = oracle::run(&ctx, &["SELECT count(*) FROM lineitem".to_string()]).await;
    let counts = batches[0].column(0);
    arrow::util::display::array_value_to_string(counts, 0).expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_cli_against_a_cluster() {
    let bin = cli_bin();
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let addr = &cluster.coordinator_addr;
    let log = || cluster.coordinator.log_text();
    println!("{} against {addr}", bin.display());

    let out = cli_ok(addr, &[], &["catalogs"], log).await;
    assert!(out.contains("quiver"), "catalogs:\n{out}");

    let out = cli_ok(addr, &[], &["tables", "quiver"], log).await;
    assert!(out.contains("lineitem"), "tables:\n{out}");
    let out = cli_ok(
        addr,
        &[],
        &[
            "tables",
            "quiver",
            "-d",
            "public",
            "-t",
            "line%",
            "--table-types",
            "TABLE",
        ],
        log,
    )
    .await;
    assert!(
        out.contains("lineitem") && !out.contains("orders"),
        "tables line%:\n{out}"
    );

    let out = cli_ok(
        addr,
        &[],
        &["statement-query", "SELECT count(*) FROM lineitem"],
        log,
    )
    .await;
    let expected = lineitem_rows().await;
    assert!(out.contains(&expected), "count(*) = {expected}:\n{out}");

    let out = cli_ok(
        addr,
        &[],
        &[
            "prepared-statement-query",
            "SELECT n_name FROM nation WHERE n_nationkey = $1",
            "-p",
            "$1=7",
        ],
        log,
    )
    .await;
    assert!(out.contains("GERMANY"), "prepared with $1=7:\n{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_cli_with_username_and_password() {
    cli_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let security = Security::create(dir.path());
    let cluster = TestCluster::start(ClusterOptions {
        coordinator_args: security.args(false),
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let addr = &cluster.coordinator_addr;
    let log = || cluster.coordinator.log_text();
    let login = [
        "--username",
        security.user.as_str(),
        "--password",
        security.password.as_str(),
    ];

    let out = cli_ok(addr, &login, &["tables", "quiver", "-t", "nation"], log).await;
    assert!(out.contains("nation"), "tables:\n{out}");
    let out = cli_ok(
        addr,
        &login,
        &[
            "prepared-statement-query",
            "SELECT n_name FROM nation WHERE n_nationkey = $1",
            "-p",
            "$1=7",
        ],
        log,
    )
    .await;
    assert!(out.contains("GERMANY"), "prepared with $1=7:\n{out}");

    // Without credentials, or with a wrong password, the CLI fails as unauthenticated.
    for auth in [
        &[][..],
        &["--username", security.user.as_str(), "--password", "wrong"][..],
    ] {
        let output = cli(addr, auth, &["catalogs"]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{auth:?} succeeded");
        // tonic prints Code::Unauthenticated as its description or its name.
        assert!(
            stderr.contains("Unauthenticated")
                || stderr.contains("does not have valid authentication credentials"),
            "{auth:?}: not Unauthenticated:\n{stderr}"
        );
    }
}
