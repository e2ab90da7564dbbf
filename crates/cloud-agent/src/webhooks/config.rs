//! The GitHub integration's options (part of `jarvis-cloud serve`) and its errors.

use crate::control::ControlError;

/// Options of the GitHub integration (part of `jarvis-cloud serve`).
#[derive(Clone, clap::Args)]
pub struct GithubArgs {
    /// The webhook's secret; without it `/webhooks/github` answers 404.
    #[arg(long, env = "JARVIS_GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_webhook_secret: Option<String>,
    /// A token that can read the repositories and write pull-request reviews.
    #[arg(long, env = "JARVIS_GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<String>,
    /// The REST API base URL (GitHub Enterprise: https://<host>/api/v3).
    #[arg(
        long,
        env = "JARVIS_GITHUB_API_URL",
        default_value = "https://api.github.com"
    )]
    pub github_api_url: String,
    /// Where repositories are cloned from: `<base>/<owner>/<repo>.git`.
    #[arg(
        long,
        env = "JARVIS_GITHUB_CLONE_URL",
        default_value = "https://github.com"
    )]
    pub github_clone_url: String,
    /// The mention that, followed by `review`, asks for a review in a PR comment.
    #[arg(long, env = "JARVIS_GITHUB_MENTION", default_value = "@jarvis")]
    pub github_mention: String,
    /// The My Jarvis user (name or id) that owns review sessions and workspaces.
    #[arg(long, env = "JARVIS_GITHUB_REVIEW_USER", default_value = "admin")]
    pub github_review_user: String,
    /// Model for review sessions (default: the server's).
    #[arg(long, env = "JARVIS_GITHUB_REVIEW_MODEL")]
    pub github_review_model: Option<String>,
    /// Cost limit of one review session, in US dollars.
    #[arg(long, env = "JARVIS_GITHUB_REVIEW_BUDGET_USD", default_value_t = 2.0)]
    pub github_review_budget_usd: f64,
    /// How long a review may take before it is given up, in seconds.
    #[arg(long, env = "JARVIS_GITHUB_REVIEW_TIMEOUT_S", default_value_t = 1800)]
    pub github_review_timeout_s: u64,
}

impl std::fmt::Debug for GithubArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubArgs")
            .field("secret", &self.github_webhook_secret.as_ref().map(|_| "…"))
            .field("token", &self.github_token.as_ref().map(|_| "…"))
            .field("api_url", &self.github_api_url)
            .field("clone_url", &self.github_clone_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("git {what} failed: {detail}")]
    Git { what: String, detail: String },
    #[error("GitHub API: {0}")]
    GitHub(String),
    #[error("{0}")]
    Control(#[from] ControlError),
    #[error("{0}")]
    Session(String),
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
