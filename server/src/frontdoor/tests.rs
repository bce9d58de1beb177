//! Front-door behaviour as a Flight SQL client sees it, without a network or a cluster.
//!
//! Each test builds a real engine with no executors ([`in_process_engine`]) and a [`FrontDoor`]
//! over it, then calls the `FlightService` methods a client's RPCs arrive at, with
//! `tonic::Request`s built here: arrow-flight's own dispatch (descriptor and ticket decoding)
//! runs as it does in the server. Plans that read tables answer `Unavailable` (no executor);
//! constant queries and DDL run on the coordinator, so results can be streamed and checked.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use arrow::array::{Array, BinaryArray, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field};
use arrow::ipc::convert::try_schema_from_ipc_buffer;
use arrow_flight::sql::DoPutUpdateResult;
use arrow_flight::{Action, FlightData, PutResult};
use http_body::Frame;
use tonic::Code;
use tonic::codec::{DecodeBuf, Decoder};

use super::plan_cache::PlanCacheStats;
use super::*;
use crate::engine::{QueryEngine, in_process_engine};
use crate::error::QuiverError;

/// A front door over an engine whose catalog file lives in the returned directory.
fn front_door() -> (tempfile::TempDir, FrontDoor) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = Arc::new(in_process_engine(dir.path()));
    let door = FrontDoor::new(engine).expect("the front door builds");
    (dir, door)
}

/// DDL for an external CSV table `name` with columns `a` (integers) and `b` (strings).
fn csv_table_ddl(dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, "a,b\n1,x\n2,y\n").expect("the CSV file is written");
    format!(
        "CREATE EXTERNAL TABLE {name} STORED AS CSV LOCATION '{}'",
        path.display()
    )
}

fn descriptor(command: &impl ProstMessageExt) -> FlightDescriptor {
    FlightDescriptor::new_cmd(command.as_any().encode_to_vec())
}

async fn flight_info(
    door: &FrontDoor,
    command: &impl ProstMessageExt,
) -> Result<FlightInfo, Status> {
    FlightService::get_flight_info(door, Request::new(descriptor(command)))
        .await
        .map(Response::into_inner)
}

async fn statement_info(door: &FrontDoor, sql: &str) -> Result<FlightInfo, Status> {
    let query = CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    };
    flight_info(door, &query).await
}

/// The one endpoint's ticket of a FlightInfo.
fn only_ticket(info: &FlightInfo) -> Ticket {
    assert_eq!(info.endpoint.len(), 1, "{info:?}");
    info.endpoint[0]
        .ticket
        .clone()
        .expect("the endpoint has a ticket")
}

/// DoGet: the stream's schema and its batches.
async fn fetch(door: &FrontDoor, ticket: Ticket) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    fetch_as(door, ticket, None).await
}

/// DoGet by the user of `identity` (as the auth layer records it; `None`: authentication off).
async fn fetch_as(
    door: &FrontDoor,
    ticket: Ticket,
    identity: Option<Identity>,
) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let mut request = Request::new(ticket);
    if let Some(identity) = identity {
        request.extensions_mut().insert(identity);
    }
    let stream = FlightService::do_get(door, request).await?.into_inner();
    let mut decoded =
        FlightRecordBatchStream::new_from_flight_data(stream.map_err(FlightError::from));
    let mut batches = Vec::new();
    while let Some(batch) = decoded.next().await {
        batches.push(batch.map_err(|e| QuiverError::from(e).to_status())?);
    }
    let schema = decoded
        .schema()
        .cloned()
        .expect("every DoGet stream starts with its schema");
    Ok((schema, batches))
}

/// GetFlightInfo then DoGet of its ticket, as clients run a statement.
async fn run_sql(door: &FrontDoor, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let info = statement_info(door, sql).await?;
    fetch(door, only_ticket(&info)).await
}

/// DoAction: the result bodies.
async fn action(door: &FrontDoor, kind: &str, body: Vec<u8>) -> Result<Vec<Bytes>, Status> {
    let request = Request::new(Action {
        r#type: kind.into(),
        body: body.into(),
    });
    let results: Vec<arrow_flight::Result> = FlightService::do_action(door, request)
        .await?
        .into_inner()
        .try_collect()
        .await?;
    Ok(results.into_iter().map(|r| r.body).collect())
}

