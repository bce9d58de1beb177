//! The cluster: who is in it, and how a plan runs across it.
//!
//! * [`membership`]: the live executor set (registration, heartbeats, the reaper, probes) and the
//!   membership gRPC service executors call;
//! * [`distributed`]: the seam to datafusion-distributed, the only module that names that crate
//!   (planner session, worker service, channels, task routing, reading its errors);
//! * [`filter_relay`]: hash joins' dynamic filters carried to the scans they prune in other
//!   stages, on other executors;
//! * [`pass_through`]: a query's last stage forwarded to the client as the executors encoded it;
//! * [`stage_deadline`]: the per-stage deadline every worker request carries;
//! * [`traffic`]: bytes of worker traffic each node sends and receives.

pub(crate) mod distributed;
pub(crate) mod filter_relay;
pub(crate) mod membership;
pub(crate) mod pass_through;
pub(crate) mod stage_deadline;
pub(crate) mod traffic;
