//! Who may talk to Quiver, and what they may send.
//!
//! * [`auth`]: client authentication at the front door (Basic, bearer tokens, sessions);
//! * [`cluster_auth`]: signatures on every call of the internal plane;
//! * [`ipc_guard`]: client Arrow IPC checked before arrow decodes it.

pub(crate) mod auth;
pub(crate) mod cluster_auth;
pub(crate) mod ipc_guard;