async fn prepare(
    door: &FrontDoor,
    sql: &str,
) -> Result<ActionCreatePreparedStatementResult, Status> {
    let request = ActionCreatePreparedStatementRequest {
        query: sql.into(),
        transaction_id: None,
    };
    let bodies = action(
        door,
        "CreatePreparedStatement",
        request.as_any().encode_to_vec(),
    )
    .await?;
    let [body] = bodies.as_slice() else {
        panic!(
            "CreatePreparedStatement answers one result, got {}",
            bodies.len()
        );
    };
    let any = Any::decode(body.as_ref()).expect("an Any-packed result");
    Ok(any
        .unpack::<ActionCreatePreparedStatementResult>()
        .expect("a CreatePreparedStatement result")
        .expect("of the right type"))
}

fn prepared_query(handle: &ProstBytes) -> CommandPreparedStatementQuery {
    CommandPreparedStatementQuery {
        prepared_statement_handle: handle.clone(),
    }
}

/// tonic's request decoding for `FlightData`, as the generated server code does it.
struct FlightDataDecoder;

impl Decoder for FlightDataDecoder {
    type Item = FlightData;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<FlightData>, Status> {
        FlightData::decode(buf)
            .map(Some)
            .map_err(|e| QuiverError::InvalidArgument(e.to_string()).to_status())
    }
}

/// A request body holding every gRPC frame of a client stream at once.
struct WholeBody(Option<Bytes>);

impl http_body::Body for WholeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// DoPut: `batches` after a first message carrying `descriptor` (alone when there are none).
async fn put(
    door: &FrontDoor,
    descriptor: FlightDescriptor,
    batches: Vec<RecordBatch>,
) -> Result<Vec<PutResult>, Status> {
    let messages: Vec<FlightData> = if batches.is_empty() {
        vec![FlightData::new().with_descriptor(descriptor)]
    } else {
        FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(stream::iter(batches.into_iter().map(Ok)))
            .try_collect()
            .await
            .map_err(|e| QuiverError::from(e).to_status())?
    };
    let mut framed = Vec::new();
    for message in messages {
        let bytes = message.encode_to_vec();
        let length = u32::try_from(bytes.len()).expect("test messages are small");
        framed.push(0); // not compressed
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&bytes);
    }
    let streaming = Streaming::new_request(
        FlightDataDecoder,
        WholeBody(Some(framed.into())),
        None,
        None,
    );
    FlightService::do_put(door, Request::new(streaming))
        .await?
        .into_inner()
        .try_collect()
        .await
}

/// DoPut(CommandPreparedStatementQuery): binds `values`, returns the new handle.
async fn bind(
    door: &FrontDoor,
    handle: &ProstBytes,
    values: RecordBatch,
) -> Result<ProstBytes, Status> {
    let results = put(door, descriptor(&prepared_query(handle)), vec![values]).await?;
    let [result] = results.as_slice() else {
        panic!("a bind answers one PutResult, got {}", results.len());
    };
    let bound = DoPutPreparedStatementResult::decode(result.app_metadata.as_ref())
        .expect("a DoPutPreparedStatementResult");
    Ok(bound
        .prepared_statement_handle
        .expect("JDBC needs the new handle"))
}

/// DoPut(CommandStatementUpdate): the row count.
async fn update(door: &FrontDoor, sql: &str) -> Result<i64, Status> {
    let command = CommandStatementUpdate {
        query: sql.into(),
        transaction_id: None,
    };
    let results = put(door, descriptor(&command), vec![]).await?;
    let [result] = results.as_slice() else {
        panic!("an update answers one PutResult, got {}", results.len());
    };
    Ok(DoPutUpdateResult::decode(result.app_metadata.as_ref())
        .expect("a DoPutUpdateResult")
        .record_count)
}

fn one_column(name: &str, values: Arc<dyn Array>) -> RecordBatch {
    RecordBatch::try_from_iter(vec![(name, values)]).expect("a one-column batch")
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let array = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no column {column} in {:?}", batch.schema()));
    let array = array
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap_or_else(|| panic!("{column} is {}, not Utf8", array.data_type()));
    array
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect()
}

