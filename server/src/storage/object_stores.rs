//! Object stores (S3-compatible) that tables live in, built the same way on every node.
//!
//! A store is identified by its root URL (`s3://bucket`). Its options come from the catalog
//! file's `[object_stores."s3://bucket"]` section, layered over the usual AWS environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_REGION`, `AWS_ENDPOINT`, ...). The coordinator ships the
//! catalog-file options to executors through the membership service, and each executor reads its
//! own environment, so both sides resolve the same locations. Local paths need no store.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use url::Url;

use crate::error::{QuiverError, Result};

/// Options of one store, as written in the catalog file.
pub(crate) type StoreOptions = BTreeMap<String, String>;

/// The store root of a table location (`s3://bucket/a/b/` → `s3://bucket`), or `None` for
/// locations served by the local file system.
pub(crate) fn store_root(location: &str) -> Result<Option<Url>> {
    let Ok(url) = Url::parse(location) else {
        // Not a URL: a local path.
        return Ok(None);
    };
    match url.scheme() {
        "file" => Ok(None),
        // A Windows drive letter parses as a one-letter scheme.
        s if s.len() == 1 => Ok(None),
        "s3" | "s3a" => {
            let bucket = url.host_str().ok_or_else(|| {
                QuiverError::InvalidArgument(format!("{location}: an s3 URL needs a bucket"))
            })?;
            let root = Url::parse(&format!("{}://{bucket}", url.scheme()))
                .map_err(|e| QuiverError::InvalidArgument(format!("{location}: {e}")))?;
            Ok(Some(root))
        }
        other => Err(QuiverError::InvalidArgument(format!(
            "{location}: unsupported location scheme '{other}' (use a local path or s3://)"
        ))),
    }
}

/// Builds the store for `root` from the environment and `options`.
pub(crate) fn build(root: &Url, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    match root.scheme() {
        "s3" | "s3a" => {
            let mut builder = AmazonS3Builder::from_env().with_url(root.as_str());
            for (key, value) in options {
                let key = AmazonS3ConfigKey::from_str(key).map_err(|_| {
                    QuiverError::InvalidArgument(format!(
                        "object store {root}: unknown S3 option '{key}'"
                    ))
                })?;
                builder = builder.with_config(key, value);
            }
            let store = builder
                .build()
                .map_err(|e| QuiverError::InvalidArgument(format!("object store {root}: {e}")))?;
            Ok(Arc::new(store))
        }
        other => Err(QuiverError::InvalidArgument(format!(
            "unsupported object store scheme '{other}'"
        ))),
    }
}

/// Registers the store for `root` in `runtime` unless one is registered already.
pub(crate) fn ensure_registered(
    runtime: &RuntimeEnv,
    root: &Url,
    options: &StoreOptions,
) -> Result<bool> {
    if runtime
        .object_store(ObjectStoreUrl::parse(root.as_str())?)
        .is_ok()
    {
        return Ok(false);
    }
    runtime.register_object_store(root, build(root, options)?);
    Ok(true)
}

/// The store `location` (a local path or an `s3://` URL) lives in, registered in `runtime` with
/// `options` if it was not, and the location's path in it: how every writer, committer and
/// collector reaches a destination, so that all of them name its files alike.
pub(crate) fn resolve(
    runtime: &RuntimeEnv,
    location: &str,
    options: &StoreOptions,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
    if let Some(root) = store_root(location)? {
        ensure_registered(runtime, &root, options)?;
    }
    let url = ListingTableUrl::parse(location)?;
    let store = runtime.object_store(url.object_store())?;
    Ok((store, url.prefix().clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_of_locations() {
        assert_eq!(store_root("/data/t.parquet").unwrap(), None);
        assert_eq!(store_root("relative/dir/").unwrap(), None);
        assert_eq!(store_root("file:///data/").unwrap(), None);
        assert_eq!(
            store_root("s3://bucket/a/b/").unwrap().unwrap().as_str(),
            "s3://bucket"
        );
        assert!(store_root("gopher://x/y").is_err());
    }

    #[test]
    fn s3_store_from_options() {
        let root = Url::parse("s3://bucket").unwrap();
        let mut options = StoreOptions::new();
        options.insert("region".into(), "us-east-1".into());
        options.insert("endpoint".into(), "http://127.0.0.1:9000".into());
        options.insert("allow_http".into(), "true".into());
        build(&root, &options).unwrap();
        options.insert("no_such_option".into(), "1".into());
        assert!(build(&root, &options).is_err());
    }
}
