//! The Flight SQL front door: what ADBC, JDBC, pyarrow and the Flight SQL CLI talk to.
//!
//! A thin protocol layer over the engine, which it reaches only through [`QueryService`] (in
//! Quiver's own types, no DataFusion): it decodes Flight SQL commands, asks the engine to plan or
//! run statements or to list tables, and encodes results. Contract, from what real clients need
//! (`shared/design/flight-sql-clients.md`):
//! * `CreatePreparedStatement` only plans. DDL runs exactly once: at `GetFlightInfo` (ADBC and
//!   most clients never `DoGet` a result without columns; `DoGet` of a DDL ticket streams the
//!   empty result without running it again) or in a `DoPut` update call (JDBC);
//! * the schema in `FlightInfo` / `dataset_schema` is exactly the schema `DoGet` streams, empty
//!   results still carry it, and no view or dictionary types reach the wire;
//! * one endpoint per statement, with no location (clients reuse their connection);
//! * results stream as produced, pulled by the client through gRPC flow control; dropping the
//!   `DoGet` stream, or `CancelFlightInfo` on its FlightInfo, cancels the query on every executor;
//! * writes (`CREATE TABLE`, `INSERT`) run like DDL and report their row count; bulk ingest
//!   (`CommandStatementIngest`) and parameter rows sent with a prepared update are the engine's
//!   writes ([`QueryService::ingest`], [`QueryService::execute_update`]);
//! * session options (`catalog`, `schema`) are kept per session ([`sessions`]); credentials were
//!   checked before any of this runs ([`crate::security::auth`]);
//! * Substrait and transactions answer a clear `Unimplemented`, as do unknown actions;
//! * errors keep DataFusion's message with a meaningful code, decided in [`crate::error`] only
//!   (this module builds no `Status` itself);
//! * ids are typed: tickets carry a [`QueryId`], prepared statements a [`StatementId`];
//! * a query is planned once: `GetFlightInfo` plans it down to its physical plan and keeps that
//!   for the `DoGet` of its ticket ([`plan_cache`], bounded and expiring); tickets stay
//!   stateless, and a `DoGet` that finds no plan made for exactly its ticket plans the ticket's
//!   SQL as before.

mod column_types;
mod handles;
mod keys;
mod plan_cache;
mod running;
mod sessions;
mod sql_info;
mod xdbc_types;

#[cfg(test)]
mod tests;

use handles::{Bindings, BoundSql, PreparedHandle, QueryTicket};
use plan_cache::{PlanCache, PlanKey};
use running::RunningQueries;
use sessions::Sessions;

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
    ActionBeginSavepointRequest, ActionBeginSavepointResult, ActionBeginTransactionRequest,
    ActionBeginTransactionResult, ActionCancelQueryRequest, ActionCancelQueryResult,
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, ActionCreatePreparedSubstraitPlanRequest,
    ActionEndSavepointRequest, ActionEndTransactionRequest, Any, CommandGetCatalogs,
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementIngest, CommandStatementQuery, CommandStatementSubstraitPlan,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TableExistsOption, TableNotExistOption, TicketStatementQuery,
};
use arrow_flight::{
    CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightDescriptor,
    FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt, stream};
use prost::Message;
use prost::bytes::Bytes as ProstBytes;
use quiver_proto::frontdoor::{
    CloseSessionRequest, GetSessionOptionsRequest, SetSessionOptionsRequest,
};
use tonic::{Request, Response, Status, Streaming};

use crate::engine::{IfExists, IfMissing};
use crate::engine::{
    PlannedQuery, Procedure, QueryService, QueryStream, ResultPart, Statement, TableKind,
};
use crate::error::{QuiverError, Result};
use crate::ids::{QueryId, StatementId};
use crate::logs;
use crate::ops::queries::{Caller, QueryHandle, QueryLog};
use crate::planner::settings::{CATALOG_NAME, SCHEMA_NAME};
use crate::security::auth::{Identity, IssuedToken, SESSION_COOKIE, random_id};
use crate::security::ipc_guard;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send>>;

/// The Flight SQL service.
pub(crate) struct FrontDoor {
    engine: Arc<dyn QueryService>,
    sql_info: SqlInfoData,
    xdbc_types: XdbcTypeInfoData,
    sessions: Sessions,
    running: RunningQueries,
    bindings: Bindings,
    /// Queries planned at `GetFlightInfo`, for the `DoGet` of their tickets.
    plans: PlanCache<PlannedQuery>,
    /// Every statement run, for `system.queries`, the status page and cancel by id.
    log: Arc<QueryLog>,
    /// Most bytes one client IPC message may decode to (decompressed buffers included).
    max_decoded_bytes: usize,
}

