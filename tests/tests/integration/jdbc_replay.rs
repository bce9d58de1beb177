//! The Flight SQL JDBC driver's calls, replayed (its jar cannot be fetched here): the one
//! `GetSqlInfo` it builds `DatabaseMetaData` from, with every value in the union child it casts
//! to; DBeaver's browse sequence; `Statement.execute*`, which always prepares and runs DDL/DML
//! through `DoPut(CommandPreparedStatementUpdate)` with an empty-schema batch (or the parameter
//! rows of `executeBatch`); and its two ways to authenticate (user/password, `token=`).
//! See `shared/design/flight-sql-clients.md`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::ipc::convert::try_schema_from_ipc_buffer;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::metadata::SqlInfoDataBuilder;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, DoPutUpdateResult,
    ProstMessageExt, SqlInfo,
};
use arrow_flight::{Action, FlightDescriptor, FlightInfo, HandshakeRequest, IpcMessage};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;
use futures::{TryStreamExt, stream};
use prost::Message;
use prost::bytes::Bytes;
use quiver_tests::oracle::tpch_dataset;
use quiver_tests::secure::Security;
use quiver_tests::{ClusterOptions, TestCluster, within};
use tonic::Code;
use tonic::transport::Channel;

use crate::QUERY_LIMIT;

type Client = FlightSqlServiceClient<Channel>;

async fn channel(cluster: &TestCluster) -> Channel {
    within(
        QUERY_LIMIT,
        "connect",
        Channel::from_shared(format!("http://{}", cluster.coordinator_addr))
            .expect("uri")
            .connect(),
    )
    .await
    .expect("connect")
}

/// Runs a `FlightInfo` the way JDBC does: every endpoint (none with a location) on this
/// connection. Checks that the announced schema is the streamed one; returns both.
async fn fetch(client: &mut Client, info: FlightInfo) -> (SchemaRef, Vec<RecordBatch>) {
    let announced = Arc::new(info.clone().try_decode_schema().expect("FlightInfo schema"));
    assert_eq!(info.endpoint.len(), 1, "one endpoint");
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        assert!(endpoint.location.is_empty(), "endpoints carry no location");
        let ticket = endpoint.ticket.expect("ticket");
        let mut stream = within(QUERY_LIMIT, "do_get", client.do_get(ticket))
            .await
            .expect("do_get");
        while let Some(batch) = within(QUERY_LIMIT, "stream", stream.try_next())
            .await
            .expect("stream")
        {
            batches.push(batch);
        }
        let streamed = stream.schema().expect("the stream carries a schema");
        assert_eq!(streamed, &announced, "FlightInfo schema == stream schema");
    }
    (announced, batches)
}

fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column(column).as_string::<i32>().clone();
            (0..a.len()).map(move |i| a.value(i).to_string())
        })
        .collect()
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// `CreatePreparedStatement`, as every JDBC `Statement.execute*` starts.
async fn prepare(client: &mut Client, sql: &str) -> ActionCreatePreparedStatementResult {
    let request = ActionCreatePreparedStatementRequest {
        query: sql.to_string(),
        transaction_id: None,
    };
    let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let results: Vec<arrow_flight::Result> = within(QUERY_LIMIT, sql, async {
        client
            .do_action(action)
            .await
            .unwrap_or_else(|e| panic!("prepare {sql}: {e}"))
            .try_collect()
            .await
            .unwrap_or_else(|e| panic!("prepare {sql}: {e}"))
    })
    .await;
    assert_eq!(results.len(), 1, "one result for CreatePreparedStatement");
    let any = Any::decode(&*results[0].body).expect("Any");
    any.unpack::<ActionCreatePreparedStatementResult>()
        .expect("unpack")
        .expect("an ActionCreatePreparedStatementResult")
}

/// The schema JDBC reads from `dataset_schema`/`parameter_schema` bytes: empty bytes ⇒ no fields.
fn ipc_schema(bytes: &Bytes) -> Schema {
    if bytes.is_empty() {
        Schema::empty()
    } else {
        Schema::try_from(IpcMessage(bytes.clone())).expect("IPC schema")
    }
}