async fn tables(door: &FrontDoor, include_schema: bool) -> (SchemaRef, SchemaRef, RecordBatch) {
    let command = CommandGetTables {
        catalog: None,
        db_schema_filter_pattern: None,
        table_name_filter_pattern: None,
        table_types: vec![],
        include_schema,
    };
    let info = flight_info(door, &command).await.expect("GetTables info");
    let announced = Arc::new(info.clone().try_decode_schema().expect("a schema"));
    let (streamed, batches) = fetch(door, only_ticket(&info)).await.expect("GetTables");
    let batch = concat_batches(&streamed, &batches).expect("one schema");
    (announced, streamed, batch)
}

#[tokio::test]
async fn select_one_streams_the_schema_its_flight_info_announced_from_one_local_endpoint() {
    let (_dir, door) = front_door();
    let info = statement_info(&door, "SELECT 1 AS one, 'a' AS letter")
        .await
        .expect("SELECT 1 plans");
    assert_eq!(info.endpoint.len(), 1);
    assert!(
        info.endpoint[0].location.is_empty(),
        "clients must reuse their connection: {:?}",
        info.endpoint[0].location
    );
    let announced = info.clone().try_decode_schema().expect("a schema");
    assert_eq!(announced.field(0).data_type(), &DataType::Int64);
    // No view types on the wire (JDBC before 19 cannot read them).
    assert_eq!(announced.field(1).data_type(), &DataType::Utf8);

    let (streamed, batches) = fetch(&door, only_ticket(&info)).await.expect("DoGet");
    assert_eq!(streamed.as_ref(), &announced);
    let batch = concat_batches(&streamed, &batches).expect("one schema");
    assert_eq!(batch.num_rows(), 1);
    let one = batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("Int64");
    assert_eq!(one.value(0), 1);
    assert_eq!(strings(&batch, "letter"), ["a"]);
}

