//! Where table data and table definitions live.
//!
//! * [`catalog`]: table definitions, persisted atomically in the catalog file;
//! * [`warehouse`]: the files of managed tables (written by Quiver, local disk or object store);
//! * [`object_stores`]: `s3://` and other object stores, registered the same way on every node;
//! * [`tpch`]: the embedded demo dataset `quiver serve` generates on first start.

pub(crate) mod catalog;
pub(crate) mod object_stores;
pub mod tpch;
pub(crate) mod warehouse;
