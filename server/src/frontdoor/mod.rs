//! The Flight SQL front door: what ADBC, JDBC, pyarrow and the Flight SQL CLI talk to.
//!
//! A thin protocol layer over [`QueryEngine`]: it decodes Flight SQL commands, asks the engine to
//! plan or run statements, and encodes results. Contract, from what real clients need
//! (`shared/design/flight-sql-clients.md`):
//! * `CreatePreparedStatement` only plans. DDL runs exactly once: at `GetFlightInfo` (ADBC and
//!   most clients never `DoGet` a result without columns; `DoGet` of a DDL ticket streams the
//!   empty result without running it again) or in a `DoPut` update call (JDBC);
//! * the schema in `FlightInfo` / `dataset_schema` is exactly the schema `DoGet` streams, empty
//!   results still carry it, and no view or dictionary types reach the wire;
//! * one endpoint per statement, with no location (clients reuse their connection);
//! * results stream as produced, pulled by the client through gRPC flow control; dropping the
//!   `DoGet` stream cancels the query on every executor;
//! * errors keep DataFusion's message with a meaningful code (see [`crate::error`]).

mod column_types;
mod handles;
mod keys;
mod sql_info;
mod xdbc_types;

use handles::BoundSql;

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, XdbcTypeInfoData};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetCrossReference,
    CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys, CommandGetPrimaryKeys,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandGetXdbcTypeInfo,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::catalog::TableProvider;
use datafusion::datasource::TableType;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use prost::Message;
use prost::bytes::Bytes as ProstBytes;
use tonic::{Request, Response, Status, Streaming};

use crate::arrow_compat::plain_schema;
use crate::engine::{QueryEngine, QueryStream, Statement, StatementKind};
use crate::error::{QuiverError, Result};

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// Largest message a client may send (ingest and parameter batches).
const MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// The Flight SQL service.
pub struct FrontDoor {
    engine: Arc<QueryEngine>,
    sql_info: SqlInfoData,
    xdbc_types: XdbcTypeInfoData,
}

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor").finish_non_exhaustive()
    }
}

impl FrontDoor {
    pub fn new(engine: Arc<QueryEngine>) -> Result<Self> {
        Ok(Self {
            engine,
            sql_info: sql_info::sql_info()?,
            xdbc_types: xdbc_types::xdbc_type_info()?,
        })
    }

    /// The tonic service to mount on the coordinator's server.
    pub fn into_service(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
            .max_encoding_message_size(usize::MAX)
    }

    /// Plans a statement (binding its parameters) without running queries.
    async fn plan(&self, bound: &BoundSql) -> Result<Statement> {
        let statement = self.engine.prepare(&bound.sql).await?;
        match &bound.parameters {
            Some(values) => self.engine.bind(statement, values),
            None => Ok(statement),
        }
    }

    async fn statement_info(
        &self,
        bound: BoundSql,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let statement = self.plan(&bound).await?;
        self.engine.check_runnable(&statement)?;
        if statement.kind == StatementKind::Ddl {
            // ADBC (and most clients) never fetch a result without columns: DDL runs here, once.
            self.engine.execute_statement(statement.clone()).await?;
        }
        let ticket = TicketStatementQuery {
            statement_handle: handles::encode_ticket(&bound)?,
        };
        flight_info(&statement.schema, ticket.as_any(), descriptor)
    }

    /// DoGet: streams a query's result. DDL already ran at `GetFlightInfo`; its ticket streams
    /// the empty result without running it again.
    async fn run(&self, bound: BoundSql) -> Result<Response<DoGetStream>, Status> {
        let statement = self.plan(&bound).await?;
        let result = match statement.kind {
            StatementKind::Ddl => QueryStream {
                schema: statement.schema,
                batches: stream::empty().boxed(),
            },
            StatementKind::Query | StatementKind::Explain { .. } => {
                self.engine.execute_statement(statement).await?
            }
        };
        Ok(Response::new(encode(result)))
    }

    async fn tables(&self, query: CommandGetTables) -> Result<RecordBatch> {
        let include_schema = query.include_schema;
        let mut query = query;
        // JDBC/ODBC say TABLE, DataFusion says BASE TABLE: accept both names for base tables.
        if query.table_types.iter().any(|t| t == "BASE TABLE") {
            query.table_types.push("TABLE".into());
        }
        let mut builder = query.into_builder();
        let ctx = self.engine.session();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                for table_name in schema.table_names() {
                    let Some(table) = schema.table(&table_name).await? else {
                        continue;
                    };
                    let table_schema = if include_schema {
                        column_types::with_sql_types(&plain_schema(&table.schema()))
                    } else {
                        Arc::new(Schema::empty())
                    };
                    builder.append(
                        &catalog_name,
                        &schema_name,
                        &table_name,
                        table_type_name(table.as_ref()),
                        &table_schema,
                    )?;
                }
            }
        }
        Ok(builder.build()?)
    }
}

fn table_type_name(table: &dyn TableProvider) -> &'static str {
    match table.table_type() {
        TableType::Base => "TABLE",
        TableType::View => "VIEW",
        TableType::Temporary => "LOCAL TEMPORARY",
    }
}

fn schema_bytes(schema: &Schema) -> Result<ProstBytes> {
    let options = IpcWriteOptions::default();
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &options).try_into()?;
    Ok(bytes)
}