/// `--max-message-bytes` by default.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How far past `--max-message-bytes` a compressed client batch may inflate.
const MAX_COMPRESSION_RATIO: usize = 16;

impl std::fmt::Debug for FrontDoor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontDoor").finish_non_exhaustive()
    }
}

impl FrontDoor {
    pub(crate) fn new(engine: Arc<dyn QueryService>) -> Result<Self> {
        Ok(Self {
            engine,
            sql_info: sql_info::sql_info()?,
            xdbc_types: xdbc_types::xdbc_type_info()?,
            sessions: Sessions::default(),
            running: RunningQueries::default(),
            bindings: Bindings::default(),
            plans: PlanCache::default(),
            log: Arc::new(QueryLog::default()),
            max_decoded_bytes: DEFAULT_MAX_MESSAGE_BYTES * MAX_COMPRESSION_RATIO,
        })
    }

    /// A prepared statement handle with the values bound to it, also when the client binds
    /// through DoPut but then keeps using the handle it got at prepare time (flightsql-dbapi).
    fn resolve_prepared(&self, handle: &[u8]) -> Result<BoundSql> {
        let PreparedHandle { mut statement, id } = handles::decode_prepared(handle)?;
        if statement.parameters.is_none()
            && let Some(id) = &id
        {
            statement.parameters = self.bindings.get(id);
        }
        Ok(statement)
    }

    /// Records every statement in `log` (the coordinator's one log).
    pub(crate) fn with_query_log(mut self, log: Arc<QueryLog>) -> Self {
        self.log = log;
        self
    }

