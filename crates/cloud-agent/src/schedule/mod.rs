//! The scheduler of background agents: every tick it reloads the definitions
//! ([`crate::agents`]) when due, turns due cron occurrences and file changes into runs, follows
//! running runs to their end, and starts queued runs within the concurrency limit and the
//! budgets. Each run is an ordinary session, created and handed to the cloud runner exactly as
//! `POST /api/sessions` does (`crate::sessions::Sessions::start`).
//!
//! Stated policies (ARCHITECTURE.md repeats them):
//! - A run is a row in `agent_runs`, unique on (agent, scheduled time): a restart, a second
//!   tick or a racing request can never run one occurrence twice.
//! - Missed runs (the server was down): only the latest missed occurrence counts; with
//!   `missed: run_once` (default) it runs on catch-up if it is at most `--agents-catch-up-s`
//!   late, otherwise it is recorded as skipped; with `missed: skip` anything more than a minute
//!   late is skipped. An agent seen for the first time starts from now (no back-fill).
//! - File triggers: changes to matching paths (index entries and file contents, as the cloud's
//!   replica receives them) are coalesced until none arrived for the debounce time, then make
//!   one run listing the paths. Changes while a run of that agent is active are dropped, so an
//!   agent that edits files it watches does not trigger itself.
//! - Budgets: a run's session budget is the agent's `budget_usd` (default
//!   `--agents-default-budget-usd`), capped by what is left of the agent's `daily_budget_usd`
//!   and of the owner's `--agents-user-daily-budget-usd` (UTC day by the scheduler's clock);
//!   a run whose agent or owner has nothing left is recorded `over_budget` and not started.
//!   Cost is the session's, at list prices, cache writes and reads included.
//! - At most `--agents-max-concurrent` runs are active; more wait, oldest first.
//!
//! Time comes from a [`Clock`]; tests inject one (`--clock-file`) and move it by hand.

pub mod clock;
pub mod config;
pub mod cron;
pub mod routes;
pub mod scheduler;
pub mod state;
pub mod store;

pub use clock::{Clock, FileClock, ManualClock, SystemClock};
pub use config::AgentArgs;
pub use cron::{Decision, decide, occurrences};
pub use routes::{SIGNATURE_WINDOW_MS, router, trigger_message};
pub use scheduler::{start, unlisted_tools};
pub use state::AgentsApi;
pub use store::{Agents, RunRow};
