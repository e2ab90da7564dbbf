//! The My Jarvis cloud agent: the hub's HTTP and WebSocket transport, token auth, and the
//! `jarvis-cloud` command line. The sync logic itself lives in `jarvis_sync`; this crate owns
//! sockets, processes and configuration.
//!
//! Layout by feature (ARCHITECTURE.md has the map; `tests/layout.rs` holds it free of import
//! cycles): [`http`] is the leaf every route stands on; [`services`] and [`sessions`] are what
//! features share; [`api`], [`gateway`], [`webhooks`], [`schedule`], [`hub_routes`],
//! [`updates`] and [`webui`] each own their state and router; [`app`] puts them together;
//! [`server`] builds and serves it.

/// The control plane lives in `jarvis_control`; these paths keep `crate::control::X` and
/// `crate::access::X` meaning what they did.
pub use jarvis_control as control;
pub use jarvis_control::access;

pub mod agents;
pub mod api;
pub mod app;
pub mod approvals;
pub mod blobs;
pub mod devenv;
pub mod gateway;
pub mod http;
pub mod hub_routes;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod onboarding;
pub mod runner;
pub mod schedule;
pub mod secrets;
pub mod server;
pub mod services;
pub mod sessions;
pub mod updates;
pub mod user_rules;
pub mod webhooks;
pub mod webui;
