//! The Flight SQL front door through arrow-flight's own Flight SQL client: metadata calls with
//! their exact schemas, prepared statements whose announced schema is the streamed one, empty
//! results with a schema, plain types on the wire, and clear status codes for bad input.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetTables,
    CommandGetXdbcTypeInfo,
};
use futures::TryStreamExt;
use quiver_tests::oracle::tpch_dataset;
use quiver_tests::{ClusterOptions, TestCluster, within};
use tonic::Code;
use tonic::transport::Channel;

use crate::QUERY_LIMIT;

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        assert!(endpoint.location.is_empty(), "endpoints carry no location");
        let ticket = endpoint.ticket.expect("ticket");
        let stream = within(QUERY_LIMIT, "do_get", client.do_get(ticket))
            .await
            .expect("do_get");
        batches.extend(
            within(QUERY_LIMIT, "stream", stream.try_collect::<Vec<_>>())
                .await
                .expect("stream"),
        );
    }
    batches
}

/// Fetches an empty result; returns the schema the stream carried.
async fn fetch_empty(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> SchemaRef {
    let ticket = info.endpoint[0].ticket.clone().expect("ticket");
    let mut stream = within(QUERY_LIMIT, "do_get", client.do_get(ticket))
        .await
        .expect("do_get");
    let mut rows = 0;
    while let Some(batch) = within(QUERY_LIMIT, "stream", stream.try_next())
        .await
        .expect("stream")
    {
        rows += batch.num_rows();
    }
    assert_eq!(rows, 0);
    Arc::clone(stream.schema().expect("the stream carries a schema"))
}

fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b
                .column(column)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("utf8")
                .clone();
            (0..a.len()).map(move |i| a.value(i).to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_sql_client_metadata_statements_and_errors() {
    let options = ClusterOptions {
        executors: 1,
        ..ClusterOptions::tpch(&tpch_dataset())
    };
    let cluster = TestCluster::start(options).await;
    let channel = cluster.channel().await;
    let mut client = FlightSqlServiceClient::new(channel);

    // Catalogs, schemas, table types.
    let info = client.get_catalogs().await.expect("catalogs");
    let catalogs = fetch(&mut client, info).await;
    assert!(strings(&catalogs, 0).contains(&"quiver".to_string()));
    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .expect("schemas");
    let schemas = fetch(&mut client, info).await;
    assert!(strings(&schemas, 1).contains(&"public".to_string()));
    let info = client.get_table_types().await.expect("table types");
    let types = fetch(&mut client, info).await;
    assert_eq!(strings(&types, 0), vec!["TABLE", "VIEW"]);

    // Tables with their schemas; BASE TABLE and TABLE are synonyms; LIKE patterns apply.
    for table_type in ["TABLE", "BASE TABLE"] {
        let info = client
            .get_tables(CommandGetTables {
                catalog: Some("quiver".into()),
                db_schema_filter_pattern: Some("pub%".into()),
                table_name_filter_pattern: Some("line%".into()),
                table_types: vec![table_type.into()],
                include_schema: true,
            })
            .await
            .expect("tables");
        let announced = info.clone().try_decode_schema().expect("schema");
        let tables = fetch(&mut client, info).await;
        assert_eq!(
            tables[0].schema().as_ref(),
            &announced,
            "FlightInfo schema == stream schema"
        );
        assert_eq!(strings(&tables, 2), vec!["lineitem"], "{table_type}");
        let column = tables[0]
            .column(4)
            .as_any()
            .downcast_ref::<arrow::array::BinaryArray>()
            .expect("binary");
        let schema =
            arrow::ipc::convert::try_schema_from_ipc_buffer(column.value(0)).expect("IPC schema");
        assert_eq!(schema.fields().len(), 16);
        let quantity = schema.field_with_name("l_quantity").unwrap().metadata();
        assert_eq!(quantity["ARROW:FLIGHT:SQL:TYPE_NAME"], "DECIMAL");
        assert_eq!(quantity["ARROW:FLIGHT:SQL:PRECISION"], "15");
        assert_eq!(quantity["ARROW:FLIGHT:SQL:SCALE"], "2");
        assert_eq!(
            schema.field_with_name("l_comment").unwrap().data_type(),
            &DataType::Utf8
        );
    }

    // Keys: empty, correctly typed results, also for DBeaver's `table = "%"`.
    let info = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: Some("quiver".into()),
            db_schema: Some("public".into()),
            table: "%".into(),
        })
        .await
        .expect("primary keys");
    let announced = info.clone().try_decode_schema().expect("schema");
    let streamed = fetch_empty(&mut client, info).await;
    assert_eq!(streamed.as_ref(), &announced);
    assert_eq!(announced.fields().len(), 6);
    let info = client
        .get_imported_keys(CommandGetImportedKeys {
            catalog: None,
            db_schema: None,
            table: "lineitem".into(),
        })
        .await
        .expect("imported keys");
    assert_eq!(fetch_empty(&mut client, info).await.fields().len(), 13);

    // Type info, for JDBC getTypeInfo / ODBC SQLGetTypeInfo.
    let info = client
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .expect("type info");
    let announced = info.clone().try_decode_schema().expect("schema");
    let types = fetch(&mut client, info).await;
    assert_eq!(types[0].schema().as_ref(), &announced);
    assert!(strings(&types, 0).contains(&"VARCHAR".to_string()));

    // Unknown actions are UNIMPLEMENTED.
    let mut raw =
        arrow_flight::flight_service_client::FlightServiceClient::new(cluster.channel().await);
    let err = raw
        .do_action(arrow_flight::Action::new("NoSuchAction", ""))
        .await
        .expect_err("unknown action");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // Large headers (JDBC turns URL properties into headers) are accepted.
    let mut request = tonic::Request::new(arrow_flight::Action::new("NoSuchAction", ""));
    let big = "x".repeat(32 * 1024);
    request
        .metadata_mut()
        .insert("x-large-property", big.parse().expect("header value"));
    let err = raw
        .do_action(request)
        .await
        .expect_err("still an unknown action");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // SqlInfo: the full set, for JDBC.
    let info = client.get_sql_info(vec![]).await.expect("sql info");
    let sql_info = fetch(&mut client, info).await;
    assert!(sql_info.iter().map(|b| b.num_rows()).sum::<usize>() > 80);

    // Prepared statement: the dataset schema is the streamed schema, views become plain Utf8.
    let mut prepared = client
        .prepare(
            "SELECT n_name, n_nationkey FROM nation WHERE n_regionkey = 1".into(),
            None,
        )
        .await
        .expect("prepare");
    let dataset_schema = prepared.dataset_schema().expect("dataset schema").clone();
    let info = prepared.execute().await.expect("execute prepared");
    let rows = fetch(&mut client, info).await;
    assert_eq!(rows[0].schema().as_ref(), &dataset_schema);
    assert_eq!(dataset_schema.field(0).data_type(), &DataType::Utf8);
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
    prepared.close().await.expect("close");

    // Parameters: `?` and `$n`, a nullable `$1..` parameter schema, binding by position.
    let mut prepared = client
        .prepare(
            "SELECT n_name FROM nation WHERE n_nationkey = ? AND n_regionkey = $2".into(),
            None,
        )
        .await
        .expect("prepare with parameters");
    let parameters = prepared
        .parameter_schema()
        .expect("parameter schema")
        .clone();
    let names: Vec<_> = parameters
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, vec!["$1", "$2"]);
    assert!(parameters.fields().iter().all(|f| f.is_nullable()));
    let values = RecordBatch::try_from_iter(vec![
        ("0", Arc::new(Int32Array::from(vec![7])) as ArrayRef),
        ("1", Arc::new(Int64Array::from(vec![3])) as ArrayRef),
    ])
    .expect("values");
    prepared.set_parameters(values).expect("set parameters");
    let info = prepared.execute().await.expect("execute with parameters");
    let rows = fetch(&mut client, info).await;
    assert_eq!(strings(&rows, 0), vec!["GERMANY"]);
    let mut unbound = client
        .prepare(
            "SELECT n_name FROM nation WHERE n_nationkey = ?".into(),
            None,
        )
        .await
        .expect("prepare");
    let err = unbound.execute().await.expect_err("parameters not bound");
    assert!(err.to_string().contains("bind values"), "{err}");

    // Preparing DDL has no side effect and announces no columns.
    let ddl = format!(
        "CREATE EXTERNAL TABLE prepared_only STORED AS PARQUET LOCATION '{}/'",
        tpch_dataset().join("region").display()
    );
    let prepared = client.prepare(ddl, None).await.expect("prepare DDL");
    assert!(
        prepared
            .dataset_schema()
            .expect("schema")
            .fields()
            .is_empty()
    );
    let mut quiver = cluster.client().await;
    let err = quiver
        .query("SELECT * FROM prepared_only")
        .await
        .expect_err("not created");
    assert_eq!(err.status().map(|s| s.code()), Some(Code::NotFound));

    // Empty results carry their schema.
    let empty = within(
        QUERY_LIMIT,
        "empty",
        quiver.query("SELECT * FROM region WHERE 1 = 0"),
    )
    .await
    .expect("empty");
    assert_eq!(empty.num_rows(), 0);
    assert_eq!(empty.schema.fields().len(), 3);

    // Bad input gets a clear code, never Internal.
    for (sql, code) in [
        ("SELECT * FROM no_such_table", Code::NotFound),
        ("SELEC 1", Code::InvalidArgument),
        ("SELECT no_such_column FROM nation", Code::InvalidArgument),
        (
            "INSERT INTO nation VALUES (1, 'x', 1, 'y')",
            Code::InvalidArgument,
        ),
        ("DELETE FROM nation", Code::Unimplemented),
        ("CREATE TEMPORARY TABLE t AS SELECT 1", Code::Unimplemented),
    ] {
        let err = within(QUERY_LIMIT, sql, quiver.query(sql))
            .await
            .expect_err(sql);
        assert_eq!(err.status().map(|s| s.code()), Some(code), "{sql}: {err}");
    }
    let garbage = arrow_flight::Ticket::new(vec![0xde, 0xad, 0xbe, 0xef]);
    let err = client.do_get(garbage).await.expect_err("garbage ticket");
    assert!(!err.to_string().contains("Internal"), "{err}");
}
