//! Quiver's one error type and its one mapping to gRPC status codes.
//!
//! Every fallible path of the server ends in [`QuiverError`]; [`QuiverError::to_status`] is the
//! only place that decides which gRPC code a client sees. The mapping of DataFusion errors is an
//! exhaustive `match` with no catch-all arm, so a new DataFusion variant breaks the build instead
//! of silently becoming `Internal`. Bad input (SQL, unknown tables, malformed handles) maps to
//! `InvalidArgument`/`NotFound`, never `Internal`.

use arrow::error::ArrowError;
use arrow_flight::error::FlightError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use tonic::{Code, Status};

use crate::planner::settings as planner;

pub type Result<T, E = QuiverError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum QuiverError {
    /// The client sent something we cannot act on (malformed handle, bad option value, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The client named something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The client asked to create something that exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Missing or bad credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The server is not set up for the request (e.g. writes without a warehouse).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The query was cancelled by a client request.
    #[error("{0}")]
    Cancelled(String),
    /// The request is valid but not allowed here (e.g. a table location outside the policy).
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit was reached (concurrent queries, memory).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The statement is valid SQL but Quiver does not run it (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The cluster cannot serve the request now (no live executor, executor unreachable).
    #[error("{0}")]
    Unavailable(String),
    /// The query ran past its deadline.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Planning or executing a query failed.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Flight(#[from] FlightError),
    /// Reading or writing local state (catalog file, data directory).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Catalog file content that does not parse or validate.
    #[error("catalog file {path}: {message}")]
    Catalog { path: String, message: String },
    /// A bug or broken invariant in Quiver itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl QuiverError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// An error reading a client's request stream. tonic's decoder answers `OutOfRange` for a
    /// message over the server's `max_decoding_message_size` (`max_message_bytes`): the client
    /// sent more than the server accepts, which is `ResourceExhausted`, with what to do about it.
    /// Any other status is the client's own and keeps its code.
    pub(crate) fn from_client_status(status: Status, max_message_bytes: usize) -> Self {
        match status.code() {
            Code::OutOfRange => Self::ResourceExhausted(format!(
                "a message is larger than this server accepts (--max-message-bytes, {max_message_bytes} bytes): send smaller batches ({})",
                status.message()
            )),
            _ => Self::Flight(FlightError::Tonic(Box::new(status))),
        }
    }

    /// An error that was already turned into the status a client sees (kept for a second
    /// reader); it keeps that code and message.
    pub(crate) fn from_status(status: Status) -> Self {
        Self::Flight(FlightError::Tonic(Box::new(status)))
    }

    /// The gRPC status a client sees for this error.
    pub fn to_status(&self) -> Status {
        let code = match self {
            Self::InvalidArgument(_) | Self::Catalog { .. } => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Cancelled(_) => Code::Cancelled,
            Self::ResourceExhausted(_) => Code::ResourceExhausted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Unsupported(_) => Code::Unimplemented,
            Self::Unavailable(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::DataFusion(e) => return datafusion_status(e),
            Self::Arrow(e) => arrow_code(e),
            Self::Flight(e) => match e {
                FlightError::Tonic(status) => return Status::new(status.code(), status.message()),
                FlightError::Arrow(e) => arrow_code(e),
                FlightError::DecodeError(_) | FlightError::ProtocolError(_) => {
                    Code::InvalidArgument
                }
                FlightError::NotYetImplemented(_) => Code::Unimplemented,
                FlightError::ExternalError(_) => Code::Internal,
            },
            Self::Io { source, .. } => io_code(source),
            Self::Internal(_) => Code::Internal,
        };
        Status::new(code, self.to_string())
    }
}

impl From<QuiverError> for Status {
    fn from(e: QuiverError) -> Self {
        e.to_status()
    }
}

/// Maps a DataFusion error to a status, keeping DataFusion's message.
/// Carries a Quiver error (with its status code) through DataFusion's error type, for plan
/// nodes, streams and planner hooks that must answer in it; [`datafusion_status`] reads the
/// code back.
pub(crate) fn to_datafusion(e: QuiverError) -> DataFusionError {
    match e {
        QuiverError::DataFusion(e) => e,
        e => DataFusionError::External(Box::new(e.to_status())),
    }
}

pub(crate) fn datafusion_status(e: &DataFusionError) -> Status {
    // A status that crossed a process boundary (an executor's error) keeps its code.
    if let Some(status) = find_status(e) {
        return Status::new(status.code(), status.message().to_string());
    }
    let message = user_message(e);
    match datafusion_code(e) {
        // An executor's error reaches the coordinator re-encoded, a status inside it as text.
        Code::Internal => crate::cluster::distributed::flattened_status(&e.to_string())
            .map(|(code, inner)| {
                let message = if inner.is_empty() {
                    message.clone()
                } else {
                    inner
                };
                Status::new(code, message)
            })
            .unwrap_or_else(|| Status::new(Code::Internal, message)),
        code => Status::new(code, message),
    }
}

/// The message a client sees for a DataFusion error: what went wrong in the user's terms,
/// without DataFusion's kind prefixes (`Error during planning: `, `External error: `), its
/// `Debug` rendering of parser errors, backtraces or bug-report advice, and with the default
/// catalog and schema left out of a table name the user did not qualify.
fn user_message(e: &DataFusionError) -> String {
    let message = match e {
        DataFusionError::SQL(parser, _) => syntax_message(parser),
        DataFusionError::Plan(msg) => unqualified(msg),
        DataFusionError::Context(context, inner) => {
            format!("{context}: {}", user_message(inner))
        }
        DataFusionError::Diagnostic(_, inner) => user_message(inner),
        DataFusionError::Shared(inner) => user_message(inner),
        DataFusionError::Collection(errors) => errors
            .first()
            .map(user_message)
            .unwrap_or_else(|| e.to_string()),
        DataFusionError::External(inner) => external_message(inner.as_ref()),
        DataFusionError::ArrowError(inner, _) => match inner.as_ref() {
            ArrowError::ExternalError(inner) => external_message(inner.as_ref()),
            other => other.to_string(),
        },
        DataFusionError::SchemaError(inner, _) => inner.to_string(),
        DataFusionError::Execution(msg)
        | DataFusionError::NotImplemented(msg)
        | DataFusionError::Internal(msg)
        | DataFusionError::ResourcesExhausted(msg)
        | DataFusionError::Configuration(msg)
        | DataFusionError::Substrait(msg)
        | DataFusionError::Ffi(msg) => msg.clone(),
        DataFusionError::ParquetError(inner) => inner.to_string(),
        DataFusionError::ObjectStore(inner) => inner.to_string(),
        DataFusionError::IoError(inner) => inner.to_string(),
        DataFusionError::ExecutionJoin(inner) => inner.to_string(),
    };
    match message.split_once(DataFusionError::BACK_TRACE_SEP) {
        Some((message, _backtrace)) => message.to_string(),
        None => message,
    }
}

/// A parser error as `syntax error: <what the parser expected>`, not its `Debug` text.
fn syntax_message(e: &ParserError) -> String {
    match e {
        ParserError::TokenizerError(msg) | ParserError::ParserError(msg) => {
            format!("syntax error: {msg}")
        }
        ParserError::RecursionLimitExceeded => {
            "syntax error: the statement is nested too deeply".to_string()
        }
    }
}

/// The message of an error DataFusion carries for someone else: a status keeps its message,
/// a nested DataFusion error is cleaned in turn.
fn external_message(e: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    if let Some(status) = e.downcast_ref::<Status>() {
        return status.message().to_string();
    }
    if let Some(inner) = e.downcast_ref::<DataFusionError>() {
        return user_message(inner);
    }
    e.to_string()
}

/// `table 'quiver.public.t' not found` as `table 't' not found`: the user wrote `t`, and the
/// default catalog and schema are implied (a name in another schema keeps its qualifier).
fn unqualified(message: &str) -> String {
    let default = format!("'{}.{}.", planner::CATALOG_NAME, planner::SCHEMA_NAME);
    message.replace(&default, "'")
}

fn find_status(e: &DataFusionError) -> Option<&Status> {
    match e {
        DataFusionError::External(inner) => find_status_in(inner.as_ref()),
        DataFusionError::ArrowError(inner, _) => find_status_in(inner.as_ref()),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            find_status(inner)
        }
        DataFusionError::Shared(inner) => find_status(inner),
        _ => None,
    }
}

/// A status inside an error from the network path: datafusion-distributed and arrow-flight wrap
/// a stream's status in `FlightError`, `ArrowError` or another `DataFusionError`.
fn find_status_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Status> {
    if let Some(status) = e.downcast_ref::<Status>() {
        return Some(status);
    }
    if let Some(FlightError::Tonic(status)) = e.downcast_ref::<FlightError>() {
        return Some(status);
    }
    if let Some(inner) = e.downcast_ref::<DataFusionError>() {
        return find_status(inner);
    }
    if let Some(ArrowError::ExternalError(inner)) = e.downcast_ref::<ArrowError>() {
        return find_status_in(inner.as_ref());
    }
    None
}

fn datafusion_code(e: &DataFusionError) -> Code {
    match e {
        DataFusionError::SQL(..) | DataFusionError::SchemaError(..) => Code::InvalidArgument,
        DataFusionError::Plan(msg) => {
            // DataFusion reports unknown tables as a planning error; clients want NotFound.
            if msg.contains("not found") {
                Code::NotFound
            } else {
                Code::InvalidArgument
            }
        }
        DataFusionError::Configuration(_) | DataFusionError::Substrait(_) => Code::InvalidArgument,
        // `exec_err!` is what functions raise for bad argument values at run time.
        DataFusionError::Execution(_) => Code::InvalidArgument,
        DataFusionError::NotImplemented(_) => Code::Unimplemented,
        DataFusionError::ResourcesExhausted(_) => Code::ResourceExhausted,
        DataFusionError::ArrowError(e, _) => arrow_code(e),
        DataFusionError::ObjectStore(e) => match e.as_ref() {
            object_store::Error::NotFound { .. } => Code::NotFound,
            object_store::Error::PermissionDenied { .. } => Code::PermissionDenied,
            object_store::Error::Unauthenticated { .. } => Code::Unauthenticated,
            _ => Code::Unavailable,
        },
        DataFusionError::IoError(e) => io_code(e),
        DataFusionError::ParquetError(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::Internal(_)
        | DataFusionError::Ffi(_)
        | DataFusionError::External(_) => Code::Internal,
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            datafusion_code(inner)
        }
        DataFusionError::Shared(inner) => datafusion_code(inner),
        DataFusionError::Collection(errors) => errors
            .first()
            .map(datafusion_code)
            .unwrap_or(Code::Internal),
    }
}

/// A full disk or quota is a limit the operator can lift; other local I/O failures are ours.
fn io_code(e: &std::io::Error) -> Code {
    match e.kind() {
        std::io::ErrorKind::NotFound => Code::NotFound,
        std::io::ErrorKind::PermissionDenied => Code::PermissionDenied,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            Code::ResourceExhausted
        }
        _ => Code::Internal,
    }
}

