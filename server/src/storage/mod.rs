//! Where table data and table definitions live.
//!
//! * [`catalog`]: table definitions (managed tables: their files, partition columns and schema)
//!   and the journal of unfinished writes, persisted atomically in the catalog file;
//! * [`managed_table`]: the table provider of managed tables, exactly the files the catalog lists,
//!   with hive partition pruning;
//! * [`hive`]: `col=value/` partition directories, the one encoding writer and reader share;
//! * [`warehouse`]: the files of managed tables (written by Quiver, local disk or object store);
//! * [`object_stores`]: `s3://` and other object stores, registered the same way on every node;
//! * [`tpch`]: the embedded demo dataset `quiver serve` generates on first start.

pub(crate) mod catalog;
pub(crate) mod hive;
pub(crate) mod managed_table;
pub(crate) mod object_stores;
pub mod tpch;
pub(crate) mod warehouse;