/// JDBC `executeUpdate`/`executeBatch`: `DoPut(CommandPreparedStatementUpdate)` whose stream is
/// the parameter schema (empty when there are none) and one batch (0 rows when there are none),
/// then half-close. Returns every `PutResult`, decoded.
async fn execute_update(
    client: &mut Client,
    handle: &Bytes,
    parameters: RecordBatch,
) -> Vec<DoPutUpdateResult> {
    let cmd = CommandPreparedStatementUpdate {
        prepared_statement_handle: handle.clone(),
    };
    // `batches_to_flight_data` keeps a 0-row batch (arrow-flight's encoder would drop it).
    let mut data =
        arrow_flight::utils::batches_to_flight_data(parameters.schema().as_ref(), vec![parameters])
            .expect("encode");
    assert_eq!(data.len(), 2, "schema + one batch");
    data[0].flight_descriptor = Some(FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec()));
    let results: Vec<arrow_flight::PutResult> = within(QUERY_LIMIT, "do_put update", async {
        client
            .do_put(stream::iter(data))
            .await
            .expect("do_put")
            .try_collect()
            .await
            .expect("put results")
    })
    .await;
    results
        .iter()
        .map(|r| DoPutUpdateResult::decode(&*r.app_metadata).expect("DoPutUpdateResult"))
        .collect()
}

/// `Statement.executeUpdate(sql)`: prepare (empty dataset schema), DoPut, close.
async fn jdbc_update(client: &mut Client, sql: &str) -> i64 {
    let prepared = prepare(client, sql).await;
    assert!(
        ipc_schema(&prepared.dataset_schema).fields().is_empty(),
        "{sql}: DDL/DML must announce no columns, or JDBC runs it as a query"
    );
    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    let results = execute_update(client, &prepared.prepared_statement_handle, empty).await;
    assert_eq!(results.len(), 1, "{sql}: exactly one DoPutUpdateResult");
    close(client, &prepared.prepared_statement_handle).await;
    results[0].record_count
}

async fn close(client: &mut Client, handle: &Bytes) {
    let request = ActionClosePreparedStatementRequest {
        prepared_statement_handle: handle.clone(),
    };
    let action = Action::new("ClosePreparedStatement", request.as_any().encode_to_vec());
    within(QUERY_LIMIT, "close", async {
        client
            .do_action(action)
            .await
            .expect("ClosePreparedStatement")
            .try_collect::<Vec<_>>()
            .await
            .expect("ClosePreparedStatement")
    })
    .await;
}

/// `GetFlightInfo(CommandPreparedStatementQuery)` (no credentials: for the plaintext cluster).
async fn prepared_query_info(client: &mut Client, handle: &Bytes) -> FlightInfo {
    let cmd = CommandPreparedStatementQuery {
        prepared_statement_handle: handle.clone(),
    };
    let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
    within(
        QUERY_LIMIT,
        "prepared query",
        client.inner_mut().get_flight_info(descriptor),
    )
    .await
    .expect("GetFlightInfo(CommandPreparedStatementQuery)")
    .into_inner()
}

async fn tables(client: &mut Client, cmd: CommandGetTables) -> Vec<RecordBatch> {
    let expected = cmd.clone().into_builder().schema();
    let info = within(QUERY_LIMIT, "tables", client.get_tables(cmd))
        .await
        .expect("GetTables");
    let (schema, batches) = fetch(client, info).await;
    assert_eq!(schema, expected, "GetTables schema per spec");
    batches
}

/// GetTables for one table name pattern in quiver.public, all types; `(name, type)` pairs.
async fn find_tables(client: &mut Client, pattern: &str) -> Vec<(String, String)> {
    let batches = tables(
        client,
        CommandGetTables {
            catalog: Some("quiver".into()),
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some(pattern.into()),
            table_types: vec![],
            include_schema: false,
        },
    )
    .await;
    strings(&batches, 2)
        .into_iter()
        .zip(strings(&batches, 3))
        .collect()
}

fn primary_keys_schema() -> Schema {
    Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("column_name", DataType::Utf8, false),
        Field::new("key_name", DataType::Utf8, true),
        Field::new("key_sequence", DataType::Int32, false),
    ])
}

fn foreign_keys_schema() -> Schema {
    Schema::new(vec![
        Field::new("pk_catalog_name", DataType::Utf8, true),
        Field::new("pk_db_schema_name", DataType::Utf8, true),
        Field::new("pk_table_name", DataType::Utf8, false),
        Field::new("pk_column_name", DataType::Utf8, false),
        Field::new("fk_catalog_name", DataType::Utf8, true),
        Field::new("fk_db_schema_name", DataType::Utf8, true),
        Field::new("fk_table_name", DataType::Utf8, false),
        Field::new("fk_column_name", DataType::Utf8, false),
        Field::new("key_sequence", DataType::Int32, false),
        Field::new("fk_key_name", DataType::Utf8, true),
        Field::new("pk_key_name", DataType::Utf8, true),
        Field::new("update_rule", DataType::UInt8, false),
        Field::new("delete_rule", DataType::UInt8, false),
    ])
}

