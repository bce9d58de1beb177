//! Managed tables: `CREATE TABLE … AS SELECT`, `INSERT INTO … SELECT/VALUES`, `INSERT OVERWRITE`,
//! `DROP TABLE`, and Flight SQL bulk ingest (create, append, replace, batches over 4 MiB), on a
//! coordinator with two executor processes. Counts are checked against single-node DataFusion; a
//! failing write leaves the table and the warehouse directory as they were; committed tables
//! survive a SIGKILLed coordinator; dropping a table deletes its files.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandStatementIngest, TableDefinitionOptions, TableExistsOption, TableNotExistOption,
};
use futures::stream;
use quiver_client::QuiverClient;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::sql::update;
use quiver_tests::{ClusterOptions, TestCluster, within};
use tonic::Code;
use tonic::transport::Channel;

use crate::QUERY_LIMIT;

async fn count(client: &mut QuiverClient, table: &str) -> i64 {
    let result = within(
        QUERY_LIMIT,
        "count",
        client.query(&format!("SELECT count(*) FROM {table}")),
    )
    .await
    .unwrap_or_else(|e| panic!("count {table}: {e}"));
    result.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("count is Int64")
        .value(0)
}

async fn oracle_count(sql: &str) -> i64 {
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let batches = oracle::run(&ctx, &[sql.to_string()]).await;
    batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("Int64")
        .value(0)
}

/// The files the catalog file at `catalog` lists for `table`, sorted.
fn listed(catalog: &std::path::Path, table: &str) -> Vec<String> {
    let mut files = quiver_tests::catalog::managed_tables(catalog)
        .remove(table)
        .map(|t| t.files)
        .unwrap_or_default();
    files.sort();
    files
}

