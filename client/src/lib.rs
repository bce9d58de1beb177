//! Rust client for Quiver, speaking Arrow Flight SQL, and the `quiver sql` command-line client.
//!
//! [`QuiverClient`] runs statements through the plain Flight SQL path
//! (`GetFlightInfo(CommandStatementQuery)` then `DoGet` of each endpoint) on the raw Flight
//! client, so a server error reaches the caller as the `tonic::Status` the server sent, code
//! included. [`ConnectOptions`] adds TLS (`grpc+tls://` with a CA file) and authentication (a
//! Basic handshake whose bearer token is sent on every later call, or a token given directly).
//!
//! For a client that watches or stops a running statement, [`QuiverClient::start`] returns the
//! statement's `FlightInfo` (its query id in `app_metadata`, [`query_id`]),
//! [`QuiverClient::stream`] reads its rows as they arrive, [`QuiverClient::query_status`] asks
//! the coordinator how far it got (the `QueryStatus` action) and [`QuiverClient::cancel`] stops
//! it (`CancelFlightInfo`). [`QuiverClient::tables`] lists the catalog (Flight SQL `GetTables`).

pub mod cli;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{
    ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementQuery, CommandStatementUpdate,
    DoPutUpdateResult, ProstMessageExt,
};
use arrow_flight::{
    Action, CancelFlightInfoRequest, CancelFlightInfoResult, CancelStatus, FlightData,
    FlightDescriptor, FlightInfo,
};
use base64::Engine as _;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use prost::Message as _;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL '{0}': {1}")]
    Url(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// The server answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Server(tonic::Status),
    #[error("bad response from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC status the server sent, if this is a server error.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Server(s) => Some(s),
            _ => None,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        Self::Server(s)
    }
}

impl From<FlightError> for ClientError {
    fn from(e: FlightError) -> Self {
        match e {
            FlightError::Tonic(status) => Self::Server(*status),
            other => Self::Protocol(other.to_string()),
        }
    }
}

impl From<ArrowError> for ClientError {
    fn from(e: ArrowError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// A complete result.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// A stream of a statement's record batches, endpoint after endpoint.
pub type BatchStream = BoxStream<'static, Result<RecordBatch, ClientError>>;

/// The query id the coordinator put in a statement's `FlightInfo.app_metadata`
/// (`{"query_id":"..."}`), if it did.
pub fn query_id(info: &FlightInfo) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct AppMetadata {
        query_id: String,
    }
    serde_json::from_slice::<AppMetadata>(&info.app_metadata)
        .ok()
        .map(|m| m.query_id)
}

/// What the coordinator knows of a statement (the `QueryStatus` action's answer). Fields the
/// server leaves out read as their defaults, so an older or newer server still parses.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct QueryStatus {
    pub id: String,
    pub user: Option<String>,
    /// `queued`, `running`, `finished`, `failed` or `cancelled`.
    pub state: String,
    pub duration_ms: u64,
    /// Rows sent to the client so far.
    pub rows: u64,
    pub bytes: u64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub executors: Vec<String>,
    pub stages: Vec<StageStatus>,
}

/// One stage of a running statement.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct StageStatus {
    pub stage: u64,
    pub tasks_total: u64,
    pub tasks_done: u64,
    pub tasks_running: u64,
    /// Rows the stage's tasks produced so far.
    pub rows: u64,
}

impl QueryStatus {
    /// Stages whose every task is done, and all stages.
    pub fn stages_done(&self) -> (u64, u64) {
        let done = self
            .stages
            .iter()
            .filter(|s| s.tasks_total > 0 && s.tasks_done >= s.tasks_total)
            .count();
        (done as u64, self.stages.len() as u64)
    }

    /// Tasks done, and all tasks, over every stage.
    pub fn tasks_done(&self) -> (u64, u64) {
        self.stages.iter().fold((0, 0), |(done, total), s| {
            (done + s.tasks_done, total + s.tasks_total)
        })
    }

    /// Tasks running now, over every stage.
    pub fn tasks_running(&self) -> u64 {
        self.stages.iter().map(|s| s.tasks_running).sum()
    }
}

