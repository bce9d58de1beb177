//! Flight session options: `SetSessionOptions`, `GetSessionOptions`, `CloseSession`.
//!
//! JDBC (`?catalog=`, `setCatalog`) and ADBC (`current_catalog`, `current_db_schema`) select the
//! catalog and schema through these actions. Sessions are keyed on the bearer token's session id
//! (one per handshake) or, without authentication, on the `arrow_flight_session_id` cookie,
//! which `SetSessionOptions` hands out when the client has none. They live in the coordinator's
//! memory, expire after an hour without use, and are bounded in number.
//!
//! Options: `catalog` and `schema` (strings naming an existing catalog / schema). Quiver has one
//! catalog and one schema, so selecting them succeeds and anything else is `INVALID_VALUE`.
//! `quiver.target_file_bytes` (a size such as `"64MiB"` or a number of bytes, at least 64 KiB):
//! the roll size of the files this session's writes make, instead of the server's
//! `--target-file-bytes`. Unknown names are `INVALID_NAME`; a valueless option resets to the
//! default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quiver_proto::frontdoor::session_option_value::OptionValue;
use quiver_proto::frontdoor::set_session_options_result::{Error, ErrorValue};
use quiver_proto::frontdoor::{
    CloseSessionResult, GetSessionOptionsResult, SessionOptionValue, SetSessionOptionsRequest,
    SetSessionOptionsResult, close_session_result,
};

use crate::engine::CatalogListing;
use crate::planner::settings::{CATALOG_NAME, SCHEMA_NAME};
use crate::resources::parse_bytes;
use crate::sink::MIN_TARGET_FILE_BYTES;

const IDLE_EXPIRY: Duration = Duration::from_secs(3600);
const MAX_SESSIONS: usize = 10_000;

/// The session option that sets the roll size of the session's writes.
pub(super) const TARGET_FILE_BYTES: &str = "quiver.target_file_bytes";

#[derive(Debug, Clone)]
struct Session {
    catalog: String,
    schema: String,
    /// `None`: the server's `--target-file-bytes`.
    target_file_bytes: Option<u64>,
    last_used: Instant,
}

impl Session {
    fn new() -> Self {
        Self {
            catalog: CATALOG_NAME.to_string(),
            schema: SCHEMA_NAME.to_string(),
            target_file_bytes: None,
            last_used: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
}

fn string_value(value: &str) -> SessionOptionValue {
    SessionOptionValue {
        option_value: Some(OptionValue::StringValue(value.to_string())),
    }
}

impl Sessions {
    /// Applies `request` to the session `key` (creating it); returns the per-option errors.
    /// `catalogs` are those that exist, which the selected catalog and schema must name.
    pub(super) fn set(
        &self,
        key: &str,
        request: SetSessionOptionsRequest,
        catalogs: &[CatalogListing],
    ) -> SetSessionOptionsResult {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if !sessions.contains_key(key) && sessions.len() >= MAX_SESSIONS {
            let now = Instant::now();
            sessions.retain(|_, s| now.duration_since(s.last_used) < IDLE_EXPIRY);
            if sessions.len() >= MAX_SESSIONS {
                // Evict the least recently used session rather than refuse a new client.
                if let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last_used)
                    .map(|(k, _)| k.clone())
                {
                    sessions.remove(&oldest);
                }
            }
        }
        let session = sessions.entry(key.to_string()).or_insert_with(Session::new);
        session.last_used = Instant::now();
        let mut errors = HashMap::new();
        for (name, value) in request.session_options {
            let error = match (name.as_str(), value.option_value) {
                ("catalog", None) => {
                    session.catalog = CATALOG_NAME.to_string();
                    None
                }
                ("schema", None) => {
                    session.schema = SCHEMA_NAME.to_string();
                    None
                }
                ("catalog", Some(OptionValue::StringValue(catalog))) => {
                    if catalogs.iter().any(|c| c.name == catalog) {
                        session.catalog = catalog;
                        None
                    } else {
                        Some(ErrorValue::InvalidValue)
                    }
                }
                ("schema", Some(OptionValue::StringValue(schema))) => {
                    let exists = catalogs
                        .iter()
                        .any(|c| c.name == session.catalog && c.has_schema(&schema));
                    if exists {
                        session.schema = schema;
                        None
                    } else {
                        Some(ErrorValue::InvalidValue)
                    }
                }
                ("catalog" | "schema", Some(_)) => Some(ErrorValue::InvalidValue),
                (TARGET_FILE_BYTES, None) => {
                    session.target_file_bytes = None;
                    None
                }
                (TARGET_FILE_BYTES, Some(value)) => {
                    let bytes = match value {
                        OptionValue::StringValue(text) => parse_bytes(&text).ok(),
                        OptionValue::Int64Value(n) => u64::try_from(n).ok(),
                        _ => None,
                    };
                    match bytes.filter(|b| *b >= MIN_TARGET_FILE_BYTES) {
                        Some(bytes) => {
                            session.target_file_bytes = Some(bytes);
                            None
                        }
                        None => Some(ErrorValue::InvalidValue),
                    }
                }
                _ => Some(ErrorValue::InvalidName),
            };
            if let Some(error) = error {
                errors.insert(
                    name,
                    Error {
                        value: error as i32,
                    },
                );
            }
        }
        SetSessionOptionsResult { errors }
    }

    /// The session's options (the defaults for an unknown or missing session).
    pub(super) fn get(&self, key: Option<&str>) -> GetSessionOptionsResult {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let session = match key.and_then(|k| sessions.get_mut(k)) {
            Some(session) => {
                session.last_used = Instant::now();
                session.clone()
            }
            None => Session::new(),
        };
        let mut session_options = HashMap::from([
            ("catalog".to_string(), string_value(&session.catalog)),
            ("schema".to_string(), string_value(&session.schema)),
        ]);
        if let Some(bytes) = session.target_file_bytes {
            session_options.insert(
                TARGET_FILE_BYTES.to_string(),
                SessionOptionValue {
                    option_value: Some(OptionValue::Int64Value(
                        i64::try_from(bytes).unwrap_or(i64::MAX),
                    )),
                },
            );
        }
        GetSessionOptionsResult { session_options }
    }

    /// The roll size the session `key` asks of its writes, if it set one.
    pub(super) fn target_file_bytes(&self, key: Option<&str>) -> Option<u64> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        key.and_then(|k| sessions.get(k))
            .and_then(|s| s.target_file_bytes)
    }

