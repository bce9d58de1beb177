//! Logs with real processes: with `--log-format json` every node writes one JSON object a line,
//! and the query id of a statement (its `FlightInfo.app_metadata`, or its ticket's) appears on
//! the coordinator's lines about that query and on the lines of every executor it ran on.

use arrow_flight::sql::{Any, TicketStatementQuery};
use futures::TryStreamExt;
use prost::Message;
use quiver_proto::frontdoor::StatementTicket;
use quiver_tests::cluster::RawStatement;
use quiver_tests::oracle::tpch_dataset;
use quiver_tests::process::QuiverProcess;
use quiver_tests::{ClusterOptions, TestCluster, within};
use serde_json::Value;

use crate::QUERY_LIMIT;

/// The query id of a statement's `FlightInfo`: its `app_metadata` (`{"query_id": …}`) when the
/// coordinator sets it, else the id inside its ticket.
fn query_id(info: &arrow_flight::FlightInfo) -> String {
    if let Ok(Value::Object(meta)) = serde_json::from_slice::<Value>(&info.app_metadata)
        && let Some(Value::String(id)) = meta.get("query_id")
    {
        return id.clone();
    }
    let ticket = info.endpoint[0].ticket.as_ref().expect("a ticket");
    let any = Any::decode(ticket.ticket.as_ref()).expect("a Flight SQL ticket");
    let statement: TicketStatementQuery = any
        .unpack()
        .expect("a statement ticket")
        .expect("a statement ticket");
    StatementTicket::decode(statement.statement_handle.as_ref())
        .expect("a Quiver ticket")
        .query_id
}

/// Every line of `process`'s log as JSON; fails on a line that is not an object.
fn json_lines(process: &QuiverProcess) -> Vec<Value> {
    process
        .log_text()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value @ Value::Object(_)) => value,
            _ => panic!(
                "{}: a log line that is no JSON object: {line}",
                process.name
            ),
        })
        .collect()
}

/// Whether a log line was logged inside query `id`'s span.
fn about(line: &Value, id: &str) -> bool {
    line["spans"]
        .as_array()
        .is_some_and(|spans| spans.iter().any(|s| s["query_id"] == id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_query_id_on_every_node() {
    let json = vec!["--log-format".to_string(), "json".to_string()];
    let options = ClusterOptions {
        coordinator_args: json.clone(),
        executor_args: json,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    // Spread over both executors (small scan partitions; `l_comment`, the widest column, makes
    // the scan big enough for several).
    let RawStatement { info, stream, .. } = cluster
        .start_statement(
            "SELECT l_returnflag, count(*), max(l_comment) FROM lineitem GROUP BY l_returnflag",
        )
        .await;
    let batches: Vec<_> = within(QUERY_LIMIT, "the query", stream.try_collect::<Vec<_>>())
        .await
        .expect("the query");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    let id = query_id(&info);
    assert_eq!(id.len(), 22, "not a query id: {id}");

    let coordinator = json_lines(&cluster.coordinator);
    let started = coordinator
        .iter()
        .find(|line| about(line, &id) && line["fields"]["message"] == "query started")
        .unwrap_or_else(|| {
            panic!(
                "no 'query started' line for {id} on the coordinator:\n{}",
                cluster.coordinator.log_text()
            )
        });
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["span"]["name"], "query");

    for executor in &cluster.executors {
        let lines = json_lines(executor);
        let tasks = lines
            .iter()
            .filter(|line| about(line, &id) && line["fields"]["message"] == "task started")
            .count();
        assert!(
            tasks > 0,
            "{} logged no task of query {id}:\n{}",
            executor.name,
            executor.log_text()
        );
        // Lines about no query carry no query id.
        assert!(lines.iter().any(|line| line["spans"].is_null()));
    }
}
