//! The query log as clients see it: `system.queries` shows a running query (with its executors
//! and stage progress) and then its final state; `QueryStatus` answers the same as JSON; a user
//! who is not an administrator cannot cancel another user's query (`PERMISSION_DENIED`, by SQL
//! `CALL system.cancel_query` and by the `CancelQueryById` action), an administrator can, and the
//! executors then stop its tasks; a failed query keeps its code; `system.executors` and
//! `system.tables` describe the cluster and its tables.

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::UInt64Type;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt};
use arrow_flight::{Action, FlightClient, FlightDescriptor};
use futures::StreamExt;
use prost::Message;
use quiver_client::QuiverClient;
use tonic::Code;

use quiver_tests::oracle::tpch_dataset;
use quiver_tests::{ClusterOptions, TestCluster, within};

use crate::QUERY_LIMIT;

/// Runs far longer than the test waits.
const ENDLESS: &str = "SELECT count(*) FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment";
const PASSWORD: &str = "pass word";
const LIMIT: Duration = Duration::from_secs(30);

fn write_config(dir: &Path) -> std::path::PathBuf {
    let hash = quiver_server::hash_password(PASSWORD, 1_000).expect("hash");
    let mut text =
        "[auth]\ntoken_secret = \"quiver-test-token-secret-0123456789abcdef\"\n".to_string();
    for (name, admin) in [("alice", false), ("bob", false), ("root", true)] {
        text.push_str(&format!(
            "\n[[auth.users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nadmin = {admin}\n"
        ));
    }
    let path = dir.join("quiver.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn login(cluster: &TestCluster, user: &str) -> QuiverClient {
    let mut client = cluster.client().await;
    within(LIMIT, "login", client.login(user, PASSWORD))
        .await
        .expect("login");
    client
}

/// A raw Flight client sending `client`'s token.
async fn flight(cluster: &TestCluster, client: &QuiverClient) -> FlightClient {
    let mut flight = FlightClient::new(cluster.channel().await);
    flight
        .add_header(
            "authorization",
            &format!("Bearer {}", client.token().expect("logged in")),
        )
        .expect("header");
    flight
}

async fn query(client: &mut QuiverClient, sql: &str) -> Vec<RecordBatch> {
    within(QUERY_LIMIT, sql, client.query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .batches
}

/// The one row `system.queries` has for `id`: (state, error_code, tasks_total, executors).
async fn query_row(
    client: &mut QuiverClient,
    id: &str,
) -> Option<(String, Option<String>, u64, String)> {
    let sql = format!(
        "SELECT state, error_code, tasks_total, executors FROM system.queries WHERE query_id = '{id}'"
    );
    let batches = query(client, &sql).await;
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let error = batch.column(1).as_string::<i32>();
    Some((
        batch.column(0).as_string::<i32>().value(0).to_string(),
        (!error.is_null(0)).then(|| error.value(0).to_string()),
        batch.column(2).as_primitive::<UInt64Type>().value(0),
        batch.column(3).as_string::<i32>().value(0).to_string(),
    ))
}

async fn action(
    flight: &mut FlightClient,
    kind: &str,
    body: &str,
) -> Result<Vec<u8>, tonic::Status> {
    let action = Action::new(kind, body.as_bytes().to_vec());
    let mut results = within(LIMIT, kind, flight.do_action(action))
        .await
        .map_err(|e| match e {
            arrow_flight::error::FlightError::Tonic(status) => *status,
            other => tonic::Status::unknown(other.to_string()),
        })?;
    let mut body = Vec::new();
    while let Some(item) = within(LIMIT, kind, results.next()).await {
        body.extend_from_slice(&item.map_err(|e| tonic::Status::unknown(e.to_string()))?);
    }
    Ok(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_show_queries_and_only_owners_or_admins_cancel_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path());
    let options = ClusterOptions {
        // The join's broadcast in a stage of its own (not inlined): the query then runs on
        // both executors.
        coordinator_args: vec![
            "--config".into(),
            config.display().to_string(),
            "--inline-broadcast-bytes".into(),
            "0".into(),
        ],
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    let alice = login(&cluster, "alice").await;
    let mut bob = login(&cluster, "bob").await;
    let mut root = login(&cluster, "root").await;

    // Alice starts a long query; its FlightInfo names its id.
    let mut alice_flight = flight(&cluster, &alice).await;
    let command = CommandStatementQuery {
        query: ENDLESS.to_string(),
        transaction_id: None,
    };
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    let info = within(
        LIMIT,
        "get_flight_info",
        alice_flight.get_flight_info(descriptor),
    )
    .await
    .expect("flight info");
    let metadata: serde_json::Value =
        serde_json::from_slice(&info.app_metadata).expect("app_metadata is JSON");
    let id = metadata["query_id"].as_str().expect("query_id").to_string();
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = within(LIMIT, "do_get", alice_flight.do_get(ticket))
        .await
        .expect("do_get");
    let reader = tokio::spawn(async move {
        let mut last = None;
        while let Some(item) = stream.next().await {
            last = Some(item.map(|_| ()));
        }
        last
    });

    // Bob sees it running on both executors, with stages whose tasks run.
    let started = Instant::now();
    let (state, _, tasks_total, executors) = loop {
        match query_row(&mut bob, &id).await {
            Some(row) if row.0 == "running" && row.2 > 0 => break row,
            row => assert!(
                started.elapsed() < LIMIT,
                "query {id} not seen running with tasks: {row:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(state, "running");
    assert!(tasks_total >= 2, "{tasks_total} tasks");
    assert_eq!(executors.split(',').count(), 2, "{executors}");
    let mut bob_flight = flight(&cluster, &bob).await;
    let started = Instant::now();
    loop {
        let status = action(&mut bob_flight, "QueryStatus", &id)
            .await
            .expect("status");
        let status: serde_json::Value = serde_json::from_slice(&status).expect("JSON");
        assert_eq!(status["id"], id.as_str());
        assert_eq!(status["user"], "alice");
        let running: u64 = status["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .map(|s| s["tasks_running"].as_u64().unwrap_or(0))
            .sum();
        if running > 0 {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "no running task reported: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bob may not stop it, by SQL or by action; nobody can stop an unknown query.
    let call = format!("CALL system.cancel_query('{id}')");
    let denied = within(LIMIT, "bob cancels", bob.update(&call))
        .await
        .expect_err("not bob's query");
    assert_eq!(
        denied.status().map(|s| s.code()),
        Some(Code::PermissionDenied),
        "{denied}"
    );
    let denied = action(&mut bob_flight, "CancelQueryById", &id)
        .await
        .expect_err("not bob's query");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    let unknown = within(
        LIMIT,
        "cancel unknown",
        root.update("CALL system.cancel_query('nope')"),
    )
    .await
    .expect_err("no such query");
    assert_eq!(
        unknown.status().map(|s| s.code()),
        Some(Code::NotFound),
        "{unknown}"
    );
    assert_eq!(
        query_row(&mut bob, &id).await.map(|r| r.0).as_deref(),
        Some("running")
    );

    // The administrator may: Alice's stream ends with CANCELLED and the executors stop.
    within(LIMIT, "root cancels", root.update(&call))
        .await
        .expect("an admin cancels any query");
    let ended = within(LIMIT, "cancelled stream ends", reader)
        .await
        .expect("reader task");
    match ended {
        Some(Err(arrow_flight::error::FlightError::Tonic(status))) => {
            assert_eq!(status.code(), Code::Cancelled, "{status}")
        }
        other => panic!("expected CANCELLED, got {other:?}"),
    }
    let started = Instant::now();
    for index in 0..2 {
        loop {
            let status = cluster.executor_status(index).await;
            if status.tasks_running == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "executor {index} still runs {} tasks",
                status.tasks_running
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (state, code, _, _) = query_row(&mut bob, &id).await.expect("in the history");
    assert_eq!(
        (state.as_str(), code.as_deref()),
        ("cancelled", Some("CANCELLED"))
    );

    // A failed query keeps its code; a finished one its rows.
    let mut alice = alice;
    let failed = within(LIMIT, "missing table", alice.query("SELECT * FROM nope"))
        .await
        .expect_err("no such table");
    assert_eq!(failed.status().map(|s| s.code()), Some(Code::NotFound));
    query(&mut alice, "SELECT n_name FROM nation").await;
    let batches = query(
        &mut bob,
        "SELECT sql, state, error_code, rows FROM system.queries \
         WHERE user_name = 'alice' AND state <> 'cancelled' ORDER BY started",
    )
    .await;
    let rows: Vec<(String, String, Option<String>, u64)> = batches
        .iter()
        .flat_map(|b| {
            let error = b.column(2).as_string::<i32>();
            (0..b.num_rows()).map(move |i| {
                (
                    b.column(0).as_string::<i32>().value(i).to_string(),
                    b.column(1).as_string::<i32>().value(i).to_string(),
                    (!error.is_null(i)).then(|| error.value(i).to_string()),
                    b.column(3).as_primitive::<UInt64Type>().value(i),
                )
            })
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "SELECT * FROM nope".to_string(),
                "failed".to_string(),
                Some("NOT_FOUND".to_string()),
                0
            ),
            (
                "SELECT n_name FROM nation".to_string(),
                "finished".to_string(),
                None,
                25
            ),
        ]
    );

    // The cluster and its tables.
    let executors = query(&mut bob, "SELECT worker_url FROM system.executors").await;
    assert_eq!(executors.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
    let tables = query(
        &mut bob,
        "SELECT files, size_bytes FROM system.tables WHERE table_name = 'lineitem'",
    )
    .await;
    let batch = tables
        .iter()
        .find(|b| b.num_rows() > 0)
        .expect("lineitem listed");
    assert!(batch.column(0).as_primitive::<UInt64Type>().value(0) >= 1);
    assert!(batch.column(1).as_primitive::<UInt64Type>().value(0) > 1000);
}
