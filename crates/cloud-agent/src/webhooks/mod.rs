//! GitHub webhooks: `POST /webhooks/github`. Every delivery's `X-Hub-Signature-256` is checked
//! (HMAC-SHA256 of the raw body with the configured secret, compared in constant time) before
//! anything else is read; each `X-GitHub-Delivery` is recorded once, so a redelivery never runs
//! twice. `pull_request` (opened, synchronize) and an `issue_comment` on a pull request that
//! mentions the review command (`@jarvis review`) start a PR review: the repository is fetched
//! (`refs/pull/<n>/head` and the base branch, with the configured token), the head checked out
//! into a workspace of its own, and an ordinary cloud session (read-only `plan` mode) is asked to
//! review the diff; its final answer is posted through the GitHub REST API as the review.
//!
//! Never: act on a payload whose signature does not verify, put the token in a URL, a process
//! argument or a log line, or post a review for a delivery twice.

pub mod config;
pub mod events;
pub mod routes;
pub mod state;
pub mod store;

pub use config::{GithubArgs, WebhookError};
pub use events::{PullRequest, Request, classify, review_workspace, signature_valid};
pub use routes::{MAX_PAYLOAD, resume, router};
pub use state::GithubApi;
pub use store::Webhooks;
