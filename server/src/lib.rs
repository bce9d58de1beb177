//! Quiver: a distributed SQL query engine with an Arrow Flight SQL front door.
//!
//! ```text
//!   ADBC / JDBC / pyarrow / quiver sql
//!              │  Flight SQL (gRPC)
//!              ▼
//!   ┌────────────────────────────────────────────────────────┐
//!   │ coordinator (node::coordinator)                        │
//!   │  security::auth ─► frontdoor ──QueryService──► engine  │
//!   │                    (Flight SQL)   (Quiver's    │  run: │
//!   │                                    own types)  │  supervised runs
//!   │  storage::catalog / warehouse ◄────────────────┤  writes: one commit
//!   │  planner (settings, rules) ◄───────────────────┘       │
//!   │  cluster::membership ◄──── register / heartbeat ────┐  │
//!   │  cluster::distributed (datafusion-distributed seam) │  │
//!   └──────────────┬──────────────────────────────────────┼──┘
//!      plan fragments, Arrow IPC streams (signed:          │
//!      security::cluster_auth)                             │
//!         ┌────────┴─────────┐                             │
//!         ▼                  ▼                             │
//!   ┌───────────┐ shuffle ┌───────────┐                    │
//!   │ executor  │◄───────►│ executor  │────────────────────┘
//!   │ (worker)  │         │ (worker)  │  node::executor
//!   └─────┬─────┘         └─────┬─────┘
//!         └──── Parquet / CSV / JSON: local disk or S3 (storage::object_stores) ────┘
//! ```
//!
//! Folders by concern, each module private, its contract in its own `//!` doc:
//! * `node`: the process shapes of the binary (coordinator, executor, `serve`) and sockets;
//! * `frontdoor`: the Flight SQL protocol; it reaches the engine only through
//!   `QueryService` (`engine/api.rs`), in Quiver's own types, so it is tested without a cluster;
//! * `engine`: statements (prepare, bind, classify), the one supervised run of a physical plan
//!   (admission, deadlines, the departure watchdog, reruns), EXPLAIN, catalog DDL and writes
//!   with their one uninterruptible commit;
//! * `cluster`: membership and the seam to datafusion-distributed (the only module naming it),
//!   stage deadlines;
//! * `sink`: the distributed write path: a writer per task of the last stage, one commit on
//!   the coordinator, the write journal and the collector of failed writes' files;
//! * `storage`: catalog, warehouse, object stores, the demo dataset;
//! * `planner`: the settings every node plans with and Quiver's optimizer rules;
//! * `security`: client auth, cluster signatures, the IPC guard;
//! * `ops`: what operators see and do: the query log, progress, system tables, metrics, the
//!   admin HTTP port and its status page;
//! * `error` (one error enum, one mapping to gRPC codes), `ids` (typed ids), `task` (owned
//!   tasks), `resources` (memory and admission), `config`, `arrow_compat` (wire-safe types),
//!   `logs` (log format, the query id on every node's lines about a query).
//!
//! What the binary, the tests and the benches use is re-exported below; nothing else is public.

mod arrow_compat;
mod cluster;
mod config;
mod engine;
mod error;
mod frontdoor;
mod ids;
mod logs;
mod node;
mod ops;
mod planner;
mod resources;
mod security;
mod sink;
mod storage;
mod task;

pub use arrow_compat::{cast_batch, plain_schema};
pub use config::ServerConfigFile;
pub use error::{QuiverError, Result};
pub use frontdoor::DEFAULT_MAX_MESSAGE_BYTES;
pub use ids::{AttemptId, QueryId, StatementId, WriteId};
pub use logs::{LogFormat, init_logs};
pub use node::coordinator::{
    CoordinatorConfig, RunningCoordinator, TlsFiles, start as start_coordinator,
};
pub use node::executor::{ExecutorConfig, RunningExecutor, start as start_executor};
pub use node::net::parse_listen;
pub use node::serve::{LocalCluster, ServeConfig, start as start_serve};
pub use ops::http::HttpListen;
pub use planner::settings::{DEFAULT_BROADCAST_JOIN_BYTES, DISTRIBUTED_SETTINGS, session_config};
pub use resources::{ResourceLimits, parse_bytes};
pub use security::auth::{DEFAULT_HASH_ITERATIONS, hash_password};
pub use security::cluster_auth::{ClusterAuth, Signed};
pub use storage::catalog::{ManagedFile, TableDef, absolute_location};
pub use storage::tpch;
