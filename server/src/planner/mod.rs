//! How every node plans: the DataFusion settings all nodes share and Quiver's own physical
//! optimizer rules.
//!
//! * [`settings`]: the settings (and why each one is set) the coordinator plans with and every
//!   executor's task sessions apply;
//! * [`cooperative`]: joins yield to the scheduler, so cancellation reaches them;
//! * [`window_sorts`]: windows keep an explicit sort on their partition columns across exchanges;
//! * [`wire_statistics`]: a plan fragment sent to an executor carries only the scan statistics an
//!   executor reads.

pub(crate) mod cooperative;
pub(crate) mod settings;
pub(crate) mod window_sorts;
pub(crate) mod wire_statistics;