#[tokio::test]
async fn garbage_tickets_and_handles_are_invalid_argument() {
    let (_dir, door) = front_door();
    let not_any = Ticket::new(vec![0xff, 0x00, 0x13, 0x37]);
    let garbage_inside = Ticket::new(
        TicketStatementQuery {
            statement_handle: ProstBytes::from_static(&[0xff, 0xff, 0xff]),
        }
        .as_any()
        .encode_to_vec(),
    );
    for ticket in [not_any, garbage_inside] {
        let status = fetch(&door, ticket).await.expect_err("garbage ticket");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
    let garbage_handle = prepared_query(&ProstBytes::from_static(&[0xff, 0xff, 0xff]));
    let status = flight_info(&door, &garbage_handle)
        .await
        .expect_err("garbage handle");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn prepared_ddl_announces_no_columns_and_changes_nothing_until_it_runs() {
    let (dir, door) = front_door();
    let ddl = csv_table_ddl(dir.path(), "t");
    let prepared = prepare(&door, &ddl).await.expect("DDL prepares");
    // An empty dataset schema is what tells JDBC to run it as an update.
    assert!(prepared.dataset_schema.is_empty());
    let (_, _, listed) = tables(&door, false).await;
    assert!(!strings(&listed, "table_name").contains(&"t".to_string()));
    assert!(!dir.path().join("catalog.toml").exists());

    // Run through the prepared handle (ADBC prepares DDL, then calls GetFlightInfo): once.
    let info = flight_info(&door, &prepared_query(&prepared.prepared_statement_handle))
        .await
        .expect("the DDL runs");
    let (_, _, listed) = tables(&door, false).await;
    assert!(strings(&listed, "table_name").contains(&"t".to_string()));
    assert!(dir.path().join("catalog.toml").exists());

    // DoGet of the DDL's ticket streams the empty result without creating the table again.
    assert_eq!(update(&door, "DROP TABLE t").await.expect("DROP"), 0);
    let (schema, batches) = fetch(&door, only_ticket(&info)).await.expect("DoGet");
    assert!(schema.fields().is_empty());
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    let (_, _, listed) = tables(&door, false).await;
    assert!(!strings(&listed, "table_name").contains(&"t".to_string()));
}

#[tokio::test]
async fn a_prepared_select_announces_its_columns_and_nullable_parameters() {
    let (dir, door) = front_door();
    run_sql(&door, &csv_table_ddl(dir.path(), "t"))
        .await
        .expect("DDL");
    let prepared = prepare(&door, "SELECT a, b FROM t WHERE a = ? AND b <> ?")
        .await
        .expect("SELECT prepares");
    let dataset = try_schema_from_ipc_buffer(&prepared.dataset_schema).expect("a dataset schema");
    let names: Vec<&str> = dataset.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(dataset.field(0).data_type(), &DataType::Int64);
    assert_eq!(dataset.field(1).data_type(), &DataType::Utf8);
    let parameters =
        try_schema_from_ipc_buffer(&prepared.parameter_schema).expect("a parameter schema");
    assert_eq!(
        parameters
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect::<Vec<_>>(),
        [
            Field::new("$1", DataType::Int64, true),
            Field::new("$2", DataType::Utf8, true),
        ]
    );

    let handle = prepared.prepared_statement_handle;
    // Running it unbound, or binding the wrong number of values, is the client's mistake.
    let status = flight_info(&door, &prepared_query(&handle))
        .await
        .expect_err("unbound parameters");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let one_value = one_column("0", Arc::new(Int64Array::from(vec![1])));
    let status = bind(&door, &handle, one_value)
        .await
        .expect_err("one value for two parameters");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // Bound correctly, it plans; reading the table needs an executor, and there is none.
    let two_values = RecordBatch::try_from_iter(vec![
        ("0", Arc::new(Int64Array::from(vec![1])) as Arc<dyn Array>),
        (
            "1",
            Arc::new(StringArray::from(vec!["z"])) as Arc<dyn Array>,
        ),
    ])
    .expect("a batch");
    let bound = bind(&door, &handle, two_values).await.expect("bind");
    let status = flight_info(&door, &prepared_query(&bound))
        .await
        .expect_err("no executors");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn values_bound_to_a_prepared_statement_id_serve_its_first_handle_until_closed() {
    let (_dir, door) = front_door();
    let prepared = prepare(&door, "SELECT $1 AS v").await.expect("prepares");
    let first_handle = prepared.prepared_statement_handle;
    bind(
        &door,
        &first_handle,
        one_column("0", Arc::new(StringArray::from(vec!["bound"]))),
    )
    .await
    .expect("bind");
    // flightsql-dbapi keeps executing the handle it got at prepare time.
    let info = flight_info(&door, &prepared_query(&first_handle))
        .await
        .expect("the remembered values are used");
    let (schema, batches) = fetch(&door, only_ticket(&info)).await.expect("DoGet");
    let batch = concat_batches(&schema, &batches).expect("one schema");
    assert_eq!(strings(&batch, "v"), ["bound"]);

    let close = ActionClosePreparedStatementRequest {
        prepared_statement_handle: first_handle.clone(),
    };
    action(
        &door,
        "ClosePreparedStatement",
        close.as_any().encode_to_vec(),
    )
    .await
    .expect("closing succeeds");
    let status = flight_info(&door, &prepared_query(&first_handle))
        .await
        .expect_err("closed: its values are gone");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Closing again (or an unknown handle) still succeeds: JDBC rethrows close errors.
    action(
        &door,
        "ClosePreparedStatement",
        close.as_any().encode_to_vec(),
    )
    .await
    .expect("closing twice succeeds");
}

#[tokio::test]
async fn metadata_answers_have_the_flight_sql_schemas_and_list_tables_made_with_ddl() {
    let (dir, door) = front_door();
    run_sql(&door, &csv_table_ddl(dir.path(), "t"))
        .await
        .expect("DDL");
    update(&door, "CREATE VIEW v AS SELECT 1 AS x")
        .await
        .expect("a view");

    // GetCatalogs.
    let command = CommandGetCatalogs {};
    let info = flight_info(&door, &command)
        .await
        .expect("GetCatalogs info");
    let expected = Schema::new(vec![Field::new("catalog_name", DataType::Utf8, false)]);
    assert_eq!(
        info.clone().try_decode_schema().expect("a schema"),
        expected
    );
    let (streamed, batches) = fetch(&door, only_ticket(&info)).await.expect("GetCatalogs");
    assert_eq!(streamed.as_ref(), &expected);
    let batch = concat_batches(&streamed, &batches).expect("one schema");
    assert_eq!(strings(&batch, "catalog_name"), [CATALOG_NAME]);

    // GetDbSchemas.
    let command = CommandGetDbSchemas {
        catalog: None,
        db_schema_filter_pattern: None,
    };
    let info = flight_info(&door, &command)
        .await
        .expect("GetDbSchemas info");
    let expected = Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, false),
    ]);
    assert_eq!(
        info.clone().try_decode_schema().expect("a schema"),
        expected
    );
    let (streamed, batches) = fetch(&door, only_ticket(&info))
        .await
        .expect("GetDbSchemas");
    assert_eq!(streamed.as_ref(), &expected);
    let batch = concat_batches(&streamed, &batches).expect("one schema");
    let schemas = strings(&batch, "db_schema_name");
    assert!(schemas.contains(&SCHEMA_NAME.to_string()), "{schemas:?}");
    assert!(
        strings(&batch, "catalog_name")
            .iter()
            .all(|c| c == CATALOG_NAME),
        "{batch:?}"
    );

    // GetTables, without and with the table schemas.
    let without = Schema::new(vec![
        Field::new("catalog_name", DataType::Utf8, true),
        Field::new("db_schema_name", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, false),
        Field::new("table_type", DataType::Utf8, false),
    ]);
    let mut with_fields = without.fields().to_vec();
    with_fields.push(Arc::new(Field::new(
        "table_schema",
        DataType::Binary,
        false,
    )));
    let with = Schema::new(with_fields);
    for (include_schema, expected) in [(false, without), (true, with)] {
        let (announced, streamed, batch) = tables(&door, include_schema).await;
        assert_eq!(
            announced.as_ref(),
            &expected,
            "include_schema {include_schema}"
        );
        assert_eq!(
            streamed.as_ref(),
            &expected,
            "include_schema {include_schema}"
        );
        let names = strings(&batch, "table_name");
        let types = strings(&batch, "table_type");
        let row = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} is not listed: {names:?}"))
        };
        let (t, v) = (row("t"), row("v"));
        assert_eq!(types[t], "TABLE");
        assert_eq!(types[v], "VIEW");
        assert_eq!(strings(&batch, "db_schema_name")[t], SCHEMA_NAME);
        if include_schema {
            let column = batch
                .column_by_name("table_schema")
                .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
                .expect("table_schema is Binary");
            let columns = try_schema_from_ipc_buffer(column.value(t)).expect("an IPC schema");
            let names: Vec<&str> = columns.fields().iter().map(|f| f.name().as_str()).collect();
            assert_eq!(names, ["a", "b"]);
            assert_eq!(columns.field(1).data_type(), &DataType::Utf8);
            // JDBC's getColumns reads the SQL type from the field metadata.
            assert_eq!(
                columns
                    .field(0)
                    .metadata()
                    .get("ARROW:FLIGHT:SQL:TYPE_NAME"),
                Some(&"BIGINT".to_string())
            );
        }
    }
}

