//! Operating the cluster: what an operator sees and the levers they have.
//!
//! * [`queries`]: the query log (running queries with their progress, the bounded history, cancel
//!   by id with its permission rule, observers);
//! * [`progress`]: the poller that reads running queries' task progress from the executors;
//! * [`system_tables`]: the `system` schema (`system.queries`, `system.executors`,
//!   `system.tables`);
//! * [`metrics`]: each node's Prometheus metrics;
//! * [`http`]: the admin HTTP port (metrics, health, the coordinator's status page and its API).

pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod progress;
pub(crate) mod queries;
pub(crate) mod system_tables;