/// The Flight action that reports a statement's progress (body: the query id).
pub const QUERY_STATUS_ACTION: &str = "QueryStatus";
const CANCEL_FLIGHT_INFO_ACTION: &str = "CancelFlightInfo";

/// A connection to a Quiver coordinator.
#[derive(Debug, Clone)]
pub struct QuiverClient {
    flight: FlightServiceClient<Channel>,
    /// `Bearer <token>`, sent on every call once logged in.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// How to connect: credentials and the certificate to trust for `grpc+tls://`.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    pub user: Option<String>,
    pub password: Option<String>,
    /// A bearer token to send instead of logging in.
    pub token: Option<String>,
    /// PEM file of the CA (or self-signed certificate) to trust.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("user", &self.user)
            .field("tls_ca", &self.tls_ca)
            .finish_non_exhaustive()
    }
}

/// `grpc://host:port` (or `host:port`) to the `http://` endpoint tonic dials;
/// `grpc+tls://host:port` to `https://`.
pub fn endpoint_uri(url: &str) -> Result<String, ClientError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("grpc+tls://") {
        ("https", rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest)
    } else {
        let rest = url
            .strip_prefix("grpc://")
            .or_else(|| url.strip_prefix("grpc+tcp://"))
            .or_else(|| url.strip_prefix("http://"))
            .unwrap_or(url);
        ("http", rest)
    };
    if rest.contains("://") {
        return Err(ClientError::Url(
            url.to_string(),
            "use grpc://HOST:PORT or grpc+tls://HOST:PORT".into(),
        ));
    }
    if rest.is_empty() {
        return Err(ClientError::Url(url.to_string(), "missing host".into()));
    }
    Ok(format!("{scheme}://{}", rest.trim_end_matches('/')))
}

impl QuiverClient {
    /// Connects to `url` (`grpc://HOST:PORT`) without credentials.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects to `url` (`grpc://` or `grpc+tls://`), logging in if credentials are given.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Self, ClientError> {
        let uri = endpoint_uri(url)?;
        let mut endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|e| ClientError::Url(url.to_string(), e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(10));
        if uri.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &options.tls_ca {
                let pem = std::fs::read(ca).map_err(|e| {
                    ClientError::Connect(url.to_string(), format!("reading {}: {e}", ca.display()))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ClientError::Connect(url.to_string(), e.to_string()))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Connect(url.to_string(), e.to_string()))?;
        let flight = FlightServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        let mut client = Self {
            flight,
            authorization: None,
        };
        if let Some(token) = &options.token {
            client.authorization = Some(bearer(token)?);
        } else if let Some(user) = &options.user {
            let password = options.password.as_deref().unwrap_or_default();
            client.login(user, password).await?;
        }
        Ok(client)
    }

