//! Being a device of My Jarvis: a typed client of the hub ([`api`]), the lease authority with
//! its keeper ([`lease`]), holding a session ([`session`]), run settings read in one place
//! ([`settings`]), running on the user's own device ([`run`]), Continue in cloud / Continue
//! here ([`handoff`]), following a session ([`attach`]) and pairing ([`pairing`]).
//!
//! The CLI, the desktop core, the cloud agent's own runner and the benchmarks all use this
//! crate, so what a device does is written once. It never prints (callers get typed values
//! and events; diagnostics go to `tracing`), knows nothing of clap, Tauri or axum, and its
//! errors are [`DeviceError`]s that keep the hub's error code.

pub mod api;
pub mod attach;
pub mod error;
pub mod handoff;
pub mod lease;
pub mod leaving;
pub mod pairing;
pub mod run;
pub mod session;
pub mod settings;

pub use api::{Api, ws_url};
pub use error::{DeviceError, DeviceResult};
pub use jarvis_wire::device::{ExpectedDoc, HandoffState, Lease, RunSettings};
pub use lease::{HttpLeases, LeaseAuthority, LeaseKeeper, OwnLeases};
pub use run::{
    Prepared, RunOptions, RunReport, new_session_id, prepare, run_here, run_offline, workspace_id,
};
pub use session::{Device, Hold};
pub use settings::RunOverrides;
