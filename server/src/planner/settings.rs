//! The DataFusion settings every Quiver node runs with.
//!
//! The coordinator plans with these and every executor builds its task sessions with them;
//! datafusion-distributed only ships its own `distributed.*` options to workers, so both sides
//! call [`apply`]. Each setting fixes a real failure of distributed execution (see
//! `shared/design/anchors.md`):
//!
//! * dynamic filter pushdown is on, explicitly, on every node: a filter produced and consumed in
//!   one stage works as in one process, and `cluster::filter_relay` carries the filters of
//!   broadcast joins to the scans of other stages (the others stay unfilled: no pruning, never a
//!   wrong answer or a wait longer than the relay's);
//! * physical uncorrelated scalar subqueries share in-process state that cannot cross stages:
//!   the engine runs them before their query instead (`engine::scalar_subqueries`), and a plan
//!   made any other way gets them as joins;
//! * Utf8View/BinaryView columns are not readable by JDBC ≤ 18.3 and make Flight frames large, so
//!   Parquet strings are read as plain Utf8 and SQL string types map to Utf8.

use datafusion::common::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::prelude::SessionConfig;

/// The catalog and schema every table lives in.
pub(crate) const CATALOG_NAME: &str = "quiver";
pub(crate) const SCHEMA_NAME: &str = "public";

/// `(key, value)` pairs applied on coordinator and executors alike.
pub const DISTRIBUTED_SETTINGS: &[(&str, &str)] = &[
    (
        "datafusion.optimizer.enable_dynamic_filter_pushdown",
        "true",
    ),
    (
        "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery",
        "false",
    ),
    (
        "datafusion.execution.parquet.schema_force_view_types",
        "false",
    ),
    (
        "datafusion.sql_parser.map_string_types_to_utf8view",
        "false",
    ),
    ("datafusion.catalog.information_schema", "true"),
];

/// The default of `--broadcast-join-bytes`: build sides estimated below this are broadcast.
///
/// DataFusion's own threshold (1 MiB) weighs an in-process repartition, which costs little. Across
/// nodes the alternative is shuffling the probe side, often a fact table, over the network, while
/// a broadcast sends the build side once per task, and its `CollectLeft` join yields a dynamic
/// filter that `cluster::filter_relay` carries to the probe side's scans. Spark's default is 10 MB.
pub const DEFAULT_BROADCAST_JOIN_BYTES: usize = 16 * 1024 * 1024;

/// `config` planning hash joins whose estimated build side is under `bytes` as `CollectLeft`
/// (which the distributed planner broadcasts), and others as partitioned joins.
pub(crate) fn with_broadcast_join_bytes(mut config: SessionConfig, bytes: usize) -> SessionConfig {
    config
        .options_mut()
        .optimizer
        .hash_join_single_partition_threshold = bytes;
    config
}

/// Applies [`DISTRIBUTED_SETTINGS`] to a set of options.
pub(crate) fn apply(options: &mut ConfigOptions) -> Result<()> {
    for (key, value) in DISTRIBUTED_SETTINGS {
        options.set(key, value)?;
    }
    Ok(())
}

/// A session config for a Quiver node: Quiver's settings, Quiver's catalog names, and
/// `target_partitions` partitions per node (0 = one per core).
pub fn session_config(target_partitions: usize) -> Result<SessionConfig> {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME)
        .with_create_default_catalog_and_schema(true);
    if target_partitions > 0 {
        config = config.with_target_partitions(target_partitions);
    }
    apply(config.options_mut())?;
    Ok(config)
}

/// Reads back the value of every distributed setting, as the status RPC reports it.
pub(crate) fn effective(options: &ConfigOptions) -> Vec<(String, String)> {
    let entries = options.entries();
    DISTRIBUTED_SETTINGS
        .iter()
        .filter_map(|(key, _)| {
            entries
                .iter()
                .find(|e| e.key == *key)
                .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_applied_and_readable() {
        let config = session_config(3).unwrap();
        assert_eq!(config.target_partitions(), 3);
        let effective = effective(config.options());
        assert_eq!(effective.len(), DISTRIBUTED_SETTINGS.len());
        for (key, value) in DISTRIBUTED_SETTINGS {
            assert!(
                effective.contains(&(key.to_string(), value.to_string())),
                "{key}"
            );
        }
    }
}