#[tokio::test]
async fn unknown_actions_are_unimplemented_and_malformed_bodies_invalid() {
    let (_dir, door) = front_door();
    let status = action(&door, "DropEverything", vec![])
        .await
        .expect_err("unknown action");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    let status = action(&door, "SetSessionOptions", vec![0xff, 0xff])
        .await
        .expect_err("malformed body");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn cancel_flight_info_needs_a_query_id_and_stops_the_ticket() {
    let (_dir, door) = front_door();
    let cancel = |info: FlightInfo| {
        let request = CancelFlightInfoRequest { info: Some(info) };
        action(&door, "CancelFlightInfo", request.encode_to_vec())
    };
    // A ticket without a query id (as from before ids) cannot be named.
    let old_ticket = TicketStatementQuery {
        statement_handle: handles::encode_ticket(&QueryTicket {
            statement: BoundSql::new("SELECT 1".into()),
            query_id: None,
        })
        .expect("a ticket"),
    };
    let endpoint =
        FlightEndpoint::new().with_ticket(Ticket::new(old_ticket.as_any().encode_to_vec()));
    let status = cancel(FlightInfo::new().with_endpoint(endpoint))
        .await
        .expect_err("no query id");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // The old ticket itself still runs.
    let (_, batches) = fetch(&door, Ticket::new(old_ticket.as_any().encode_to_vec()))
        .await
        .expect("an id-less ticket still runs");
    assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);

    // A ticket the server issued carries one: cancelled before DoGet, it no longer runs.
    let info = statement_info(&door, "SELECT 1").await.expect("plans");
    let ticket = only_ticket(&info);
    let bodies = cancel(info).await.expect("cancelled");
    let result = CancelFlightInfoResult::decode(bodies[0].as_ref()).expect("a cancel result");
    assert_eq!(result.status, CancelStatus::Cancelled as i32);
    let status = fetch(&door, ticket).await.expect_err("cancelled ticket");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
}