    /// The tonic service to mount on the coordinator's server.
    /// `max_message_bytes` bounds what a client may send in one message (ingest and parameter
    /// batches); results are split into small messages by the encoder.
    pub(crate) fn into_service(mut self, max_message_bytes: usize) -> FlightServiceServer<Self> {
        self.max_decoded_bytes = max_message_bytes.saturating_mul(MAX_COMPRESSION_RATIO);
        FlightServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
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

    /// GetFlightInfo of a statement: updates run here; a query is planned for its `DoGet`,
    /// which `user` may then run without planning again.
    async fn statement_info(
        &self,
        bound: BoundSql,
        session: Option<String>,
        caller: Caller,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let query_id = QueryId::random();
        let planned = logs::in_query(&query_id, self.plan(&bound))
            .await
            .and_then(|statement| {
                let statement = statement
                    .with_target_file_bytes(self.sessions.target_file_bytes(session.as_deref()));
                self.engine.check_runnable(&statement)?;
                Ok(statement)
            });
        let statement = match planned {
            Ok(statement) => statement,
            Err(e) => {
                // A statement refused before it runs is logged too: it failed with its code.
                self.log
                    .start(query_id.as_str(), caller.user.clone(), &bound.sql)
                    .end(Err(&e.to_status()));
                return Err(e.into());
            }
        };
        let schema = Arc::clone(&statement.schema);
        // ADBC (and most clients) never fetch a result without columns: DDL and writes run
        // here, once, and report their row count as the result's total_records.
        let updated = if statement.kind.is_update() {
            let handle = self
                .log
                .start(query_id.as_str(), caller.user.clone(), &bound.sql);
            Some(logs::in_query(&query_id, self.logged_update(&statement, &caller, &handle)).await?)
        } else {
            let planned = match logs::in_query(&query_id, self.engine.plan_query(statement)).await {
                Ok(planned) => planned,
                Err(e) => {
                    self.log
                        .start(query_id.as_str(), caller.user.clone(), &bound.sql)
                        .end(Err(&e.to_status()));
                    return Err(e.into());
                }
            };
            self.plans
                .insert(query_id.clone(), PlanKey::new(&bound, caller.user), planned);
            None
        };
        let app_metadata = serde_json::json!({ "query_id": query_id.as_str() }).to_string();
        let ticket = TicketStatementQuery {
            statement_handle: handles::encode_ticket(&QueryTicket {
                statement: bound,
                query_id: Some(query_id),
            })?,
        };
        let mut info =
            flight_info(&schema, ticket.as_any(), descriptor)?.with_app_metadata(app_metadata);
        if let Some(rows) = updated {
            info = info.with_total_records(rows);
        }
        Ok(Response::new(info))
    }

    /// DoGet: streams a query's result, cancellable by its query id when it has one. Runs the
    /// plan `GetFlightInfo` made for exactly this ticket and `user` when there is one; else
    /// plans the ticket's SQL. Updates already ran at `GetFlightInfo`; their tickets stream the
    /// empty result without running them again.
    async fn run(
        &self,
        bound: BoundSql,
        query_id: Option<QueryId>,
        user: Option<String>,
    ) -> Result<Response<DoGetStream>, Status> {
        // A prepared statement's direct DoGet has no id of its own: its log lines get one.
        let log_id = query_id.clone().unwrap_or_else(QueryId::random);
        logs::query_span(&log_id)
            .in_scope(|| tracing::info!(user = user.as_deref().unwrap_or(""), "query started"));
        let (started, handle) = match self.planned(query_id.as_ref(), &bound, user.clone()).await {
            Some(mut planned) => {
                let handle = self.log.start(log_id.as_str(), user, &bound.sql);
                planned.statement.tracker = Some(handle.clone());
                (
                    logs::in_query(&log_id, self.engine.execute_planned(planned)).await,
                    handle,
                )
            }
            None => match self.plan(&bound).await {
                // The update ran (and was logged) at GetFlightInfo.
                Ok(statement) if statement.kind.is_update() => {
                    return Ok(Response::new(encode(QueryStream::from_batches(
                        statement.schema,
                        stream::empty().boxed(),
                    ))));
                }
                Ok(mut statement) => {
                    let handle = self.log.start(log_id.as_str(), user, &bound.sql);
                    statement.tracker = Some(handle.clone());
                    (
                        logs::in_query(&log_id, self.engine.execute(statement)).await,
                        handle,
                    )
                }
                Err(e) => (Err(e), self.log.start(log_id.as_str(), user, &bound.sql)),
            },
        };
        let result = match started {
            Ok(result) => result,
            Err(e) => {
                handle.end(Err(&e.to_status()));
                return Err(e.into());
            }
        };
        let encoded = logs::in_query(&log_id, logged(handle, encode(result))).boxed();
        let Some(query_id) = query_id else {
            return Ok(Response::new(encoded));
        };
        Ok(Response::new(
            self.running.track(&query_id, encoded)?.boxed(),
        ))
    }

    /// The plan kept for the ticket `query_id` names, if it was made for this very `bound`
    /// statement and `user` and is still current (see [`plan_cache`]).
    async fn planned(
        &self,
        query_id: Option<&QueryId>,
        bound: &BoundSql,
        user: Option<String>,
    ) -> Option<PlannedQuery> {
        let outcome = match query_id {
            None => Err(plan_cache::Miss::Unknown),
            Some(id) => match self.plans.take(id, &PlanKey::new(bound, user)) {
                Ok(planned) if !self.engine.is_current(&planned).await => {
                    Err(plan_cache::Miss::Stale)
                }
                outcome => outcome,
            },
        };
        self.plans.counted(query_id, outcome)
    }

    /// Runs an update once per row of bound parameter values (JDBC `executeBatch`, DB-API
    /// `executemany`), or once when none are bound; returns the total row count.
    async fn run_update(
        &self,
        bound: BoundSql,
        session: Option<String>,
        caller: Caller,
        values: Vec<RecordBatch>,
    ) -> Result<i64> {
        let handle = self
            .log
            .start(QueryId::random().as_str(), caller.user.clone(), &bound.sql);
        let run = self.run_update_rows(bound, session, &caller, values);
        let outcome = tokio::select! {
            outcome = run => outcome,
            _ = handle.cancelled() => Err(cancelled_by_request()),
        };
        end_update(&handle, &outcome);
        outcome
    }

    async fn run_update_rows(
        &self,
        bound: BoundSql,
        session: Option<String>,
        caller: &Caller,
        values: Vec<RecordBatch>,
    ) -> Result<i64> {
        let target_file_bytes = self.sessions.target_file_bytes(session.as_deref());
        let rows: Vec<RecordBatch> = values
            .iter()
            .filter(|b| b.num_columns() > 0)
            .flat_map(|b| (0..b.num_rows()).map(move |i| b.slice(i, 1)))
            .collect();
        if rows.is_empty() {
            let statement = self
                .plan(&bound)
                .await?
                .with_target_file_bytes(target_file_bytes);
            return self.update(&statement, caller).await;
        }
        // Planned once; each row binds a copy.
        let statement = self
            .engine
            .prepare(&bound.sql)
            .await?
            .with_target_file_bytes(target_file_bytes);
        let mut total = 0i64;
        for row in rows {
            let bound_row = self.engine.bind(statement.clone(), &row)?;
            total = total.saturating_add(self.update(&bound_row, caller).await?);
        }
        Ok(total)
    }

    /// Runs an update (a `CALL` of a procedure included) for `caller`.
    async fn update(&self, statement: &Statement, caller: &Caller) -> Result<i64> {
        match &statement.procedure {
            Some(Procedure::CancelQuery(id)) => {
                self.log.cancel(id, caller)?;
                Ok(1)
            }
            None => self.engine.execute_update(statement).await,
        }
    }

    /// Runs an update under its log entry `handle`: cancelling the entry stops it, and the entry
    /// ends with the update.
    async fn logged_update(
        &self,
        statement: &Statement,
        caller: &Caller,
        handle: &QueryHandle,
    ) -> Result<i64> {
        let outcome = tokio::select! {
            outcome = self.update(statement, caller) => outcome,
            _ = handle.cancelled() => Err(cancelled_by_request()),
        };
        end_update(handle, &outcome);
        outcome
    }

    /// Who sends a request (for the query log and its permission rule).
    fn caller<T>(request: &Request<T>) -> Caller {
        match request.extensions().get::<Identity>() {
            Some(identity) => Caller {
                user: identity.user.clone(),
                admin: identity.admin,
            },
            None => Caller {
                user: None,
                admin: false,
            },
        }
    }

    /// The session key of a request: its token's session, or its session cookie.
    fn session_key<T>(request: &Request<T>) -> Option<String> {
        request
            .extensions()
            .get::<Identity>()
            .and_then(|identity| identity.session.clone())
    }

    /// The authenticated user of a request (`None` when authentication is off).
    fn user<T>(request: &Request<T>) -> Option<String> {
        request
            .extensions()
            .get::<Identity>()
            .and_then(|identity| identity.user.clone())
    }

    /// Cancels the query a FlightInfo's ticket names.
    fn cancel_info(&self, info: &FlightInfo) -> Result<()> {
        let ticket = info
            .endpoint
            .first()
            .and_then(|e| e.ticket.as_ref())
            .ok_or_else(|| QuiverError::InvalidArgument("the FlightInfo has no ticket".into()))?;
        let any = Any::decode(ticket.ticket.as_ref())
            .map_err(|_| QuiverError::InvalidArgument("not a Quiver ticket".into()))?;
        let statement: TicketStatementQuery =
            any.unpack().map_err(QuiverError::from)?.ok_or_else(|| {
                QuiverError::InvalidArgument(
                    "only statement results can be cancelled (metadata calls finish at once)"
                        .into(),
                )
            })?;
        let query_id = handles::decode_ticket(&statement.statement_handle)?
            .query_id
            .ok_or_else(|| {
                QuiverError::InvalidArgument("this ticket carries no query id".into())
            })?;
        self.running.cancel(&query_id);
        self.plans.remove(&query_id);
        Ok(())
    }

    async fn fallback_action(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let key = Self::session_key(&request);
        let caller = Self::caller(&request);
        let action = request.into_inner();
        let malformed =
            |what: &str| QuiverError::InvalidArgument(format!("malformed {what} request body"));
        let mut new_cookie = None;
        let body = match action.r#type.as_str() {
            SET_SESSION_OPTIONS => {
                let options = SetSessionOptionsRequest::decode(action.body.as_ref())
                    .map_err(|_| malformed(SET_SESSION_OPTIONS))?;
                let key = key.unwrap_or_else(|| {
                    let key = random_id();
                    new_cookie = Some(key.clone());
                    key
                });
                self.sessions
                    .set(&key, options, &self.engine.catalogs())
                    .encode_to_vec()
            }
            GET_SESSION_OPTIONS => {
                GetSessionOptionsRequest::decode(action.body.as_ref())
                    .map_err(|_| malformed(GET_SESSION_OPTIONS))?;
                self.sessions.get(key.as_deref()).encode_to_vec()
            }
            CLOSE_SESSION => {
                CloseSessionRequest::decode(action.body.as_ref())
                    .map_err(|_| malformed(CLOSE_SESSION))?;
                self.sessions.close(key.as_deref()).encode_to_vec()
            }
            CANCEL_FLIGHT_INFO => {
                let cancel = CancelFlightInfoRequest::decode(action.body.as_ref())
                    .map_err(|_| malformed(CANCEL_FLIGHT_INFO))?;
                let info = cancel.info.ok_or_else(|| {
                    QuiverError::InvalidArgument("CancelFlightInfo without info".into())
                })?;
                self.cancel_info(&info)?;
                CancelFlightInfoResult {
                    status: CancelStatus::Cancelled as i32,
                }
                .encode_to_vec()
            }
            QUERY_STATUS => {
                let id = query_id_body(&action.body)?;
                let info = self
                    .log
                    .get(id)
                    .ok_or_else(|| QuiverError::NotFound(format!("no query with id {id}")))?;
                serde_json::to_vec(&info)
                    .map_err(|e| QuiverError::Internal(format!("encoding query status: {e}")))?
            }
            CANCEL_QUERY_BY_ID => {
                let id = query_id_body(&action.body)?;
                self.log.cancel(id, &caller)?;
                b"{\"cancelled\":true}".to_vec()
            }
            other => {
                return Err(
                    QuiverError::Unsupported(format!("action '{other}' is not supported")).into(),
                );
            }
        };
        let result = arrow_flight::Result { body: body.into() };
        let mut response: Response<<Self as FlightService>::DoActionStream> =
            Response::new(stream::once(async { Ok(result) }).boxed());
        if let Some(cookie) = new_cookie
            && let Ok(value) = format!("{SESSION_COOKIE}={cookie}; Path=/; HttpOnly").parse()
        {
            response.metadata_mut().insert("set-cookie", value);
        }
        Ok(response)
    }

