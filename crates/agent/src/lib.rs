//! The agent runtime: the Anthropic Messages streaming client, providers, tools confined to a
//! workspace, permissions, and the turn loop that reads and writes the session document.
//!
//! This crate knows nothing of Tauri or axum. Everything the loop needs to continue a session
//! is in the session document (`jarvis_sync::doc::SessionDoc`); nothing lives only in a process.

pub mod anthropic;
pub mod approval;
pub mod commands;
pub mod compaction;
pub mod egress;
pub mod hooks;
pub mod memory;
pub mod models;
pub mod permissions;
pub mod providers;
pub mod runner;
pub mod sandbox;
pub mod settings;
pub mod shells;
pub mod sse;
pub mod tools;
