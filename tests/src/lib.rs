//! End-to-end tests across the real binaries live in `tests/tests/`; their harness (the cloud
//! process, devices, the soak, the fake model) is the test kit, `jarvis-testkit`.
//!
//! This re-export keeps `jarvis_e2e::…` paths working for tests written on branches made before
//! the kit existed; new tests name `jarvis_testkit` directly.

pub use jarvis_testkit::*;