    async fn tables(&self, query: CommandGetTables) -> Result<RecordBatch> {
        let include_schema = query.include_schema;
        let mut query = query;
        // JDBC/ODBC say TABLE, DataFusion says BASE TABLE: accept both names for base tables.
        if query.table_types.iter().any(|t| t == "BASE TABLE") {
            query.table_types.push("TABLE".into());
        }
        let mut builder = query.into_builder();
        for table in self.engine.tables().await? {
            let columns = if include_schema {
                column_types::with_sql_types(&table.columns)
            } else {
                Arc::new(Schema::empty())
            };
            builder.append(
                &table.catalog,
                &table.schema,
                &table.name,
                table_type_name(table.kind),
                &columns,
            )?;
        }
        Ok(builder.build()?)
    }
}

const SET_SESSION_OPTIONS: &str = "SetSessionOptions";
const GET_SESSION_OPTIONS: &str = "GetSessionOptions";
const CLOSE_SESSION: &str = "CloseSession";
const CANCEL_FLIGHT_INFO: &str = "CancelFlightInfo";
/// Quiver's actions (bodies: a query id, UTF-8): a query's `system.queries` row as JSON, and
/// cancel by id (its user or an admin). Flight SQL's own `CancelQuery` takes a FlightInfo.
const QUERY_STATUS: &str = "QueryStatus";
const CANCEL_QUERY_BY_ID: &str = "CancelQueryById";