#[tokio::test]
async fn reading_a_table_without_live_executors_is_unavailable() {
    let (dir, door) = front_door();
    run_sql(&door, &csv_table_ddl(dir.path(), "t"))
        .await
        .expect("DDL");
    let status = statement_info(&door, "SELECT count(*) FROM t")
        .await
        .expect_err("no executors");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // information_schema is answered by the coordinator itself.
    run_sql(&door, "SELECT table_name FROM information_schema.tables")
        .await
        .expect("information_schema needs no executor");
}

#[tokio::test]
async fn set_is_permission_denied_however_it_is_sent() {
    let (_dir, door) = front_door();
    let set = "SET datafusion.execution.batch_size = 1";
    let status = statement_info(&door, set).await.expect_err("SET");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = prepare(&door, set).await.expect_err("SET prepared");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = update(&door, set).await.expect_err("SET as an update");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// The in-process engine, counting the planning the front door asks of it.
struct CountingEngine {
    inner: QueryEngine,
    /// SQL planned ([`QueryService::prepare`]).
    prepared: AtomicUsize,
    /// Queries planned down to their physical plan at GetFlightInfo.
    planned: AtomicUsize,
    /// Statements run from their logical plan (their physical plan made there).
    executed: AtomicUsize,
    /// Queries run from a physical plan made earlier.
    executed_planned: AtomicUsize,
}

#[async_trait::async_trait]
impl QueryService for CountingEngine {
    async fn prepare(&self, sql: &str) -> Result<Statement> {
        self.prepared.fetch_add(1, Ordering::SeqCst);
        self.inner.prepare(sql).await
    }

    fn bind(&self, statement: Statement, values: &RecordBatch) -> Result<Statement> {
        self.inner.bind(statement, values)
    }

    fn check_runnable(&self, statement: &Statement) -> Result<()> {
        self.inner.check_runnable(statement)
    }

    async fn execute_update(&self, statement: &Statement) -> Result<i64> {
        self.inner.execute_update(statement).await
    }

    async fn execute(&self, statement: Statement) -> Result<QueryStream> {
        self.executed.fetch_add(1, Ordering::SeqCst);
        self.inner.execute(statement).await
    }

    async fn plan_query(&self, statement: Statement) -> Result<PlannedQuery> {
        self.planned.fetch_add(1, Ordering::SeqCst);
        self.inner.plan_query(statement).await
    }

    async fn is_current(&self, planned: &PlannedQuery) -> bool {
        self.inner.is_current(planned).await
    }

    async fn execute_planned(&self, planned: PlannedQuery) -> Result<QueryStream> {
        self.executed_planned.fetch_add(1, Ordering::SeqCst);
        self.inner.execute_planned(planned).await
    }

    async fn ingest(
        &self,
        table: &str,
        if_missing: IfMissing,
        if_exists: IfExists,
        incoming: SchemaRef,
        batches: futures::stream::BoxStream<'static, Result<RecordBatch>>,
    ) -> Result<u64> {
        self.inner
            .ingest(table, if_missing, if_exists, incoming, batches)
            .await
    }

    fn catalogs(&self) -> Vec<crate::engine::CatalogListing> {
        self.inner.catalogs()
    }

    async fn tables(&self) -> Result<Vec<crate::engine::TableListing>> {
        self.inner.tables().await
    }
}

/// How much planning the engine did: (prepared, planned, executed, executed_planned).
fn planning(engine: &CountingEngine) -> (usize, usize, usize, usize) {
    (
        engine.prepared.load(Ordering::SeqCst),
        engine.planned.load(Ordering::SeqCst),
        engine.executed.load(Ordering::SeqCst),
        engine.executed_planned.load(Ordering::SeqCst),
    )
}

/// A front door over a [`CountingEngine`].
fn counting_front_door() -> (tempfile::TempDir, Arc<CountingEngine>, FrontDoor) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = Arc::new(CountingEngine {
        inner: in_process_engine(dir.path()),
        prepared: AtomicUsize::new(0),
        planned: AtomicUsize::new(0),
        executed: AtomicUsize::new(0),
        executed_planned: AtomicUsize::new(0),
    });
    let door = FrontDoor::new(Arc::clone(&engine) as Arc<dyn QueryService>)
        .expect("the front door builds");
    (dir, engine, door)
}

