//! The sync core of My Jarvis: Yjs documents (yrs), their durable store, the Hocuspocus wire
//! protocol, the hub logic that relays and persists updates, and a Rust client.
//!
//! This crate knows nothing of Tauri or axum: the server binary and the desktop shell own the
//! sockets and windows and call into it.

pub mod awareness;
pub mod blob;
pub mod client;
pub mod doc;
pub mod gitstate;
pub mod handoff;
pub mod hub;
pub mod mirror;
mod mirror_base;
pub mod paths;
pub mod protocol;
pub mod store;
pub mod update_check;
