//! The `jarvis` command's connected mode as a library, so benchmarks and other front ends run
//! the very code the CLI runs.

pub mod connected;