fn arrow_code(e: &ArrowError) -> Code {
    match e {
        ArrowError::CastError(_)
        | ArrowError::ParseError(_)
        | ArrowError::InvalidArgumentError(_)
        | ArrowError::DivideByZero
        | ArrowError::ArithmeticOverflow(_)
        | ArrowError::ComputeError(_)
        | ArrowError::SchemaError(_) => Code::InvalidArgument,
        ArrowError::NotYetImplemented(_) => Code::Unimplemented,
        ArrowError::MemoryError(_) => Code::ResourceExhausted,
        ArrowError::ExternalError(_)
        | ArrowError::IoError(..)
        | ArrowError::IpcError(_)
        | ArrowError::CsvError(_)
        | ArrowError::JsonError(_)
        | ArrowError::AvroError(_)
        | ArrowError::ParquetError(_)
        | ArrowError::CDataInterface(_)
        | ArrowError::DictionaryKeyOverflowError
        | ArrowError::RunEndIndexOverflowError
        | ArrowError::OffsetOverflowError(_) => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_rendered_into_messages_keep_their_code() {
        let e = DataFusionError::Internal(format!(
            "External error: {}",
            Status::unavailable("http2 error")
        ));
        let status = datafusion_status(&e);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "http2 error");
        let plain = DataFusionError::Internal("code: 'nonsense'".into());
        assert_eq!(datafusion_status(&plain).code(), Code::Internal);
    }

    #[test]
    fn bad_sql_is_invalid_argument() {
        let e = QuiverError::from(DataFusionError::Plan("Invalid function 'foo'".into()));
        assert_eq!(e.to_status().code(), Code::InvalidArgument);
    }

    #[test]
    fn unknown_table_is_not_found() {
        let e = DataFusionError::Context(
            "while planning".into(),
            Box::new(DataFusionError::Plan(
                "table 'quiver.public.nope' not found".into(),
            )),
        );
        let status = datafusion_status(&e);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "while planning: table 'nope' not found");
    }

    #[test]
    fn messages_carry_no_datafusion_prefixes_or_debug_text() {
        let e = QuiverError::from(DataFusionError::Plan(
            "table 'quiver.public.nope' not found".into(),
        ));
        let status = e.to_status();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "table 'nope' not found");
        // A name in another schema keeps its qualifier.
        let e = DataFusionError::Plan("table 'quiver.other.t' not found".into());
        assert_eq!(
            datafusion_status(&e).message(),
            "table 'quiver.other.t' not found"
        );

        let e = DataFusionError::from(ParserError::ParserError(
            "Expected: an SQL statement, found: SELEC at Line: 1, Column: 1".into(),
        ));
        let status = datafusion_status(&e);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "syntax error: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1"
        );

        let e = DataFusionError::ArrowError(
            Box::new(ArrowError::ExternalError(Box::new(
                DataFusionError::Execution("boom".into()),
            ))),
            None,
        );
        assert_eq!(datafusion_status(&e).message(), "boom");
        let e = DataFusionError::Internal("broken invariant".into());
        assert_eq!(datafusion_status(&e).message(), "broken invariant");
        let e = DataFusionError::ResourcesExhausted("over the limit".into())
            .context("the query's memory limit");
        let status = datafusion_status(&e);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "the query's memory limit: over the limit");
    }

    #[test]
    fn an_oversized_client_message_is_resource_exhausted() {
        let too_big = Status::out_of_range("decoded message length too large");
        let status = QuiverError::from_client_status(too_big, 1024).to_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("1024 bytes"), "{status:?}");
        assert!(
            status
                .message()
                .contains("decoded message length too large")
        );
        // The client's own stream errors keep their code and message.
        let gone = Status::cancelled("the client hung up");
        let status = QuiverError::from_client_status(gone, 1024).to_status();
        assert_eq!(status.code(), Code::Cancelled);
        assert_eq!(status.message(), "the client hung up");
    }

    #[test]
    fn executor_status_keeps_its_code() {
        let e = DataFusionError::External(Box::new(Status::unavailable("executor gone")));
        assert_eq!(datafusion_status(&e).code(), Code::Unavailable);
    }
}
