//! The process shapes of the `quiver` binary and what they share.
//!
//! * [`coordinator`]: the Flight SQL front door, the engine, the catalog and membership on one
//!   port;
//! * [`executor`]: a worker that registers with a coordinator, heartbeats and runs plan fragments;
//! * [`serve`]: a coordinator and N in-process executors on the demo dataset (`quiver serve`);
//! * [`net`]: listening sockets, address files and server handles.
//!
//! Each `start` returns a running value; dropping it stops the node and everything it spawned.

pub(crate) mod coordinator;
pub(crate) mod executor;
pub(crate) mod net;
pub(crate) mod serve;