/// The SqlInfo ids JDBC's `DatabaseMetaData` reads, by the dense-union child it casts the
/// value to (0 string, 1 bool, 2 bigint, 3 int32 bitmask, 4 string list, 5 int32→list map).
fn jdbc_sql_info_ids() -> Vec<(u32, i8)> {
    let strings = [0, 1, 504, 513, 514, 529, 530, 531];
    let bools = [
        3, 515, 516, 518, 519, 520, 521, 523, 524, 527, 532, 536, 537, 539, 556, 563, 565, 566,
        572, 573, 574, 575, 576,
    ];
    // 562 (DEFAULT_TRANSACTION_ISOLATION) is int64 although the proto text says int32.
    let bigints = (541..=555).chain(557..=561).chain([562]);
    let bitmasks = [522, 525, 526, 528, 533, 534, 535, 538, 540, 564, 567];
    let lists = 508..=512;
    let maps = [517];
    let mut ids = Vec::new();
    ids.extend(strings.map(|id| (id, 0)));
    ids.extend(bools.map(|id| (id, 1)));
    ids.extend(bigints.map(|id| (id, 2)));
    ids.extend(bitmasks.map(|id| (id, 3)));
    ids.extend(lists.map(|id| (id, 4)));
    ids.extend(maps.map(|id| (id, 5)));
    ids
}

/// `GetSqlInfo(ids)`: id → (union child, the one-element value array).
async fn sql_info(client: &mut Client, ids: Vec<SqlInfo>) -> BTreeMap<u32, (i8, ArrayRef)> {
    let info = within(QUERY_LIMIT, "sql info", client.get_sql_info(ids))
        .await
        .expect("GetSqlInfo");
    let (schema, batches) = fetch(client, info).await;
    assert_eq!(
        schema.as_ref(),
        SqlInfoDataBuilder::schema(),
        "GetSqlInfo schema"
    );
    let mut values = BTreeMap::new();
    for batch in &batches {
        let names = batch.column(0).as_primitive::<UInt32Type>();
        let union = batch.column(1).as_union();
        for row in 0..batch.num_rows() {
            let id = names.value(row);
            let type_id = union.type_id(row);
            let value = union.child(type_id).slice(union.value_offset(row), 1);
            assert!(
                values.insert(id, (type_id, value)).is_none(),
                "SqlInfo {id} sent twice"
            );
        }
    }
    values
}

async fn check_sql_info(client: &mut Client) {
    let all = sql_info(client, vec![]).await;
    let mut problems = Vec::new();
    for (id, child) in jdbc_sql_info_ids() {
        match all.get(&id) {
            None => problems.push(format!("{id} missing")),
            Some((actual, _)) if *actual != child => problems.push(format!(
                "{id} in union child {actual}, JDBC casts child {child}"
            )),
            Some((_, value)) if value.is_null(0) => problems.push(format!("{id} is null")),
            Some(_) => {}
        }
    }
    for id in all.keys() {
        if i32::try_from(*id)
            .ok()
            .and_then(|i| SqlInfo::try_from(i).ok())
            .is_none()
        {
            problems.push(format!("{id} is not a SqlInfo id JDBC knows"));
        }
    }
    assert!(
        problems.is_empty(),
        "GetSqlInfo([]):\n{}",
        problems.join("\n")
    );
    let (_, escape) = &all[&(SqlInfo::SqlSearchStringEscape as u32)];
    assert_eq!(
        escape.as_string::<i32>().value(0),
        "\\",
        "SEARCH_STRING_ESCAPE"
    );

    // Transactions: NONE (0), so ADBC's DB-API keeps autocommit.
    let transactions = sql_info(client, vec![SqlInfo::FlightSqlServerTransaction]).await;
    assert_eq!(transactions.len(), 1, "only the requested id");
    let (child, value) = &transactions[&8];
    assert_eq!(*child, 3, "FLIGHT_SQL_SERVER_TRANSACTION is int32");
    assert_eq!(
        value.as_primitive::<arrow::datatypes::Int32Type>().value(0),
        0
    );
}

