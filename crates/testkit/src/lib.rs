//! The test kit: what the tests of every crate share, so each test says only what it tests.
//!
//! - [`fake`]: a fake Anthropic Messages server (and Bedrock/OpenAI stream bodies) on
//!   127.0.0.1:0, plus the replies tests script most often.
//! - [`cloud`]: the cloud process harness — the real `jarvis-cloud` on port 0, users and tokens
//!   made with its CLI (re-exported at the root).
//! - [`device`], [`comeback`], [`soak`]: `jarvis sync` devices as users run them, the "device
//!   comes back" scenario, the randomized soak.
//! - [`http`], [`poll`], [`sync_client`], [`socket`], [`sign`], [`fs`], [`git`], [`cli`],
//!   [`agent`]: the small helpers tests otherwise write again and again.
//!
//! A normal library used only as a dev-dependency (and by the bench), never by production code.
//! Binaries are found next to the test executable ([`binary`]), so the harness works from the
//! tests of any crate in the workspace.

pub mod agent;
pub mod cli;
pub mod cloud;
pub mod comeback;
pub mod device;
pub mod fake;
pub mod fs;
pub mod git;
pub mod http;
pub mod poll;
pub mod sign;
pub mod soak;
pub mod socket;
pub mod sync_client;

pub use cloud::{
    CloudAgent, add_user, binary, create_token, create_user_token, http_get, http_get_as,
    hub_with_token, hub_with_user,
};
pub use poll::eventually;