    /// A Basic-credentials handshake; later calls carry the bearer token it returns.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ClientError> {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut request = tonic::Request::new(futures::stream::empty());
        request.metadata_mut().insert(
            "authorization",
            format!("Basic {basic}")
                .parse()
                .map_err(|_| ClientError::Protocol("credentials are not ASCII".into()))?,
        );
        let response = self.flight.handshake(request).await?;
        let token = response
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ClientError::Protocol("the handshake returned no bearer token".into()))?
            .to_string();
        self.authorization = Some(bearer(&token)?);
        Ok(())
    }

    /// The bearer token of this connection, if logged in.
    pub fn token(&self) -> Option<&str> {
        self.authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Runs `sql` and fetches the whole result.
    pub async fn query(&mut self, sql: &str) -> Result<QueryResult, ClientError> {
        let info = self.start(sql).await?;
        self.fetch(info).await
    }

    /// Plans `sql` (`GetFlightInfo`); its rows are read with [`QuiverClient::stream`], and the
    /// `FlightInfo` names it for [`QuiverClient::cancel`] and [`query_id`].
    pub async fn start(&mut self, sql: &str) -> Result<FlightInfo, ClientError> {
        let command = CommandStatementQuery {
            query: sql.to_string(),
            transaction_id: None,
        };
        self.flight_info(command.as_any().encode_to_vec()).await
    }

    /// The schema of a started statement and a stream of its rows as they arrive (`DoGet` of
    /// each endpoint in turn).
    pub fn stream(&self, info: FlightInfo) -> Result<(SchemaRef, BatchStream), ClientError> {
        let schema = std::sync::Arc::new(info.clone().try_decode_schema()?);
        let client = self.clone();
        let stream = futures::stream::iter(info.endpoint)
            .then(move |endpoint| {
                let mut client = client.clone();
                async move {
                    let ticket = endpoint
                        .ticket
                        .ok_or_else(|| ClientError::Protocol("endpoint without a ticket".into()))?;
                    let request = client.request(ticket);
                    let stream = client.flight.do_get(request).await?.into_inner();
                    let decoded = FlightRecordBatchStream::new_from_flight_data(
                        stream.map_err(FlightError::from),
                    )
                    .map_err(ClientError::from);
                    Ok::<_, ClientError>(decoded)
                }
            })
            .try_flatten()
            .boxed();
        Ok((schema, stream))
    }

    /// Stops a started statement (`CancelFlightInfo`); its stream then ends with `Cancelled`.
    pub async fn cancel(&mut self, info: &FlightInfo) -> Result<CancelStatus, ClientError> {
        let body = CancelFlightInfoRequest::new(info.clone()).encode_to_vec();
        let action = Action::new(CANCEL_FLIGHT_INFO_ACTION, body);
        let request = self.request(action);
        let mut results = self.flight.do_action(request).await?.into_inner();
        let result = results
            .message()
            .await?
            .ok_or_else(|| ClientError::Protocol("CancelFlightInfo returned nothing".into()))?;
        let result = CancelFlightInfoResult::decode(result.body.as_ref())
            .map_err(|e| ClientError::Protocol(format!("CancelFlightInfoResult: {e}")))?;
        Ok(result.status())
    }

    /// The coordinator's view of query `id` (the `QueryStatus` action). A server without the
    /// action answers `Unimplemented`.
    pub async fn query_status(&mut self, id: &str) -> Result<QueryStatus, ClientError> {
        let action = Action::new(QUERY_STATUS_ACTION, id.as_bytes().to_vec());
        let request = self.request(action);
        let mut results = self.flight.do_action(request).await?.into_inner();
        let result = results
            .message()
            .await?
            .ok_or_else(|| ClientError::Protocol("QueryStatus returned nothing".into()))?;
        serde_json::from_slice(&result.body)
            .map_err(|e| ClientError::Protocol(format!("QueryStatus: {e}")))
    }

    /// The catalog's tables (Flight SQL `GetTables`), with their Arrow schemas when
    /// `include_schema` (column `table_schema`, read with [`table_schema`]).
    pub async fn tables(&mut self, include_schema: bool) -> Result<QueryResult, ClientError> {
        let command = CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: Vec::new(),
            include_schema,
        };
        let info = self.flight_info(command.as_any().encode_to_vec()).await?;
        self.fetch(info).await
    }

    /// Runs `sql` through the prepared-statement path, as JDBC and ADBC's DB-API do.
    pub async fn prepare_and_query(&mut self, sql: &str) -> Result<QueryResult, ClientError> {
        let request = ActionCreatePreparedStatementRequest {
            query: sql.to_string(),
            transaction_id: None,
        };
        let action = Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
        let request = self.request(action);
        let mut results = self.flight.do_action(request).await?.into_inner();
        let result = results.message().await?.ok_or_else(|| {
            ClientError::Protocol("CreatePreparedStatement returned nothing".into())
        })?;
        let any = arrow_flight::sql::Any::decode(&*result.body)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let prepared: ActionCreatePreparedStatementResult = any.unpack()?.ok_or_else(|| {
            ClientError::Protocol("unexpected CreatePreparedStatement result".into())
        })?;
        let command = CommandPreparedStatementQuery {
            prepared_statement_handle: prepared.prepared_statement_handle,
        };
        let info = self.flight_info(command.as_any().encode_to_vec()).await?;
        self.fetch(info).await
    }

    /// Runs a statement that returns no rows (DDL, INSERT, CREATE TABLE AS) through
    /// `DoPut(CommandStatementUpdate)`; returns the affected row count.
    pub async fn update(&mut self, sql: &str) -> Result<i64, ClientError> {
        let command = CommandStatementUpdate {
            query: sql.to_string(),
            transaction_id: None,
        };
        let descriptor = FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
        let data = FlightData {
            flight_descriptor: Some(descriptor),
            ..Default::default()
        };
        let request = self.request(futures::stream::iter(vec![data]));
        let mut results = self.flight.do_put(request).await?.into_inner();
        let result = results
            .message()
            .await?
            .ok_or_else(|| ClientError::Protocol("DoPut returned no result".into()))?;
        let update = DoPutUpdateResult::decode(result.app_metadata.as_ref())
            .map_err(|e| ClientError::Protocol(format!("DoPutUpdateResult: {e}")))?;
        Ok(update.record_count)
    }

    async fn flight_info(&mut self, cmd: Vec<u8>) -> Result<FlightInfo, ClientError> {
        let descriptor = FlightDescriptor::new_cmd(cmd);
        let request = self.request(descriptor);
        Ok(self.flight.get_flight_info(request).await?.into_inner())
    }

    async fn fetch(&mut self, info: FlightInfo) -> Result<QueryResult, ClientError> {
        let (schema, stream) = self.stream(info)?;
        let batches = stream.try_collect().await?;
        Ok(QueryResult { schema, batches })
    }
}

