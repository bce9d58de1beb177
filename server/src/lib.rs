//! Quiver: a distributed SQL query engine with an Arrow Flight SQL front door.
//!
//! ```text
//!   ADBC / JDBC / pyarrow / quiver sql
//!              │  Flight SQL (gRPC)
//!              ▼
//!   ┌───────────────────────────────────────────┐
//!   │ coordinator                               │
//!   │  frontdoor ─► engine ─► DataFusion +      │
//!   │  (Flight SQL)  │        distributed planner│
//!   │  catalog ◄─────┘        (head stage here) │
//!   │  membership (ClusterService) ◄──────┐     │
//!   └──────────────┬──────────────────────┼─────┘
//!      plan fragments, Arrow IPC streams  │ register / heartbeat
//!         ┌────────┴─────────┐            │
//!         ▼                  ▼            │
//!   ┌───────────┐ shuffle ┌───────────┐   │
//!   │ executor  │◄───────►│ executor  │───┘
//!   │ (worker)  │         │ (worker)  │
//!   └─────┬─────┘         └─────┬─────┘
//!         └──── Parquet / CSV / JSON: local disk or S3 ────┘
//! ```
//!
//! Modules, one concern each:
//! * [`coordinator`], [`executor`], [`serve`]: the three server shapes of the `quiver` binary;
//! * [`frontdoor`]: Flight SQL protocol over [`engine`], the coordinator's query engine;
//!   [`auth`]: client authentication in front of it; [`writes`] and [`warehouse`]: managed tables;
//! * [`distributed`]: the only module that names datafusion-distributed types;
//! * [`membership`]: the live executor set; [`cluster_auth`]: signatures of the internal plane;
//!   [`catalog`] and [`object_stores`]: tables;
//! * [`settings`]: DataFusion settings every node shares; [`arrow_compat`]: wire-safe types;
//! * [`error`]: the error enum and its one mapping to gRPC codes; [`config`]: the `--config` file;
//! * [`resources`]: memory, spill and admission limits; [`placeholders`]: `?` parameters;
//!   [`tpch`]: the demo dataset; [`net`], [`task`]: plumbing.

pub mod arrow_compat;
pub mod auth;
pub mod catalog;
pub mod cluster_auth;
pub mod config;
pub mod cooperative;
pub mod coordinator;
pub mod distributed;
pub mod engine;
pub mod error;
pub mod executor;
pub mod frontdoor;
pub mod ipc_guard;
pub mod membership;
pub mod net;
pub mod object_stores;
pub mod placeholders;
pub mod resources;
pub mod serve;
pub mod settings;
pub mod stage_deadline;
pub mod task;
pub mod tpch;
pub mod warehouse;
pub mod window_sorts;
pub mod writes;
