//! The server's `--config` file (TOML): client authentication and where SQL may point tables.
//!
//! ```toml
//! [auth]                       # see crate::security::auth
//! token_secret = "..."
//! [[auth.users]]
//! name = "analyst"
//! password_hash = "$pbkdf2-sha256$..."
//!
//! [locations]
//! # Prefixes CREATE EXTERNAL TABLE may point at; anything else is PERMISSION_DENIED.
//! # Without this section any location is allowed; an empty list forbids the statement.
//! external_tables = ["/srv/lake/", "s3://lake/"]
//! ```

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::error::{QuiverError, Result};
use crate::security::auth::AuthConfig;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfigFile {
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub locations: Option<LocationPolicy>,
}

impl ServerConfigFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            QuiverError::InvalidArgument(format!("reading config {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| QuiverError::InvalidArgument(format!("config {}: {e}", path.display())))
    }
}

/// Where tables created with SQL may read from: a plan can read any file an executor can, so a
/// server open to many users confines `CREATE EXTERNAL TABLE` to the data it means to serve.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationPolicy {
    /// Allowed location prefixes (local directories or `s3://bucket/prefix`).
    pub external_tables: Vec<String>,
}

impl LocationPolicy {
    /// Allows `location` if it lies under one of the prefixes. Local paths with `..` are refused
    /// rather than resolved.
    pub fn check(&self, location: &str) -> Result<()> {
        let denied = || {
            QuiverError::PermissionDenied(format!(
                "LOCATION '{location}' is outside the locations this server allows for external tables ([locations] external_tables in its config)"
            ))
        };
        let location = normalize(location).ok_or_else(denied)?;
        let allowed = self
            .external_tables
            .iter()
            .filter_map(|p| normalize(p))
            .any(|prefix| {
                let dir = prefix.trim_end_matches('/');
                location == dir || location.starts_with(&format!("{dir}/"))
            });
        if allowed { Ok(()) } else { Err(denied()) }
    }
}

/// A comparable form of a location: local paths absolute, without `file://`, `.` or `..`
/// (`None` if it has `..` or is relative); URLs as written.
fn normalize(location: &str) -> Option<String> {
    let local = location.strip_prefix("file://").unwrap_or(location);
    if !local.starts_with('/') {
        return location.contains("://").then(|| location.to_string());
    }
    let mut path = PathBuf::new();
    for component in Path::new(local).components() {
        match component {
            Component::RootDir => path.push("/"),
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(path.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_under_allowed_prefixes_only() {
        let policy = LocationPolicy {
            external_tables: vec!["/srv/lake/".into(), "s3://lake/raw".into()],
        };
        for ok in [
            "/srv/lake/t/",
            "/srv/lake",
            "file:///srv/lake/a.parquet",
            "/srv/./lake/x",
            "s3://lake/raw/x/",
        ] {
            policy.check(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for denied in [
            "/etc/passwd",
            "/srv/lakehouse/x",
            "/srv/lake/../../etc/",
            "s3://lake/other/",
            "s3://lakeside/raw/",
            "relative/x",
        ] {
            let err = policy.check(denied).unwrap_err();
            assert_eq!(
                err.to_status().code(),
                tonic::Code::PermissionDenied,
                "{denied}"
            );
        }
        assert!(LocationPolicy::default().check("/srv/lake/").is_err());
    }
}
