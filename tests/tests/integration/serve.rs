//! `quiver serve` as a newcomer runs it: the demo dataset is generated on first start and reused
//! on the next, and `quiver sql` (-c, -f, errors) talks to it.

use std::time::Duration;

use quiver_tests::process::{QuiverProcess, quiver_bin, spawn_serve};
use quiver_tests::{oracle, tpch_queries_dir, within};

const START_LIMIT: Duration = Duration::from_secs(120);

async fn quiver_sql(url: &str, args: &[&str]) -> std::process::Output {
    within(
        Duration::from_secs(60),
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

fn serve(dir: &std::path::Path, data: &std::path::Path) -> QuiverProcess {
    spawn_serve(dir, data, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_generates_the_demo_and_quiver_sql_queries_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = serve(dir.path(), &data);
    let url = format!("grpc://{}", server.wait_for_address(START_LIMIT));

    let dataset = quiver_server::tpch::dataset_dir(&data, 0.01);
    let ctx = oracle::tpch_context(&dataset).await;
    let expected = oracle::run(&ctx, &["SELECT count(*) FROM lineitem".to_string()]).await;
    let count = arrow::array::cast::as_primitive_array::<arrow::datatypes::Int64Type>(
        expected[0].column(0),
    )
    .value(0);

    let out = quiver_sql(&url, &["-c", "SELECT count(*) AS n FROM lineitem"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("| {count}")), "{stdout}");
    assert!(stdout.contains("1 row in "), "{stdout}");

    // A file of three statements (q15: create view, query, drop view).
    let q15 = tpch_queries_dir().join("q15.sql");
    let out = quiver_sql(&url, &["-f", &q15.display().to_string()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("s_suppkey") && stdout.matches(" in ").count() == 3,
        "{stdout}"
    );

    // Errors go to stderr with their code, and the exit status says so.
    let out = quiver_sql(&url, &["-c", "SELECT * FROM no_such_table"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no_such_table") && stderr.contains("not found"),
        "{stderr}"
    );

    // A second start reuses the generated data.
    let marker = std::fs::metadata(dataset.join("_SUCCESS"))
        .and_then(|m| m.modified())
        .expect("marker");
    server.kill();
    let mut server = serve(dir.path(), &data);
    let url = format!("grpc://{}", server.wait_for_address(START_LIMIT));
    let again = std::fs::metadata(dataset.join("_SUCCESS"))
        .and_then(|m| m.modified())
        .expect("marker");
    assert_eq!(marker, again, "the dataset was generated again");
    let out = quiver_sql(&url, &["-c", "SELECT count(*) FROM nation"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("| 25"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
