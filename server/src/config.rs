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
//! # Without this key any location is allowed; an empty list forbids the statement.
//! external_tables = ["/srv/lake/", "s3://lake/"]
//! # Directories COPY … TO may write into; without this key COPY is PERMISSION_DENIED.
//! copy_targets = ["/srv/exports/", "s3://lake/exports/"]
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
    /// Location prefixes external tables may read (local directories or `s3://bucket/prefix`);
    /// `None` allows any.
    #[serde(default)]
    pub external_tables: Option<Vec<String>>,
    /// Directories `COPY … TO` may write into; none (the default) refuses `COPY`.
    #[serde(default)]
    pub copy_targets: Vec<String>,
}

impl LocationPolicy {
    /// Allows `location` if it lies under one of the prefixes. Local paths with `..` are refused
    /// rather than resolved.
    pub fn check(&self, location: &str) -> Result<()> {
        let Some(allowed) = &self.external_tables else {
            return Ok(());
        };
        if under(allowed, location) {
            return Ok(());
        }
        Err(QuiverError::PermissionDenied(format!(
            "LOCATION '{location}' is outside the locations this server allows for external tables ([locations] external_tables in its config)"
        )))
    }

    /// Allows `COPY … TO location` if it lies under one of the `copy_targets`.
    pub fn check_copy_target(&self, location: &str) -> Result<()> {
        if under(&self.copy_targets, location) {
            return Ok(());
        }
        Err(QuiverError::PermissionDenied(format!(
            "COPY target '{location}' is outside the directories this server lets COPY write ([locations] copy_targets in its config)"
        )))
    }
}

/// Whether `location` lies under one of `prefixes`.
fn under(prefixes: &[String], location: &str) -> bool {
    let Some(location) = normalize(location) else {
        return false;
    };
    prefixes.iter().filter_map(|p| normalize(p)).any(|prefix| {
        let dir = prefix.trim_end_matches('/');
        location == dir || location.starts_with(&format!("{dir}/"))
    })
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
            external_tables: Some(vec!["/srv/lake/".into(), "s3://lake/raw".into()]),
            copy_targets: vec!["/srv/out/".into()],
        };
        policy.check_copy_target("/srv/out/x/").unwrap();
        for denied in ["/srv/lake/x", "/srv/out/../etc", "/srv/outside"] {
            let err = policy.check_copy_target(denied).unwrap_err();
            assert_eq!(
                err.to_status().code(),
                tonic::Code::PermissionDenied,
                "{denied}"
            );
        }
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
        assert!(LocationPolicy::default().check("/srv/lake/").is_ok());
        assert!(
            LocationPolicy::default()
                .check_copy_target("/srv/lake/")
                .is_err()
        );
        let none = LocationPolicy {
            external_tables: Some(vec![]),
            copy_targets: vec![],
        };
        assert!(none.check("/srv/lake/").is_err());
    }
}