fn flight_info(
    schema: &Schema,
    ticket: Any,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| QuiverError::Internal(format!("encoding schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(Response::new(info))
}

/// Streams a result as Flight data: schema first (also for empty results), then the batches.
fn encode(result: QueryStream) -> DoGetStream {
    let QueryStream { schema, batches } = result;
    let batches = batches.map_err(|e| FlightError::Tonic(Box::new(e.to_status())));
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches)
        .map_err(Status::from)
        .boxed()
}

fn encode_batch(batch: RecordBatch) -> Response<DoGetStream> {
    Response::new(encode(QueryStream {
        schema: batch.schema(),
        batches: stream::once(async { Ok(batch) }).boxed(),
    }))
}

fn metadata_info<T: ProstMessageExt>(
    command: &T,
    schema: SchemaRef,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    flight_info(&schema, command.as_any(), request.into_inner())
}

#[tonic::async_trait]
impl FlightSqlService for FrontDoor {
    type FlightService = FrontDoor;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // No authentication is configured: every client is accepted.
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: Bytes::new(),
        };
        Ok(Response::new(stream::once(async { Ok(response) }).boxed()))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let bound = BoundSql {
            sql: query.query,
            parameters: None,
        };
        self.statement_info(bound, request.into_inner()).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let bound = handles::decode_prepared(&cmd.prepared_statement_handle)?;
        self.statement_info(bound, request.into_inner()).await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, schema, request)
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, schema, request)
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, schema, request)
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, schema, request)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        metadata_info(&query, schema, request)
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.run(handles::decode_ticket(&ticket.statement_handle)?)
            .await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.run(handles::decode_prepared(&query.prepared_statement_handle)?)
            .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for name in self.engine.session().catalog_names() {
            builder.append(name);
        }
        Ok(encode_batch(builder.build().map_err(QuiverError::from)?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let ctx = self.engine.session();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else {
                continue;
            };
            for schema_name in catalog.schema_names() {
                builder.append(&catalog_name, schema_name);
            }
        }
        Ok(encode_batch(builder.build().map_err(QuiverError::from)?))
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(encode_batch(self.tables(query).await?))
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        Ok(encode_batch(builder.build().map_err(QuiverError::from)?))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query
            .into_builder(&self.sql_info)
            .build()
            .map_err(QuiverError::from)?;
        Ok(encode_batch(batch))
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Ok(self.engine.execute_update(&command.query).await?)
    }

    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let bound = handles::decode_prepared(&command.prepared_statement_handle)?;
        Ok(self.engine.execute_update(&bound.sql).await?)
    }

    /// Binds parameter values: one row, by position. The new handle carries them (JDBC uses the
    /// returned handle unconditionally).
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut bound = handles::decode_prepared(&query.prepared_statement_handle)?;
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(QuiverError::from)?;
        let values = match batches.as_slice() {
            [] => None,
            [first, ..] => {
                Some(concat_batches(&first.schema(), &batches).map_err(QuiverError::from)?)
            }
        };
        // An empty batch (what some clients send for "no parameters") leaves the handle unbound.
        bound.parameters = values.filter(|v| v.num_rows() > 0 || v.num_columns() > 0);
        if bound.parameters.is_some() {
            // Refuse bad values now, not at execution.
            self.plan(&bound).await?;
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handles::encode_prepared(&bound)?),
        })
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let statement = self.engine.prepare(&query.query).await?;
        let bound = BoundSql {
            sql: query.query,
            parameters: None,
        };
        // An empty dataset schema tells JDBC to run the statement as an update.
        let dataset_schema = match statement.kind {
            StatementKind::Ddl => ProstBytes::new(),
            StatementKind::Query | StatementKind::Explain { .. } => {
                schema_bytes(&statement.schema)?
            }
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handles::encode_prepared(&bound)?,
            dataset_schema,
            parameter_schema: schema_bytes(&statement.parameter_schema())?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles carry their statement: nothing to free, and closing twice is fine.
        Ok(())
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, keys::primary_keys_schema(), request)
    }

    async fn get_flight_info_imported_keys(
        &self,
        query: CommandGetImportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, keys::foreign_keys_schema(), request)
    }

    async fn get_flight_info_exported_keys(
        &self,
        query: CommandGetExportedKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, keys::foreign_keys_schema(), request)
    }

    async fn get_flight_info_cross_reference(
        &self,
        query: CommandGetCrossReference,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(&query, keys::foreign_keys_schema(), request)
    }

    // Quiver tables have no declared keys: these answer empty, correctly typed results (BI tools
    // call them while browsing and break on UNIMPLEMENTED).
    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(encode_batch(RecordBatch::new_empty(
            keys::primary_keys_schema(),
        )))
    }

    async fn do_get_imported_keys(
        &self,
        _query: CommandGetImportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(encode_batch(RecordBatch::new_empty(
            keys::foreign_keys_schema(),
        )))
    }

    async fn do_get_exported_keys(
        &self,
        _query: CommandGetExportedKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(encode_batch(RecordBatch::new_empty(
            keys::foreign_keys_schema(),
        )))
    }

    async fn do_get_cross_reference(
        &self,
        _query: CommandGetCrossReference,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Ok(encode_batch(RecordBatch::new_empty(
            keys::foreign_keys_schema(),
        )))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&self.xdbc_types).schema();
        metadata_info(&query, schema, request)
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let batch = query
            .into_builder(&self.xdbc_types)
            .build()
            .map_err(QuiverError::from)?;
        Ok(encode_batch(batch))
    }

    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        Err(Status::unimplemented(format!(
            "action '{}' is not supported",
            request.get_ref().r#type
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
