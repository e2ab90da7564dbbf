//! The scheduler's options (part of `jarvis-cloud serve`).

use std::path::PathBuf;

/// Options of the scheduler (part of `jarvis-cloud serve`).
#[derive(Clone, clap::Args)]
pub struct AgentArgs {
    /// Background-agent runs active at once; more wait in a queue.
    #[arg(long, env = "JARVIS_AGENTS_MAX_CONCURRENT", default_value_t = 2)]
    pub agents_max_concurrent: usize,
    /// What a user's background agents may spend per UTC day, in US dollars.
    #[arg(
        long,
        env = "JARVIS_AGENTS_USER_DAILY_BUDGET_USD",
        default_value_t = 10.0
    )]
    pub agents_user_daily_budget_usd: f64,
    /// A run's budget when its definition names none, in US dollars.
    #[arg(long, env = "JARVIS_AGENTS_DEFAULT_BUDGET_USD", default_value_t = 1.0)]
    pub agents_default_budget_usd: f64,
    /// How late a missed cron run may still run on catch-up (missed: run_once), in seconds.
    #[arg(long, env = "JARVIS_AGENTS_CATCH_UP_S", default_value_t = 3600)]
    pub agents_catch_up_s: u64,
    /// How often the scheduler looks, in milliseconds.
    #[arg(long, env = "JARVIS_AGENTS_TICK_MS", default_value_t = 1000)]
    pub agents_tick_ms: u64,
    /// How often definitions are re-read from the workspaces, in seconds (the API's changes
    /// apply at once).
    #[arg(long, env = "JARVIS_AGENTS_RELOAD_S", default_value_t = 10)]
    pub agents_reload_s: u64,
    /// Quiet time after a file change before a files-triggered run starts, in milliseconds.
    #[arg(long, env = "JARVIS_AGENTS_FILE_DEBOUNCE_MS", default_value_t = 2000)]
    pub agents_file_debounce_ms: u64,
    /// Read the scheduler's time from this file (milliseconds since the epoch); for tests.
    #[arg(long, env = "JARVIS_CLOCK_FILE", hide = true)]
    pub clock_file: Option<PathBuf>,
}

impl std::fmt::Debug for AgentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentArgs")
            .field("max_concurrent", &self.agents_max_concurrent)
            .field("user_daily_budget_usd", &self.agents_user_daily_budget_usd)
            .field("catch_up_s", &self.agents_catch_up_s)
            .finish_non_exhaustive()
    }
}
