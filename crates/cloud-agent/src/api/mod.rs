//! The HTTP API under `/api` (JSON; described by `/openapi.json`), in groups by what they
//! serve: [`pairing`], [`accounts`] (me, users, tokens, devices), [`workspaces`], [`sessions`]
//! (with their live [`changes`]), [`leases`] (handoff and device leases) and [`reports`]
//! (usage, audit). Each handler is a few lines over the control plane, the sessions service or
//! a server-side document edit through the hub; every error is `{code, message}`
//! (`crate::http::ApiError`); every request is authenticated by a bearer token and
//! rate-limited per token (`crate::http::Caller`).
//!
//! Never: hold another feature's state or router (the gateway, webhooks, background agents
//! own theirs; `crate::app` puts them together).

pub mod accounts;
pub mod changes;
pub mod leases;
pub mod openapi;
pub mod pairing;
pub mod reports;
pub mod sessions;
pub mod workspaces;

/// The state of the API's routes (and of the secrets', approvals' and users' rules' routes).
pub type Api = crate::services::Services;

pub use crate::http::{ApiError, Body, Caller};
