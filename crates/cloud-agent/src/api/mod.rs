//! The HTTP API under `/api` (JSON; described by `/openapi.json`), in groups by what they
//! serve: [`pairing`], [`accounts`] (me, users, tokens, devices), [`workspaces`],
//! [`sessions`] (with their live [`changes`]), [`leases`] (handoff and device leases),
//! [`reports`] (usage, audit), [`secrets`], configuration approvals ([`config`]) and members'
//! own rules and memory ([`rules`]). Each group's state is `crate::services::Services`; each
//! handler is a few lines over the control plane, the sessions service or a server-side
//! document edit through the hub; every error is `{code, message}` (`crate::http::ApiError`);
//! every request is authenticated by a bearer token and rate-limited per token
//! (`crate::http::Caller`).
//!
//! Never: hold another feature's state or router (the gateway, webhooks, background agents
//! own theirs; `crate::app` puts them together).

pub mod accounts;
pub mod changes;
pub mod config;
pub mod leases;
pub mod openapi;
pub mod pairing;
pub mod reports;
pub mod rules;
pub mod secrets;
pub mod sessions;
pub mod workspaces;