/// DBeaver's navigator: catalogs → schemas → tables (types null, escaped patterns) → columns
/// (include_schema for the whole schema) → primary keys with `table="%"` → foreign keys.
async fn dbeaver_browse(client: &mut Client) {
    let info = client.get_catalogs().await.expect("GetCatalogs");
    let (schema, catalogs) = fetch(client, info).await;
    assert_eq!(schema, CommandGetCatalogs {}.into_builder().schema());
    assert_eq!(strings(&catalogs, 0), vec!["quiver"]);

    let cmd = CommandGetDbSchemas {
        catalog: Some("quiver".into()),
        db_schema_filter_pattern: None,
    };
    let expected = cmd.clone().into_builder().schema();
    let info = client.get_db_schemas(cmd).await.expect("GetDbSchemas");
    let (schema, schemas) = fetch(client, info).await;
    assert_eq!(schema, expected);
    assert!(strings(&schemas, 1).contains(&"public".to_string()));

    // Views made through the JDBC path; `_` in the pattern arrives escaped.
    jdbc_update(
        client,
        "CREATE VIEW jdbc_v AS SELECT n_name FROM nation WHERE n_regionkey = 1",
    )
    .await;
    jdbc_update(client, "CREATE VIEW jdbcxv AS SELECT 1 AS one").await;
    assert_eq!(
        find_tables(client, "jdbc\\_v").await,
        vec![("jdbc_v".to_string(), "VIEW".to_string())],
        "`\\_` matches only `_`"
    );
    let mut both: Vec<_> = find_tables(client, "jdbc_v")
        .await
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    both.sort();
    assert_eq!(
        both,
        vec!["jdbc_v", "jdbcxv"],
        "unescaped `_` is a wildcard"
    );

    // getTables(catalog, escapeWildCards(schema), "%", null).
    let listed = find_tables(client, "%").await;
    for table in quiver_server::tpch::TABLES {
        assert!(
            listed.contains(&(table.to_string(), "TABLE".to_string())),
            "{table} listed as TABLE: {listed:?}"
        );
    }
    assert!(listed.contains(&("jdbc_v".to_string(), "VIEW".to_string())));

    // getColumns(catalog, schema, "%", "%"): GetTables with schemas for the whole schema.
    let batches = tables(
        client,
        CommandGetTables {
            catalog: Some("quiver".into()),
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some("%".into()),
            table_types: vec![],
            include_schema: true,
        },
    )
    .await;
    assert_eq!(rows(&batches), listed.len());
    for batch in &batches {
        let names = batch.column(2).as_string::<i32>();
        let schemas = batch.column(4).as_binary::<i32>();
        for row in 0..batch.num_rows() {
            let table = names.value(row);
            let schema = try_schema_from_ipc_buffer(schemas.value(row))
                .unwrap_or_else(|e| panic!("{table}: table_schema is not an IPC schema: {e}"));
            assert!(!schema.fields().is_empty(), "{table} has columns");
            for field in schema.fields() {
                let type_name = field.metadata().get("ARROW:FLIGHT:SQL:TYPE_NAME");
                assert!(
                    type_name.is_some_and(|t| !t.is_empty()),
                    "{table}.{}: no ARROW:FLIGHT:SQL:TYPE_NAME in {:?}",
                    field.name(),
                    field.metadata()
                );
            }
        }
    }

    // Table types: TABLE and BASE TABLE are synonyms; views are not tables.
    for types in [vec!["TABLE"], vec!["BASE TABLE"], vec!["VIEW", "TABLE"]] {
        let batches = tables(
            client,
            CommandGetTables {
                catalog: Some("quiver".into()),
                db_schema_filter_pattern: Some("public".into()),
                table_name_filter_pattern: None,
                table_types: types.iter().map(|t| t.to_string()).collect(),
                include_schema: false,
            },
        )
        .await;
        let names = strings(&batches, 2);
        assert!(
            names.contains(&"lineitem".to_string()),
            "{types:?}: {names:?}"
        );
        let has_view = names.contains(&"jdbc_v".to_string());
        assert_eq!(has_view, types.contains(&"VIEW"), "{types:?}: {names:?}");
    }

    // getPrimaryKeys(catalog, schema, "%") and the foreign keys: empty, spec-typed.
    let info = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog: Some("quiver".into()),
            db_schema: Some("public".into()),
            table: "%".into(),
        })
        .await
        .expect("GetPrimaryKeys with table=%");
    let (schema, batches) = fetch(client, info).await;
    assert_eq!(schema.as_ref(), &primary_keys_schema());
    assert_eq!(rows(&batches), 0);
    let info = client
        .get_imported_keys(CommandGetImportedKeys {
            catalog: Some("quiver".into()),
            db_schema: Some("public".into()),
            table: "lineitem".into(),
        })
        .await
        .expect("GetImportedKeys");
    let (schema, batches) = fetch(client, info).await;
    assert_eq!(schema.as_ref(), &foreign_keys_schema());
    assert_eq!(rows(&batches), 0);
    let info = client
        .get_exported_keys(CommandGetExportedKeys {
            catalog: Some("quiver".into()),
            db_schema: Some("public".into()),
            table: "lineitem".into(),
        })
        .await
        .expect("GetExportedKeys");
    let (schema, batches) = fetch(client, info).await;
    assert_eq!(schema.as_ref(), &foreign_keys_schema());
    assert_eq!(rows(&batches), 0);
}

