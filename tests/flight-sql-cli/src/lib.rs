//! Empty: this package only exists to build arrow-flight's `flight_sql_client` binary with the
//! features it needs (see `Cargo.toml`).