/// A table's Arrow schema as `GetTables` sends it (an IPC-encapsulated schema message).
pub fn table_schema(ipc: &[u8]) -> Result<arrow::datatypes::Schema, ClientError> {
    Ok(arrow::datatypes::Schema::try_from(
        arrow_flight::IpcMessage(bytes::Bytes::copy_from_slice(ipc)),
    )?)
}

fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, ClientError> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::Protocol("the token is not ASCII".into()))
}

/// gRPC's name for a status code (`NOT_FOUND`), as servers and their documentation spell it.
pub fn status_code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ids_come_from_app_metadata() {
        let info =
            FlightInfo::new().with_app_metadata(r#"{"query_id":"q-42"}"#.as_bytes().to_vec());
        assert_eq!(query_id(&info).as_deref(), Some("q-42"));
        assert_eq!(query_id(&FlightInfo::new()), None);
        let info = FlightInfo::new().with_app_metadata(b"not json".to_vec());
        assert_eq!(query_id(&info), None);
    }

    #[test]
    fn query_status_parses_and_sums_progress() {
        let body = r#"{"id":"q","user":null,"sql":"select 1","state":"running",
            "started_unix_ms":1,"duration_ms":1200,"rows":10,"bytes":80,"error_code":null,
            "error_message":null,"executors":["http://a"],"explain_analyze":null,
            "stages":[{"stage":1,"tasks_total":4,"tasks_done":4,"tasks_running":0,"rows":7},
                      {"stage":2,"tasks_total":2,"tasks_done":1,"tasks_running":1,"rows":3}]}"#;
        let status: QueryStatus = serde_json::from_str(body).unwrap();
        assert_eq!(status.state, "running");
        assert_eq!(status.stages_done(), (1, 2));
        assert_eq!(status.tasks_done(), (5, 6));
        assert_eq!(status.tasks_running(), 1);
        // Unknown and missing fields are fine.
        let status: QueryStatus = serde_json::from_str(r#"{"state":"queued","x":1}"#).unwrap();
        assert_eq!(status.tasks_done(), (0, 0));
    }

    #[test]
    fn urls() {
        assert_eq!(endpoint_uri("grpc://h:1").unwrap(), "http://h:1");
        assert_eq!(endpoint_uri("h:1").unwrap(), "http://h:1");
        assert_eq!(endpoint_uri("grpc+tls://h:1").unwrap(), "https://h:1");
        assert!(endpoint_uri("ftp://h:1").is_err());
        assert!(endpoint_uri("grpc://").is_err());
    }
}