fn query_id_body(body: &[u8]) -> Result<&str> {
    std::str::from_utf8(body)
        .map(str::trim)
        .ok()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| QuiverError::InvalidArgument("the action's body must be a query id".into()))
}

fn cancelled_by_request() -> QuiverError {
    QuiverError::Cancelled("the query was cancelled on request".into())
}

/// Ends an update's log entry with its outcome (its rows written on success).
fn end_update(handle: &QueryHandle, outcome: &Result<i64>) {
    match outcome {
        Ok(rows) => {
            handle.sent(u64::try_from(*rows).unwrap_or(0), 0);
            handle.end(Ok(()));
        }
        Err(e) => handle.end(Err(&e.to_status())),
    }
}

/// A query's result stream, recorded in its log entry: rows and bytes as they go, its end or
/// error. Cancelling the entry ends the stream with `Cancelled` (dropping the query's stream,
/// which stops its work); a client hang-up drops it, and the entry ends as cancelled.
fn logged(handle: QueryHandle, results: DoGetStream) -> DoGetStream {
    let stop = handle.cancelled();
    let recorder = handle.clone();
    let counted = results.map(move |item| {
        match &item {
            Ok(data) => recorder.sent(batch_rows(data), data.data_body.len() as u64),
            Err(status) => recorder.end(Err(status)),
        }
        item
    });
    let tail = stream::once(async move {
        if handle.is_cancelled() {
            let status = cancelled_by_request().to_status();
            handle.end(Err(&status));
            Some(Err(status))
        } else {
            handle.end(Ok(()));
            None
        }
    })
    .filter_map(|item| async move { item });
    counted.take_until(stop).chain(tail).boxed()
}

