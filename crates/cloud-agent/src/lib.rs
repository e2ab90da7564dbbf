//! The My Jarvis cloud agent: the hub's HTTP and WebSocket transport, token auth, and the
//! `jarvis-cloud` command line. The sync logic itself lives in `jarvis_sync`; this crate owns
//! sockets, processes and configuration.

pub mod access;
pub mod agents;
pub mod api;
pub mod approvals;
pub mod blobs;
pub mod control;
pub mod devenv;
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