/// The one value of a one-row result's column `column`.
fn only_string(batches: &[RecordBatch], column: &str) -> String {
    let rows: Vec<String> = batches.iter().flat_map(|b| strings(b, column)).collect();
    let [value] = rows.as_slice() else {
        panic!("one row expected, got {rows:?}");
    };
    value.clone()
}

/// A statement ticket as a client could build it, naming `query_id`.
fn hand_made_ticket(sql: &str, query_id: QueryId) -> Ticket {
    let ticket = TicketStatementQuery {
        statement_handle: handles::encode_ticket(&QueryTicket {
            statement: BoundSql::new(sql.into()),
            query_id: Some(query_id),
        })
        .expect("a ticket"),
    };
    Ticket::new(ticket.as_any().encode_to_vec())
}

/// The query id inside a ticket the server issued.
fn ticket_query_id(ticket: &Ticket) -> QueryId {
    let any = Any::decode(ticket.ticket.as_ref()).expect("an Any");
    let statement: TicketStatementQuery = any.unpack().expect("unpacks").expect("a statement");
    handles::decode_ticket(&statement.statement_handle)
        .expect("decodes")
        .query_id
        .expect("issued tickets carry a query id")
}

#[tokio::test]
async fn get_flight_info_then_do_get_plans_the_query_once() {
    let (_dir, engine, door) = counting_front_door();
    let info = statement_info(&door, "SELECT 'once' AS v")
        .await
        .expect("plans");
    assert_eq!(planning(&engine), (1, 1, 0, 0));
    let ticket = only_ticket(&info);
    let (schema, batches) = fetch(&door, ticket.clone()).await.expect("DoGet");
    assert_eq!(schema.as_ref(), &info.clone().try_decode_schema().unwrap());
    assert_eq!(only_string(&batches, "v"), "once");
    // DoGet planned nothing: no SQL, no physical plan.
    assert_eq!(planning(&engine), (1, 1, 0, 1));
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 1, misses: 0 });

    // The plan is used up: fetching the ticket again plans its SQL, as before the cache.
    let (_, batches) = fetch(&door, ticket).await.expect("DoGet again");
    assert_eq!(only_string(&batches, "v"), "once");
    assert_eq!(planning(&engine), (2, 1, 1, 1));
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 1, misses: 1 });

    // Updates keep nothing: they ran at GetFlightInfo.
    statement_info(&door, "CREATE VIEW v AS SELECT 1 AS x")
        .await
        .expect("DDL");
    assert_eq!(door.plans.len(), 0);
}

#[tokio::test]
async fn tickets_without_their_plan_are_planned_from_their_own_sql() {
    let (_dir, engine, door) = counting_front_door();
    // An id this server never issued (another coordinator's, or from before a restart).
    let (_, batches) = fetch(
        &door,
        hand_made_ticket("SELECT 'unknown' AS v", QueryId::random()),
    )
    .await
    .expect("an unknown id still runs");
    assert_eq!(only_string(&batches, "v"), "unknown");
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 0, misses: 1 });

    // An issued id in a ticket with other SQL: that ticket's SQL answers, not the kept plan.
    let info = statement_info(&door, "SELECT 'issued' AS v")
        .await
        .expect("plans");
    let id = ticket_query_id(&only_ticket(&info));
    let (_, batches) = fetch(&door, hand_made_ticket("SELECT 'tampered' AS v", id))
        .await
        .expect("the other SQL runs");
    assert_eq!(only_string(&batches, "v"), "tampered");
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 0, misses: 2 });
    // The mismatch used the plan up; the real ticket still answers, planned again.
    let (_, batches) = fetch(&door, only_ticket(&info))
        .await
        .expect("the issued ticket runs");
    assert_eq!(only_string(&batches, "v"), "issued");
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 0, misses: 3 });
    assert_eq!(planning(&engine).3, 0, "no kept plan ran");

    // A plan serves the user it was made for only.
    let info = statement_info(&door, "SELECT 'mine' AS v")
        .await
        .expect("plans");
    let other_user = Identity {
        user: Some("mallory".into()),
        session: None,
        admin: false,
    };
    let (_, batches) = fetch_as(&door, only_ticket(&info), Some(other_user))
        .await
        .expect("runs for its own user");
    assert_eq!(only_string(&batches, "v"), "mine");
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 0, misses: 4 });
}