/// The rows of a record batch message (0 for schema and dictionary messages).
fn batch_rows(data: &arrow_flight::FlightData) -> u64 {
    arrow::ipc::root_as_message(&data.data_header)
        .ok()
        .and_then(|m| m.header_as_record_batch())
        .map(|b| u64::try_from(b.length()).unwrap_or(0))
        .unwrap_or(0)
}
/// `ActionCancelQueryResult.CancelResult.CANCEL_RESULT_CANCELLED` (arrow-flight does not export
/// the enum).
const CANCEL_RESULT_CANCELLED: i32 = 1;

fn substrait_unsupported() -> QuiverError {
    QuiverError::Unsupported("Substrait plans are not supported: send SQL".into())
}

fn transactions_unsupported() -> QuiverError {
    QuiverError::Unsupported(
        "transactions are not supported: every statement commits on its own (autocommit)".into(),
    )
}

/// Every Arrow batch a DoPut carries.
/// The batches of a client's DoPut stream, each message checked ([`ipc_guard`]) before arrow
/// decodes it.
fn client_batches(
    request: Request<PeekableFlightDataStream>,
    max_decoded_bytes: usize,
) -> FlightRecordBatchStream {
    FlightRecordBatchStream::new_from_flight_data(request.into_inner().map(move |data| {
        let data = data.map_err(|status| {
            let limit = max_decoded_bytes / MAX_COMPRESSION_RATIO;
            FlightError::Tonic(Box::new(
                QuiverError::from_client_status(status, limit).to_status(),
            ))
        })?;
        ipc_guard::check_message(&data.data_header, &data.data_body, max_decoded_bytes)
            .map_err(|e| FlightError::Tonic(Box::new(e.to_status())))?;
        Ok(data)
    }))
}

async fn read_batches(
    request: Request<PeekableFlightDataStream>,
    max_decoded_bytes: usize,
) -> Result<Vec<RecordBatch>> {
    Ok(client_batches(request, max_decoded_bytes)
        .try_collect()
        .await?)
}

