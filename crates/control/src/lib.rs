//! The hub's control plane: who is calling (users, tokens, pairing, devices), what they may do
//! (workspaces and roles, the one access rule in [`access`]), which device runs each session
//! (leases), what happened (the audit log), and the rows kept beside them in the hub database
//! (secrets, configuration approvals, per-user rules), with that database's schema and
//! migrations ([`schema`]).
//!
//! Layout: [`Control`] is the facade the HTTP layer, the sync socket and the cloud runner call;
//! it applies the rule and writes the audit log over [`store::ControlStore`], the traits a
//! second database implements; [`sqlite::SqliteStore`] is the implementation today.
//!
//! Never: HTTP, axum or sockets here (the cloud agent maps [`ControlError::error_code`] to a
//! response); a token in clear in storage or logs; access decided anywhere but
//! [`access::decide`].

pub mod access;
pub mod approvals;
mod control;
mod error;
mod leases;
mod model;
pub mod schema;
pub mod secrets;
pub mod sqlite;
pub mod store;
pub mod user_rules;
mod workspaces;

pub use control::{Control, MAX_PAIRINGS_PER_ORIGIN};
pub use error::{ControlError, Result};
pub use model::*;

#[cfg(test)]
mod tests;
