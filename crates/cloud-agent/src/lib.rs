//! The My Jarvis cloud agent: the hub's HTTP and WebSocket transport, token auth, and the
//! `jarvis-cloud` command line. The sync logic itself lives in `jarvis_sync`; this crate owns
//! sockets, processes and configuration.

/// The control plane lives in `jarvis_control`; these paths keep `crate::control::X` and
/// `crate::access::X` meaning what they did.
pub use jarvis_control as control;
pub use jarvis_control::access;

pub mod agents;
pub mod api;
pub mod approvals;
pub mod blobs;
pub mod gateway;
pub mod limits;
pub mod runner;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod updates;
pub mod user_rules;
pub mod webhooks;
pub mod webui;