/// Every file (temporary ones included) at the top of the table's warehouse directory.
fn files(cluster: &TestCluster, table: &str) -> Vec<String> {
    let dir = cluster.dir.path().join("warehouse").join(table);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_insert_overwrite_and_drop_managed_tables() {
    let mut cluster = TestCluster::start(ClusterOptions {
        catalog: None,
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let catalog = cluster.dir.path().join("catalog.toml");
    cluster.options.catalog = Some(catalog.clone());
    cluster.restart_coordinator();
    cluster.wait_for_live(2).await;
    let mut client = cluster.client().await;

    let selection = "SELECT l_orderkey, l_comment FROM lineitem WHERE l_orderkey < 1000";
    let expected = oracle_count(&format!("SELECT count(*) FROM ({selection})")).await;
    assert!(expected > 0);
    let created = update(&mut client, &format!("CREATE TABLE small AS {selection}"))
        .await
        .expect("CTAS");
    assert_eq!(created, expected);
    assert_eq!(count(&mut client, "small").await, expected);
    // Each writing task writes its own files: the directory holds what the catalog lists.
    let created_files = files(&cluster, "small");
    assert!(!created_files.is_empty());
    assert_eq!(created_files, listed(&catalog, "small"));

    // The same name again: AlreadyExists; IF NOT EXISTS: nothing happens.
    let again = update(&mut client, "CREATE TABLE small AS SELECT 1 AS x").await;
    assert_eq!(again.expect_err("exists").code(), Code::AlreadyExists);
    assert_eq!(
        update(
            &mut client,
            "CREATE TABLE IF NOT EXISTS small AS SELECT 1 AS x"
        )
        .await
        .expect("if not exists"),
        0
    );

    // INSERT … SELECT (distributed) and INSERT … VALUES append.
    let inserted = update(&mut client, &format!("INSERT INTO small {selection}"))
        .await
        .expect("insert select");
    assert_eq!(inserted, expected);
    assert_eq!(
        update(
            &mut client,
            "INSERT INTO small VALUES (-1, 'x'), (-2, NULL)"
        )
        .await
        .expect("insert values"),
        2
    );
    assert_eq!(count(&mut client, "small").await, 2 * expected + 2);
    // Appends only add files.
    let appended_files = files(&cluster, "small");
    assert!(
        created_files.iter().all(|f| appended_files.contains(f))
            && appended_files.len() >= created_files.len() + 2,
        "{created_files:?} -> {appended_files:?}"
    );
    assert_eq!(appended_files, listed(&catalog, "small"));

    // A write that fails midway changes nothing and leaves no file behind.
    let failing = update(
        &mut client,
        "INSERT INTO small SELECT l_orderkey / (l_linenumber - l_linenumber), l_comment FROM lineitem",
    )
    .await;
    assert!(failing.is_err(), "division by zero must fail the INSERT");
    assert_eq!(count(&mut client, "small").await, 2 * expected + 2);
    assert_eq!(files(&cluster, "small"), appended_files);

    // Writes go to managed tables only.
    let external = update(&mut client, "INSERT INTO nation VALUES (99, 'X', 1, 'y')").await;
    assert_eq!(
        external.expect_err("read-only").code(),
        Code::InvalidArgument
    );

    // Committed writes survive a SIGKILLed coordinator.
    cluster.restart_coordinator();
    cluster.wait_for_live(2).await;
    let mut client = cluster.client().await;
    assert_eq!(count(&mut client, "small").await, 2 * expected + 2);

    // INSERT OVERWRITE replaces the contents; the old files go.
    assert_eq!(
        update(&mut client, "INSERT OVERWRITE small VALUES (1, 'only')")
            .await
            .expect("overwrite"),
        1
    );
    assert_eq!(count(&mut client, "small").await, 1);
    let overwritten = files(&cluster, "small");
    assert!(!overwritten.is_empty());
    assert!(
        overwritten.iter().all(|f| !appended_files.contains(f)),
        "old files left: {overwritten:?}"
    );
    assert_eq!(overwritten, listed(&catalog, "small"));
    // All of one write: `part-<write id>-<attempt id>-<task>-<partition>-<n>.parquet`.
    let writes: std::collections::BTreeSet<&str> = overwritten
        .iter()
        .map(|f| f.rsplitn(4, '-').nth(3).expect("part-<write>-<attempt>-…"))
        .collect();
    assert_eq!(writes.len(), 1, "{overwritten:?}");

    // CREATE TABLE with declared columns, then DROP deletes the files.
    update(
        &mut client,
        "CREATE TABLE declared (id BIGINT NOT NULL, name VARCHAR)",
    )
    .await
    .expect("create declared");
    assert_eq!(count(&mut client, "declared").await, 0);
    let null_id = update(&mut client, "INSERT INTO declared VALUES (NULL, 'a')").await;
    assert!(null_id.is_err(), "NULL into a NOT NULL column must fail");
    update(&mut client, "DROP TABLE small").await.expect("drop");
    assert!(files(&cluster, "small").is_empty());
    let gone = within(
        QUERY_LIMIT,
        "query dropped",
        client.query("SELECT * FROM small"),
    )
    .await;
    assert!(gone.is_err());
}

async fn sql_client(cluster: &TestCluster) -> FlightSqlServiceClient<Channel> {
    let channel = cluster.channel().await;
    FlightSqlServiceClient::new(channel)
}

fn ingest_command(
    table: &str,
    if_missing: TableNotExistOption,
    if_exists: TableExistsOption,
) -> CommandStatementIngest {
    CommandStatementIngest {
        table_definition_options: Some(TableDefinitionOptions {
            if_not_exist: if_missing as i32,
            if_exists: if_exists as i32,
        }),
        table: table.to_string(),
        schema: None,
        catalog: None,
        temporary: false,
        transaction_id: None,
        options: Default::default(),
    }
}

/// `rows` rows of (id, a 64-byte string): 200k rows make one batch of ~14 MiB.
fn batch(rows: usize, start: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, true),
    ]));
    let ids = Int64Array::from_iter_values(start..start + rows as i64);
    let payload = StringArray::from_iter_values((0..rows).map(|i| format!("{i:064}")));
    RecordBatch::try_new(schema, vec![Arc::new(ids), Arc::new(payload)]).expect("batch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_ingest_creates_appends_and_replaces() {
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let mut sql = sql_client(&cluster).await;
    let mut client = cluster.client().await;

    let big = batch(200_000, 0);
    assert!(big.get_array_memory_size() > 4 * 1024 * 1024);
    let created = within(
        QUERY_LIMIT,
        "ingest create",
        sql.execute_ingest(
            ingest_command(
                "ingested",
                TableNotExistOption::Create,
                TableExistsOption::Fail,
            ),
            stream::iter(vec![Ok(big.clone())]),
        ),
    )
    .await
    .expect("ingest create");
    assert_eq!(created, 200_000);
    assert_eq!(count(&mut client, "ingested").await, 200_000);

    // Create again: the table exists.
    let again = within(
        QUERY_LIMIT,
        "ingest create again",
        sql.execute_ingest(
            ingest_command(
                "ingested",
                TableNotExistOption::Create,
                TableExistsOption::Fail,
            ),
            stream::iter(vec![Ok(batch(1, 0))]),
        ),
    )
    .await;
    assert!(again.is_err(), "creating an existing table must fail");

    let appended = within(
        QUERY_LIMIT,
        "ingest append",
        sql.execute_ingest(
            ingest_command(
                "ingested",
                TableNotExistOption::Fail,
                TableExistsOption::Append,
            ),
            stream::iter(vec![Ok(batch(10, 1_000_000)), Ok(batch(5, 2_000_000))]),
        ),
    )
    .await
    .expect("ingest append");
    assert_eq!(appended, 15);
    assert_eq!(count(&mut client, "ingested").await, 200_015);

    let replaced = within(
        QUERY_LIMIT,
        "ingest replace",
        sql.execute_ingest(
            ingest_command(
                "ingested",
                TableNotExistOption::Create,
                TableExistsOption::Replace,
            ),
            stream::iter(vec![Ok(batch(7, 0))]),
        ),
    )
    .await
    .expect("ingest replace");
    assert_eq!(replaced, 7);
    assert_eq!(count(&mut client, "ingested").await, 7);
    assert_eq!(
        files(&cluster, "ingested").len(),
        1,
        "replace deletes the old files"
    );

    // Appending to a missing table without CREATE fails with NotFound and creates nothing.
    let missing = within(
        QUERY_LIMIT,
        "ingest missing",
        sql.execute_ingest(
            ingest_command(
                "nowhere",
                TableNotExistOption::Fail,
                TableExistsOption::Append,
            ),
            stream::iter(vec![Ok(batch(1, 0))]),
        ),
    )
    .await;
    assert!(missing.is_err());
    assert!(files(&cluster, "nowhere").is_empty());
}