/// JDBC `Statement.execute("CREATE TABLE ...")`, `INSERT`, `executeBatch`, and a query.
async fn prepared_ddl_and_dml(client: &mut Client) {
    // Preparing is side-effect free and announces no columns.
    let ctas = "CREATE TABLE jdbc_t AS SELECT 1 AS a";
    let prepared = prepare(client, ctas).await;
    assert!(ipc_schema(&prepared.dataset_schema).fields().is_empty());
    assert!(
        find_tables(client, "jdbc\\_t").await.is_empty(),
        "prepare created the table"
    );

    // DoPut(CommandPreparedStatementUpdate) with an empty-schema batch runs it, once.
    let empty = RecordBatch::new_empty(Arc::new(Schema::empty()));
    let results = execute_update(client, &prepared.prepared_statement_handle, empty).await;
    assert_eq!(results.len(), 1, "exactly one DoPutUpdateResult");
    assert_eq!(
        find_tables(client, "jdbc\\_t").await,
        vec![("jdbc_t".to_string(), "TABLE".to_string())]
    );
    // Closing is idempotent (JDBC rethrows close errors).
    close(client, &prepared.prepared_statement_handle).await;
    close(client, &prepared.prepared_statement_handle).await;

    assert_eq!(
        jdbc_update(client, "INSERT INTO jdbc_t VALUES (2)").await,
        1
    );

    // executeBatch: the parameter rows of every addBatch() in one DoPut.
    let insert = prepare(client, "INSERT INTO jdbc_t VALUES (?)").await;
    assert!(ipc_schema(&insert.dataset_schema).fields().is_empty());
    let parameters = Arc::new(ipc_schema(&insert.parameter_schema));
    assert_eq!(parameters.fields().len(), 1, "{parameters:?}");
    assert!(
        parameters.field(0).is_nullable(),
        "JDBC setNull needs nullable parameters"
    );
    let values: ArrayRef = Arc::new(Int64Array::from(vec![10, 20, 30]));
    let values = arrow::compute::cast(&values, parameters.field(0).data_type())
        .unwrap_or_else(|e| panic!("parameter type {parameters:?}: {e}"));
    let batch = RecordBatch::try_new(Arc::clone(&parameters), vec![values]).expect("batch");
    let results = execute_update(client, &insert.prepared_statement_handle, batch).await;
    assert_eq!(results.len(), 1, "exactly one DoPutUpdateResult");
    assert_eq!(results[0].record_count, 3, "three rows inserted");
    close(client, &insert.prepared_statement_handle).await;

    // A query: non-empty dataset schema == FlightInfo schema == stream schema.
    let select = prepare(client, "SELECT a FROM jdbc_t ORDER BY a").await;
    let dataset_schema = ipc_schema(&select.dataset_schema);
    assert!(!dataset_schema.fields().is_empty());
    let info = prepared_query_info(client, &select.prepared_statement_handle).await;
    let (schema, batches) = fetch(client, info).await;
    assert_eq!(
        schema.as_ref(),
        &dataset_schema,
        "dataset_schema == stream schema"
    );
    let values: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            arrow::compute::cast(b.column(0), &DataType::Int64)
                .expect("cast")
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(values, vec![1, 2, 10, 20, 30]);
    close(client, &select.prepared_statement_handle).await;
    close(client, &select.prepared_statement_handle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_metadata_browse_and_prepared_updates() {
    let cluster = TestCluster::start(ClusterOptions::tpch(&tpch_dataset())).await;
    let mut client = FlightSqlServiceClient::new(channel(&cluster).await);
    check_sql_info(&mut client).await;
    prepared_ddl_and_dml(&mut client).await;
    dbeaver_browse(&mut client).await;
}

/// A Handshake as JDBC sends it: no request message, credentials in the `authorization`
/// header. Returns the response's `authorization` header.
async fn jdbc_handshake(channel: &Channel, authorization: &str) -> Result<String, tonic::Status> {
    let mut raw = FlightServiceClient::new(channel.clone());
    let mut request = tonic::Request::new(stream::iter(Vec::<HandshakeRequest>::new()));
    request.metadata_mut().insert(
        "authorization",
        authorization.parse().expect("header value"),
    );
    let response = within(QUERY_LIMIT, "handshake", raw.handshake(request)).await?;
    let header = response
        .metadata()
        .get("authorization")
        .map(|v| v.to_str().expect("ascii").to_string());
    within(
        QUERY_LIMIT,
        "handshake responses",
        response.into_inner().try_collect::<Vec<_>>(),
    )
    .await?;
    Ok(header.expect("the token is in the response headers (JDBC reads only those)"))
}

async fn catalogs_with(client: &mut Client) -> Vec<String> {
    let info = within(QUERY_LIMIT, "catalogs", client.get_catalogs())
        .await
        .expect("GetCatalogs with the bearer token");
    strings(&fetch(client, info).await.1, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_authentication_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let security = Security::create(dir.path());
    let cluster = TestCluster::start(ClusterOptions {
        coordinator_args: security.args(false),
        ..ClusterOptions::tpch(&tpch_dataset())
    })
    .await;
    let conn = channel(&cluster).await;
    let basic = |user: &str, password: &str| {
        // Java's Base64 encoder pads.
        format!(
            "Basic {}",
            BASE64_STANDARD.encode(format!("{user}:{password}"))
        )
    };

    // user/password: Basic handshake, the token only from the response headers, then Bearer.
    let header = jdbc_handshake(&conn, &basic(&security.user, &security.password))
        .await
        .expect("handshake with user/password");
    let token = header
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("`authorization: Bearer <token>`, got {header:?}"))
        .to_string();
    assert!(!token.is_empty());
    let mut client = FlightSqlServiceClient::new(conn.clone());
    client.set_token(token.clone());
    assert_eq!(catalogs_with(&mut client).await, vec!["quiver"]);
    let mut prepared = client
        .prepare(
            "SELECT n_name FROM nation WHERE n_nationkey = 7".into(),
            None,
        )
        .await
        .expect("prepare with the token");
    let info = prepared.execute().await.expect("execute with the token");
    assert_eq!(
        strings(&fetch(&mut client, info).await.1, 0),
        vec!["GERMANY"]
    );
    prepared.close().await.expect("close");

    // The same token on another connection (JDBC reconnects for endpoints with locations).
    let mut other = FlightSqlServiceClient::new(channel(&cluster).await);
    other.set_token(token.clone());
    assert_eq!(catalogs_with(&mut other).await, vec!["quiver"]);

    // `token=`: JDBC still calls Handshake, with the bearer, and fails if it errors.
    let header = jdbc_handshake(&conn, &format!("Bearer {token}"))
        .await
        .expect("handshake with a bearer token");
    let renewed = header
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("`authorization: Bearer <token>`, got {header:?}"))
        .to_string();
    let mut with_token = FlightSqlServiceClient::new(conn.clone());
    with_token.set_token(renewed);
    assert_eq!(catalogs_with(&mut with_token).await, vec!["quiver"]);

    // JDBC turns unknown URL properties into headers: 32 KiB of them are fine.
    client.set_header("x-jdbc-property", "x".repeat(32 * 1024));
    assert_eq!(catalogs_with(&mut client).await, vec!["quiver"]);

    // Bad password, and no credentials: UNAUTHENTICATED.
    let err = jdbc_handshake(&conn, &basic(&security.user, "wrong"))
        .await
        .expect_err("bad password");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut raw = FlightServiceClient::new(conn.clone());
    let descriptor = FlightDescriptor::new_cmd(CommandGetCatalogs {}.as_any().encode_to_vec());
    let err = within(
        QUERY_LIMIT,
        "no credentials",
        raw.get_flight_info(descriptor),
    )
    .await
    .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
}