/// Flight SQL's (and JDBC's) name for a kind of table.
fn table_type_name(kind: TableKind) -> &'static str {
    match kind {
        TableKind::Table => "TABLE",
        TableKind::View => "VIEW",
        TableKind::Temporary => "LOCAL TEMPORARY",
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
) -> Result<FlightInfo, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| QuiverError::Internal(format!("encoding schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor)
        .with_ordered(true);
    Ok(info)
}

/// Streams a result as Flight data: schema first (also for empty results), then its parts.
/// Batches are encoded here; executors' messages (pass-through) go out as they came, in the
/// schema they were checked against.
fn encode(result: QueryStream) -> DoGetStream {
    let QueryStream { schema, parts } = result;
    let head = FlightDataEncoderBuilder::new()
        .with_schema(Arc::clone(&schema))
        .build(stream::empty());
    let body = parts.flat_map(move |part| match part {
        Ok(ResultPart::Batch(batch)) => FlightDataEncoderBuilder::new()
            .with_schema(Arc::clone(&schema))
            .build(stream::once(async { Ok(batch) }))
            // Its schema message was sent first.
            .skip(1)
            .boxed(),
        Ok(ResultPart::Encoded(data)) => stream::once(async { Ok(data) }).boxed(),
        Err(e) => {
            stream::once(async move { Err(FlightError::Tonic(Box::new(e.to_status()))) }).boxed()
        }
    });
    head.chain(body)
        .map_err(|e| QuiverError::from(e).to_status())
        .boxed()
}

fn encode_batch(batch: RecordBatch) -> Response<DoGetStream> {
    Response::new(encode(QueryStream::from_batches(
        batch.schema(),
        stream::once(async { Ok(batch) }).boxed(),
    )))
}

fn metadata_info<T: ProstMessageExt>(
    command: &T,
    schema: SchemaRef,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    Ok(Response::new(flight_info(
        &schema,
        command.as_any(),
        request.into_inner(),
    )?))
}

#[tonic::async_trait]
impl FlightSqlService for FrontDoor {
    type FlightService = FrontDoor;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // Credentials were checked by [`crate::security::auth`], which also puts the token into the
        // response headers (where JDBC and ADBC look); the payload carries it for older clients.
        let payload = request
            .extensions()
            .get::<IssuedToken>()
            .map(|t| Bytes::from(t.0.clone()))
            .unwrap_or_default();
        let response = HandshakeResponse {
            protocol_version: 0,
            payload,
        };
        Ok(Response::new(stream::once(async { Ok(response) }).boxed()))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let session = Self::session_key(&request);
        let caller = Self::caller(&request);
        self.statement_info(
            BoundSql::new(query.query),
            session,
            caller,
            request.into_inner(),
        )
        .await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        // Its ticket is a statement ticket like any other: its DoGet runs the plan made here.
        let bound = self.resolve_prepared(&cmd.prepared_statement_handle)?;
        let session = Self::session_key(&request);
        let caller = Self::caller(&request);
        self.statement_info(bound, session, caller, request.into_inner())
            .await
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
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let QueryTicket {
            statement,
            query_id,
        } = handles::decode_ticket(&ticket.statement_handle)?;
        self.run(statement, query_id, Self::user(&request)).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        // A prepared statement run directly (not through the ticket GetFlightInfo returns) is no
        // query a client can name, so there is nothing to track for CancelFlightInfo.
        self.run(
            self.resolve_prepared(&query.prepared_statement_handle)?,
            None,
            None,
        )
        .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.engine.catalogs() {
            builder.append(catalog.name);
        }
        Ok(encode_batch(builder.build().map_err(QuiverError::from)?))
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for catalog in self.engine.catalogs() {
            for schema in catalog.schemas {
                builder.append(&catalog.name, schema);
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
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let session = self
            .sessions
            .target_file_bytes(Self::session_key(&request).as_deref());
        let statement = self
            .engine
            .prepare(&command.query)
            .await?
            .with_target_file_bytes(session);
        let caller = Self::caller(&request);
        let handle = self.log.start(
            QueryId::random().as_str(),
            caller.user.clone(),
            &command.query,
        );
        Ok(self.logged_update(&statement, &caller, &handle).await?)
    }

    /// Runs a prepared update; parameter rows sent with it run it once each.
    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let bound = self.resolve_prepared(&command.prepared_statement_handle)?;
        let session = Self::session_key(&request);
        let caller = Self::caller(&request);
        let values = read_batches(request, self.max_decoded_bytes).await?;
        Ok(self.run_update(bound, session, caller, values).await?)
    }

    /// Bulk ingest: the client's batches become a Parquet file of a managed table, committed
    /// atomically by the engine ([`QueryService::ingest`]).
    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        if command.temporary {
            return Err(QuiverError::Unsupported(
                "temporary tables are not supported: ingest into a regular table".into(),
            )
            .into());
        }
        if command.transaction_id.is_some() {
            return Err(transactions_unsupported().into());
        }
        if command
            .catalog
            .as_deref()
            .is_some_and(|c| c != CATALOG_NAME)
            || command.schema.as_deref().is_some_and(|s| s != SCHEMA_NAME)
        {
            return Err(QuiverError::InvalidArgument(format!(
                "tables live in {CATALOG_NAME}.{SCHEMA_NAME}"
            ))
            .into());
        }
        if command.table.is_empty() {
            return Err(QuiverError::InvalidArgument("ingest needs a table name".into()).into());
        }
        let options = command.table_definition_options.unwrap_or_default();
        let if_missing = match TableNotExistOption::try_from(options.if_not_exist) {
            Ok(TableNotExistOption::Create) => IfMissing::Create,
            _ => IfMissing::Fail,
        };
        let if_exists = match TableExistsOption::try_from(options.if_exists) {
            Ok(TableExistsOption::Append) => IfExists::Append,
            Ok(TableExistsOption::Replace) => IfExists::Replace,
            _ => IfExists::Fail,
        };
        let mut batches = client_batches(request, self.max_decoded_bytes);
        let first = batches
            .next()
            .await
            .transpose()
            .map_err(QuiverError::from)?;
        let schema = match (&first, batches.schema()) {
            (Some(batch), _) => batch.schema(),
            (None, Some(schema)) => Arc::clone(schema),
            (None, None) => {
                return Err(QuiverError::InvalidArgument(
                    "ingest needs Arrow data (at least a schema)".into(),
                )
                .into());
            }
        };
        let all = stream::iter(first.map(Ok))
            .chain(batches.map_err(QuiverError::from))
            .boxed();
        let rows = self
            .engine
            .ingest(&command.table, if_missing, if_exists, schema, all)
            .await?;
        Ok(i64::try_from(rows).unwrap_or(i64::MAX))
    }

    /// Binds parameter values: one row, by position. The new handle carries them (JDBC uses the
    /// returned handle unconditionally).
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut handle = handles::decode_prepared(&query.prepared_statement_handle)?;
        let batches = read_batches(request, self.max_decoded_bytes).await?;
        let values = match batches.as_slice() {
            [] => None,
            [first, ..] => {
                Some(concat_batches(&first.schema(), &batches).map_err(QuiverError::from)?)
            }
        };
        // An empty batch (what some clients send for "no parameters") leaves the handle unbound.
        handle.statement.parameters = values.filter(|v| v.num_rows() > 0 || v.num_columns() > 0);
        if let Some(values) = &handle.statement.parameters {
            // Refuse bad values now, not at execution.
            self.plan(&handle.statement).await?;
            if let Some(id) = &handle.id {
                self.bindings.insert(id, values.clone());
            }
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handles::encode_prepared(&handle)?),
        })
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        if query.transaction_id.is_some() {
            return Err(transactions_unsupported().into());
        }
        let statement = match self.engine.prepare(&query.query).await {
            Ok(statement) => statement,
            Err(e) => {
                // Clients that prepare every statement (ADBC, JDBC) fail here: logged like a
                // statement refused at GetFlightInfo, so it counts under its code.
                let caller = Self::caller(&request);
                self.log
                    .start(QueryId::random().as_str(), caller.user, &query.query)
                    .end(Err(&e.to_status()));
                return Err(e.into());
            }
        };
        let handle = PreparedHandle {
            statement: BoundSql::new(query.query),
            id: Some(StatementId::random()),
        };
        // An empty dataset schema tells JDBC to run the statement as an update.
        let dataset_schema = if statement.kind.is_update() {
            ProstBytes::new()
        } else {
            schema_bytes(&statement.schema)?
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handles::encode_prepared(&handle)?,
            dataset_schema,
            parameter_schema: schema_bytes(&statement.parameter_schema())?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        // Handles carry their statement: only values bound by id are freed. Closing an unknown
        // or already closed handle succeeds (JDBC rethrows close errors).
        if let Ok(PreparedHandle { id: Some(id), .. }) =
            handles::decode_prepared(&query.prepared_statement_handle)
        {
            self.bindings.remove(&id);
        }
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

    /// Session options and CancelFlightInfo (Flight actions with raw protobuf bodies); any
    /// other action is `Unimplemented`.
    async fn do_action_fallback(
        &self,
        request: Request<arrow_flight::Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        self.fallback_action(request).await
    }

    /// The Flight SQL 12 way to cancel (deprecated in favour of CancelFlightInfo).
    async fn do_action_cancel_query(
        &self,
        query: ActionCancelQueryRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCancelQueryResult, Status> {
        let info = FlightInfo::decode(query.info.as_ref()).map_err(|_| {
            QuiverError::InvalidArgument("malformed FlightInfo in CancelQuery".into())
        })?;
        self.cancel_info(&info)?;
        Ok(ActionCancelQueryResult {
            result: CANCEL_RESULT_CANCELLED,
        })
    }

    async fn get_flight_info_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(substrait_unsupported().into())
    }

    async fn do_put_substrait_plan(
        &self,
        _query: CommandStatementSubstraitPlan,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(substrait_unsupported().into())
    }

    async fn do_action_create_prepared_substrait_plan(
        &self,
        _query: ActionCreatePreparedSubstraitPlanRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        Err(substrait_unsupported().into())
    }

    async fn do_action_begin_transaction(
        &self,
        _query: ActionBeginTransactionRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionBeginTransactionResult, Status> {
        Err(transactions_unsupported().into())
    }

    async fn do_action_end_transaction(
        &self,
        _query: ActionEndTransactionRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        Err(transactions_unsupported().into())
    }

    async fn do_action_begin_savepoint(
        &self,
        _query: ActionBeginSavepointRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<ActionBeginSavepointResult, Status> {
        Err(transactions_unsupported().into())
    }

    async fn do_action_end_savepoint(
        &self,
        _query: ActionEndSavepointRequest,
        _request: Request<arrow_flight::Action>,
    ) -> Result<(), Status> {
        Err(transactions_unsupported().into())
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