    /// Forgets the session; closing an unknown session succeeds too (ADBC always closes).
    pub(super) fn close(&self, key: Option<&str>) -> CloseSessionResult {
        if let Some(key) = key {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
        }
        CloseSessionResult {
            status: close_session_result::Status::Closed as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&str, Option<&str>)]) -> SetSessionOptionsRequest {
        SetSessionOptionsRequest {
            session_options: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        SessionOptionValue {
                            option_value: v.map(|v| OptionValue::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn set_get_close() {
        let catalogs = [CatalogListing {
            name: CATALOG_NAME.into(),
            schemas: vec![SCHEMA_NAME.into(), "information_schema".into()],
        }];
        let sessions = Sessions::default();
        let result = sessions.set(
            "k",
            request(&[
                ("catalog", Some(CATALOG_NAME)),
                ("schema", Some(SCHEMA_NAME)),
            ]),
            &catalogs,
        );
        assert!(result.errors.is_empty(), "{result:?}");
        let result = sessions.set(
            "k",
            request(&[("catalog", Some("nope")), ("colour", Some("red"))]),
            &catalogs,
        );
        assert_eq!(
            result.errors["catalog"].value,
            ErrorValue::InvalidValue as i32
        );
        assert_eq!(
            result.errors["colour"].value,
            ErrorValue::InvalidName as i32
        );
        let result = sessions.set("k", request(&[("schema", Some("nope"))]), &catalogs);
        assert_eq!(
            result.errors["schema"].value,
            ErrorValue::InvalidValue as i32
        );
        let result = sessions.set(
            "k",
            request(&[(TARGET_FILE_BYTES, Some("1KiB"))]),
            &catalogs,
        );
        assert_eq!(
            result.errors[TARGET_FILE_BYTES].value,
            ErrorValue::InvalidValue as i32
        );
        assert_eq!(sessions.target_file_bytes(Some("k")), None);
        let result = sessions.set(
            "k",
            request(&[(TARGET_FILE_BYTES, Some("2MiB"))]),
            &catalogs,
        );
        assert!(result.errors.is_empty(), "{result:?}");
        assert_eq!(sessions.target_file_bytes(Some("k")), Some(2 << 20));
        assert_eq!(sessions.target_file_bytes(Some("other")), None);
        let got = sessions.get(Some("k"));
        assert_eq!(
            got.session_options["catalog"].option_value,
            Some(OptionValue::StringValue(CATALOG_NAME.into()))
        );
        assert_eq!(
            sessions.close(Some("k")).status,
            close_session_result::Status::Closed as i32
        );
        assert_eq!(
            sessions.close(Some("never")).status,
            close_session_result::Status::Closed as i32
        );
    }
}