/// Durability: a coordinator SIGKILLed in the middle of an ingest restarts with the table as it
/// was before the ingest (the write never committed), and the table takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_ingest_keeps_all_or_nothing() {
    let mut cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    cluster.options.catalog = Some(cluster.dir.path().join("catalog.toml"));
    cluster.restart_coordinator();
    cluster.wait_for_live(2).await;
    let mut sql = sql_client(&cluster).await;
    within(
        QUERY_LIMIT,
        "ingest create",
        sql.execute_ingest(
            ingest_command(
                "durable",
                TableNotExistOption::Create,
                TableExistsOption::Fail,
            ),
            stream::iter(vec![Ok(batch(10, 0))]),
        ),
    )
    .await
    .expect("ingest create");

    // An append that streams slowly, killed halfway.
    let slow = futures::StreamExt::then(stream::iter(0..100), |i| async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Ok(batch(1_000, 1_000_000 + i * 1_000))
    });
    let append = tokio::spawn(async move {
        sql.execute_ingest(
            ingest_command(
                "durable",
                TableNotExistOption::Fail,
                TableExistsOption::Append,
            ),
            slow,
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert!(!append.is_finished(), "the append finished before the kill");
    cluster.restart_coordinator();
    let outcome = within(QUERY_LIMIT, "interrupted append", append)
        .await
        .expect("join");
    assert!(
        outcome.is_err(),
        "an append whose coordinator died cannot succeed"
    );
    cluster.wait_for_live(2).await;

    let mut client = cluster.client().await;
    assert_eq!(
        count(&mut client, "durable").await,
        10,
        "none of the append"
    );
    let mut sql = sql_client(&cluster).await;
    let appended = within(
        QUERY_LIMIT,
        "append after restart",
        sql.execute_ingest(
            ingest_command(
                "durable",
                TableNotExistOption::Fail,
                TableExistsOption::Append,
            ),
            stream::iter(vec![Ok(batch(5, 100))]),
        ),
    )
    .await
    .expect("append after the restart");
    assert_eq!(appended, 5);
    assert_eq!(count(&mut client, "durable").await, 15);
    // Readers only ever see committed files; the killed write left at most a hidden temp file.
    let visible: Vec<String> = files(&cluster, "durable")
        .into_iter()
        .filter(|f| !f.starts_with('.'))
        .collect();
    assert_eq!(visible.len(), 2, "{visible:?}");
}

/// A compressed batch whose buffers claim to inflate to a petabyte is refused with
/// `InvalidArgument` before arrow allocates anything (the allocation would abort the
/// coordinator); the same batch with honest sizes is ingested, and the coordinator serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_batches_that_claim_huge_decompressed_sizes() {
    use arrow::ipc::CompressionType;
    use arrow::ipc::writer::IpcWriteOptions;
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::sql::ProstMessageExt;
    use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
    use futures::TryStreamExt;
    use prost::Message;

    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let messages = |table: &str| {
        let command = ingest_command(table, TableNotExistOption::Create, TableExistsOption::Fail);
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(CompressionType::LZ4_FRAME))
            .expect("lz4");
        FlightDataEncoderBuilder::new()
            .with_options(options)
            .with_flight_descriptor(Some(descriptor))
            .build(stream::iter(vec![Ok(batch(1000, 0))]))
            .try_collect::<Vec<FlightData>>()
    };
    let put = |messages: Vec<FlightData>| async {
        let mut flight = FlightClient::new(cluster.channel().await);
        let result: Result<Vec<_>, _> = match flight
            .do_put(stream::iter(messages.into_iter().map(Ok)))
            .await
        {
            Ok(responses) => responses.try_collect().await,
            Err(e) => Err(e),
        };
        result
    };

    let mut crafted = within(QUERY_LIMIT, "encode", messages("inflated"))
        .await
        .expect("encode");
    let mut patched = 0;
    for data in crafted.iter_mut().filter(|d| !d.data_body.is_empty()) {
        let header = arrow::ipc::root_as_message(&data.data_header).expect("IPC header");
        let buffers = header
            .header_as_record_batch()
            .and_then(|b| b.buffers())
            .expect("batch buffers");
        let mut body = data.data_body.to_vec();
        for buffer in buffers.iter().filter(|b| b.length() >= 8) {
            let at = buffer.offset() as usize;
            body[at..at + 8].copy_from_slice(&(1i64 << 50).to_le_bytes());
            patched += 1;
        }
        data.data_body = body.into();
    }
    assert!(patched > 0, "no compressed buffer to patch");
    let err = within(QUERY_LIMIT, "crafted ingest", put(crafted))
        .await
        .expect_err("a petabyte batch is refused");
    let arrow_flight::error::FlightError::Tonic(status) = &err else {
        panic!("not a status: {err}");
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let honest = within(QUERY_LIMIT, "encode", messages("compressed"))
        .await
        .expect("encode");
    within(QUERY_LIMIT, "honest ingest", put(honest))
        .await
        .expect("a compressed batch with honest sizes is ingested");
    let mut client = cluster.client().await;
    assert_eq!(count(&mut client, "compressed").await, 1000);
    let missing = within(
        QUERY_LIMIT,
        "refused table",
        client.query("SELECT count(*) FROM inflated"),
    )
    .await
    .expect_err("the refused ingest created nothing");
    assert_eq!(missing.status().map(|s| s.code()), Some(Code::NotFound));
}

/// A message over `--max-message-bytes` is refused with `ResourceExhausted` naming the flag;
/// arrow-flight's usual 2 MiB messages go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_messages_over_the_size_limit() {
    use arrow_flight::encode::FlightDataEncoderBuilder;
    use arrow_flight::sql::ProstMessageExt;
    use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
    use futures::TryStreamExt;
    use prost::Message;

    let cluster = TestCluster::start(ClusterOptions {
        coordinator_args: vec!["--max-message-bytes".to_string(), "4194304".to_string()],
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let big = batch(200_000, 0);
    assert!(big.get_array_memory_size() > 8 << 20);
    let command = ingest_command(
        "oversized",
        TableNotExistOption::Create,
        TableExistsOption::Fail,
    );
    let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
    // One message for the whole batch, not arrow-flight's default 2 MiB pieces.
    let messages: Vec<FlightData> = within(
        QUERY_LIMIT,
        "encode",
        FlightDataEncoderBuilder::new()
            .with_max_flight_data_size(usize::MAX)
            .with_flight_descriptor(Some(descriptor))
            .build(stream::iter(vec![Ok(big.clone())]))
            .try_collect(),
    )
    .await
    .expect("encode");
    let mut flight = FlightClient::new(cluster.channel().await);
    let err = within(QUERY_LIMIT, "oversized ingest", async {
        match flight
            .do_put(stream::iter(messages.into_iter().map(Ok)))
            .await
        {
            Ok(responses) => responses.try_collect::<Vec<_>>().await.map(|_| ()),
            Err(e) => Err(e),
        }
    })
    .await
    .expect_err("over the message limit");
    let arrow_flight::error::FlightError::Tonic(status) = &err else {
        panic!("not a status: {err}");
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-message-bytes"),
        "{status:?}"
    );

    // The same rows in arrow-flight's default pieces go through.
    let mut sql = sql_client(&cluster).await;
    let rows = within(
        QUERY_LIMIT,
        "chunked ingest",
        sql.execute_ingest(command, stream::iter(vec![Ok(big)])),
    )
    .await
    .expect("the same batch in 2 MiB messages");
    assert_eq!(rows, 200_000);
}