#[tokio::test]
async fn the_ticket_of_a_prepared_statement_runs_the_plan_made_for_it() {
    let (_dir, engine, door) = counting_front_door();
    let prepared = prepare(&door, "SELECT $1 AS v").await.expect("prepares");
    let handle = bind(
        &door,
        &prepared.prepared_statement_handle,
        one_column("0", Arc::new(StringArray::from(vec!["bound"]))),
    )
    .await
    .expect("bind");
    let info = flight_info(&door, &prepared_query(&handle))
        .await
        .expect("plans");
    let before = planning(&engine);
    let (_, batches) = fetch(&door, only_ticket(&info)).await.expect("DoGet");
    assert_eq!(only_string(&batches, "v"), "bound");
    let after = planning(&engine);
    assert_eq!(
        (after.0 - before.0, after.2 - before.2, after.3 - before.3),
        (0, 0, 1),
        "DoGet planned nothing"
    );
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 1, misses: 0 });

    // Values remembered under the statement id (the handle from prepare time) hit too.
    let info = flight_info(&door, &prepared_query(&prepared.prepared_statement_handle))
        .await
        .expect("plans");
    let (_, batches) = fetch(&door, only_ticket(&info)).await.expect("DoGet");
    assert_eq!(only_string(&batches, "v"), "bound");
    assert_eq!(door.plans.stats(), PlanCacheStats { hits: 2, misses: 0 });
}

#[tokio::test]
async fn a_cancelled_ticket_drops_its_plan() {
    let (_dir, _engine, door) = counting_front_door();
    let info = statement_info(&door, "SELECT 1").await.expect("plans");
    assert_eq!(door.plans.len(), 1);
    let request = CancelFlightInfoRequest {
        info: Some(info.clone()),
    };
    action(&door, "CancelFlightInfo", request.encode_to_vec())
        .await
        .expect("cancelled");
    assert_eq!(door.plans.len(), 0);
    let status = fetch(&door, only_ticket(&info))
        .await
        .expect_err("cancelled ticket");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
}

#[tokio::test]
async fn statements_are_logged_under_the_id_their_flight_info_names() {
    let (_dir, door) = front_door();
    let info = statement_info(&door, "SELECT 1 AS a UNION ALL SELECT 2")
        .await
        .expect("plans");
    let metadata: serde_json::Value =
        serde_json::from_slice(&info.app_metadata).expect("app_metadata is JSON");
    let id = metadata["query_id"]
        .as_str()
        .expect("a query id")
        .to_string();
    // Announced, not run yet: not in the log.
    let unknown = action(&door, QUERY_STATUS, id.clone().into_bytes()).await;
    assert_eq!(unknown.unwrap_err().code(), Code::NotFound);
    fetch(&door, only_ticket(&info)).await.expect("runs");
    let [status] = action(&door, QUERY_STATUS, id.clone().into_bytes())
        .await
        .expect("status")
        .try_into()
        .expect("one result");
    let status: serde_json::Value = serde_json::from_slice(&status).expect("JSON");
    assert_eq!(status["state"], "finished");
    assert_eq!(status["rows"], 2);
    assert!(status["explain_analyze"].as_str().is_some(), "{status}");

    // A failure keeps its code; an update is logged at GetFlightInfo, where it runs.
    assert!(run_sql(&door, "SELECT * FROM nope").await.is_err());
    statement_info(&door, "CREATE VIEW v AS SELECT 1 AS x")
        .await
        .expect("DDL runs");
    let snapshot = door.log.snapshot();
    assert!(snapshot.running.is_empty(), "{:?}", snapshot.running);
    let states: Vec<(&str, &str, Option<&str>)> = snapshot
        .recent
        .iter()
        .map(|i| (i.sql.as_str(), i.state, i.error_code.as_deref()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("CREATE VIEW v AS SELECT 1 AS x", "finished", None),
            ("SELECT * FROM nope", "failed", Some("NOT_FOUND")),
            ("SELECT 1 AS a UNION ALL SELECT 2", "finished", None),
        ]
    );
    let bad = action(&door, CANCEL_QUERY_BY_ID, Vec::new()).await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    let call = statement_info(&door, "CALL system.cancel_query('gone')").await;
    assert_eq!(call.unwrap_err().code(), Code::NotFound);
    let other = statement_info(&door, "CALL system.drop_everything()").await;
    assert_eq!(other.unwrap_err().code(), Code::NotFound);
}
