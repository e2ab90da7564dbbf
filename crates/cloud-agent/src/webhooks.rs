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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hmac::{KeyInit, Mac};
use jarvis_sync::doc::{Block, Role, SessionDoc, SessionStatus};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::api::{Api, ApiError, NewSession};
use crate::control::{Control, ControlError, Identity, now_ms};
use crate::limits::ClientAddr;

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

/// `sha256=<hex>` over `body` with `secret`, checked in constant time.
pub fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(given) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given))
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Review(PullRequest),
    Ping,
    Ignore(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub owner: String,
    pub repo: String,
    pub number: u64,
    pub title: String,
    pub base_ref: String,
    pub trigger: String,
}

/// Reads an event's payload (the shapes GitHub sends, see tests/fixtures/github).
pub fn classify(event: &str, payload: &Value, mention: &str) -> Request {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let repo = &payload["repository"];
    let owner = s(&repo["owner"]["login"]);
    let name = s(&repo["name"]);
    let action = payload["action"].as_str().unwrap_or_default();
    match event {
        "ping" => Request::Ping,
        "pull_request" => {
            if !matches!(action, "opened" | "synchronize") {
                return Request::Ignore(format!("pull_request {action}"));
            }
            let pr = &payload["pull_request"];
            match pr["number"].as_u64().or(payload["number"].as_u64()) {
                Some(number) if !owner.is_empty() && !name.is_empty() => {
                    Request::Review(PullRequest {
                        owner,
                        repo: name,
                        number,
                        title: s(&pr["title"]),
                        base_ref: s(&pr["base"]["ref"]),
                        trigger: format!("pull_request {action}"),
                    })
                }
                _ => Request::Ignore("pull_request payload without number or repository".into()),
            }
        }
        "issue_comment" => {
            if action != "created" {
                return Request::Ignore(format!("issue_comment {action}"));
            }
            let issue = &payload["issue"];
            if issue.get("pull_request").is_none_or(Value::is_null) {
                return Request::Ignore("a comment on an issue, not a pull request".into());
            }
            let body = payload["comment"]["body"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            let command = format!("{} review", mention.to_lowercase());
            if !body.contains(&command) {
                return Request::Ignore(format!("no {command:?} in the comment"));
            }
            // Anyone can comment on a public repository; only people with a hand in it may
            // spend the team's budget on a review.
            let association = payload["comment"]["author_association"]
                .as_str()
                .unwrap_or("NONE");
            if !matches!(association, "OWNER" | "MEMBER" | "COLLABORATOR") {
                return Request::Ignore(format!(
                    "the review command from a commenter who is {association}, not an owner, \
                     member or collaborator"
                ));
            }
            match issue["number"].as_u64() {
                Some(number) if !owner.is_empty() && !name.is_empty() => {
                    Request::Review(PullRequest {
                        owner,
                        repo: name,
                        number,
                        title: s(&issue["title"]),
                        base_ref: s(&repo["default_branch"]),
                        trigger: format!(
                            "comment by {}",
                            payload["comment"]["user"]["login"]
                                .as_str()
                                .unwrap_or("someone")
                        ),
                    })
                }
                _ => Request::Ignore("issue_comment payload without number or repository".into()),
            }
        }
        other => Request::Ignore(format!("event {other}")),
    }
}

/// The GitHub integration's state: configuration, the deliveries and reviews tables (the hub's
/// database, its own connection) and one lock per repository cache.
pub struct Webhooks {
    args: GithubArgs,
    data_dir: PathBuf,
    conn: Mutex<Connection>,
    http: reqwest::Client,
    repo_locks: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A string as an id segment: letters, digits, '-' and '_' (ids take nothing else; a '.' in a
/// repository's name once made its workspace id invalid, so its pull requests were never
/// reviewed).
fn valid_id_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A short hash of the repository's exact name: keeps `a.b` and `a-b` apart once both are
/// spelled as ids.
fn repo_hash(owner: &str, repo: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(format!("{owner}/{repo}").as_bytes())[..4])
}

/// The review workspace of a pull request: a valid id (at most 64 characters) for any
/// repository name GitHub allows.
pub fn review_workspace(owner: &str, repo: &str, number: u64) -> String {
    let tail = format!("-{number}-{}", repo_hash(owner, repo));
    let head: String = format!("gh-{}-{}", valid_id_part(owner), valid_id_part(repo))
        .chars()
        .take(64 - tail.len())
        .collect();
    format!("{head}{tail}")
}

impl Webhooks {
    pub fn open(db: &Path, data_dir: &Path, args: GithubArgs) -> anyhow::Result<Arc<Webhooks>> {
        use anyhow::Context;
        let conn = Connection::open(db)
            .with_context(|| format!("opening {} for webhooks", db.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS github_deliveries (
                delivery TEXT PRIMARY KEY,
                event TEXT NOT NULL,
                received_ms INTEGER NOT NULL,
                outcome TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS github_reviews (
                session TEXT PRIMARY KEY,
                delivery TEXT NOT NULL,
                owner TEXT NOT NULL,
                repo TEXT NOT NULL,
                number INTEGER NOT NULL,
                head_sha TEXT NOT NULL,
                started_ms INTEGER NOT NULL,
                posted_ms INTEGER,
                review_id INTEGER,
                error TEXT
            );",
        )
        .context("creating the webhook tables")?;
        Ok(Arc::new(Webhooks {
            args,
            data_dir: data_dir.to_path_buf(),
            conn: Mutex::new(conn),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap_or_default(),
            repo_locks: tokio::sync::Mutex::new(HashMap::new()),
        }))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The webhook secret; an empty one counts as unset (anyone can sign with an empty key).
    fn secret(&self) -> Option<&str> {
        self.args
            .github_webhook_secret
            .as_deref()
            .filter(|s| !s.trim().is_empty())
    }

    /// Records a delivery; false when it was recorded before (a redelivery).
    pub(crate) fn first_delivery(
        &self,
        delivery: &str,
        event: &str,
        outcome: &str,
    ) -> rusqlite::Result<bool> {
        let n = self.conn().execute(
            "INSERT OR IGNORE INTO github_deliveries (delivery, event, received_ms, outcome)
             VALUES (?1, ?2, ?3, ?4)",
            params![delivery, event, now_ms() as i64, outcome],
        )?;
        Ok(n == 1)
    }

    fn set_outcome(&self, delivery: &str, outcome: &str) {
        if let Err(e) = self.conn().execute(
            "UPDATE github_deliveries SET outcome = ?2 WHERE delivery = ?1",
            params![delivery, outcome],
        ) {
            tracing::error!(error = %e, "recording a delivery's outcome failed");
        }
    }

    /// The user review sessions run as, with full scopes (the server acts for them).
    fn reviewer(&self, control: &Control) -> Result<Identity, WebhookError> {
        let user = control
            .user_by_name(&self.args.github_review_user)?
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "review user {:?} does not exist",
                    self.args.github_review_user
                ))
            })?;
        Ok(Identity::acting_for(&user, "github"))
    }

    /// Runs git with the token (if any) as an HTTP header from the environment, never in the
    /// arguments or the URL.
    async fn git(
        &self,
        what: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Result<String, WebhookError> {
        let mut cmd = tokio::process::Command::new("git");
        cmd.args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(token) = self.args.github_token.as_deref().filter(|t| !t.is_empty()) {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            cmd.env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
        }
        let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
            .await
            .map_err(|_| WebhookError::Git {
                what: what.into(),
                detail: "timed out after 600 s".into(),
            })??;
        if !out.status.success() {
            return Err(WebhookError::Git {
                what: what.into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Fetches the PR head and its base into the repository's cache, checks the head out into
    /// `worktree`, and returns (head sha, diff stat, diff).
    async fn fetch_and_checkout(
        &self,
        pr: &PullRequest,
        worktree: &Path,
    ) -> Result<(String, String, String), WebhookError> {
        let key = format!("{}/{}", pr.owner, pr.repo);
        let lock = self.repo_locks.lock().await.entry(key).or_default().clone();
        let _held = lock.lock().await;
        let cache = self
            .data_dir
            .join("github")
            .join(valid_id_part(&pr.owner))
            .join(format!(
                "{}-{}.git",
                valid_id_part(&pr.repo),
                repo_hash(&pr.owner, &pr.repo)
            ));
        let cache_s = cache.to_string_lossy().into_owned();
        if !cache.join("HEAD").exists() {
            std::fs::create_dir_all(&cache)?;
            self.git("init", &["init", "--quiet", "--bare", &cache_s], &[])
                .await?;
        }
        let url = format!(
            "{}/{}/{}.git",
            self.args.github_clone_url.trim_end_matches('/'),
            pr.owner,
            pr.repo
        );
        let n = pr.number;
        let head_ref = format!("+refs/pull/{n}/head:refs/jarvis/pr/{n}");
        let mut refspecs = vec![head_ref];
        if !pr.base_ref.is_empty() {
            refspecs.push(format!("+refs/heads/{}:refs/jarvis/base/{n}", pr.base_ref));
        }
        let mut args = vec!["--git-dir", &cache_s, "fetch", "--quiet", "--no-tags", &url];
        args.extend(refspecs.iter().map(String::as_str));
        self.git("fetch", &args, &[]).await?;
        let pr_ref = format!("refs/jarvis/pr/{n}");
        let head = self
            .git(
                "rev-parse",
                &["--git-dir", &cache_s, "rev-parse", &pr_ref],
                &[],
            )
            .await?
            .trim()
            .to_owned();
        std::fs::create_dir_all(worktree)?;
        let index = cache.join(format!("jarvis-index-{n}"));
        let wt = worktree.to_string_lossy().into_owned();
        // read-tree --reset -u against this PR's own index: files the new head dropped are
        // removed, the rest written; nothing outside the worktree is touched.
        self.git(
            "checkout",
            &[
                "--git-dir",
                &cache_s,
                "--work-tree",
                &wt,
                "read-tree",
                "--reset",
                "-u",
                &head,
            ],
            &[("GIT_INDEX_FILE", &index)],
        )
        .await?;
        let base_ref = format!("refs/jarvis/base/{n}");
        let base = if pr.base_ref.is_empty() {
            format!("{head}~1")
        } else {
            self.git(
                "merge-base",
                &["--git-dir", &cache_s, "merge-base", &base_ref, &head],
                &[],
            )
            .await?
            .trim()
            .to_owned()
        };
        let stat = self
            .git(
                "diff",
                &["--git-dir", &cache_s, "diff", "--stat", &base, &head],
                &[],
            )
            .await?;
        let mut diff = self
            .git("diff", &["--git-dir", &cache_s, "diff", &base, &head], &[])
            .await?;
        const MAX_DIFF: usize = 200_000;
        if diff.len() > MAX_DIFF {
            let mut cut = MAX_DIFF;
            while !diff.is_char_boundary(cut) {
                cut -= 1;
            }
            diff.truncate(cut);
            diff.push_str("\n[diff truncated; read the files in the workspace for the rest]\n");
        }
        Ok((head, stat, diff))
    }

    async fn post_review(
        &self,
        pr: (&str, &str, u64),
        head: &str,
        body: &str,
    ) -> Result<i64, WebhookError> {
        let (owner, repo, number) = pr;
        let url = format!(
            "{}/repos/{owner}/{repo}/pulls/{number}/reviews",
            self.args.github_api_url.trim_end_matches('/')
        );
        let mut req = self
            .http
            .post(url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("user-agent", "my-jarvis")
            .json(&json!({"commit_id": head, "body": body, "event": "COMMENT"}));
        if let Some(t) = self.args.github_token.as_deref().filter(|t| !t.is_empty()) {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| WebhookError::GitHub(e.to_string()))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(WebhookError::GitHub(format!(
                "creating the review answered {status}: {}",
                v["message"].as_str().unwrap_or_default()
            )));
        }
        Ok(v["id"].as_i64().unwrap_or(0))
    }
}

/// GitHub caps payloads at 25 MB.
const MAX_PAYLOAD: usize = 25 * 1024 * 1024;

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/webhooks/github", post(github))
        .with_state(api)
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

async fn github(
    State(api): State<Api>,
    ClientAddr(addr): ClientAddr,
    req: axum::extract::Request,
) -> Response {
    match read_and_handle(&api, &addr, req).await {
        Ok((status, v)) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Everything the headers can refuse is refused before the body is read; the body is read
/// within this address's budget, the size limit and the idle timeout.
async fn read_and_handle(
    api: &Api,
    addr: &str,
    req: axum::extract::Request,
) -> Result<(StatusCode, Value), ApiError> {
    let Some(secret) = api.webhooks.secret() else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "GitHub webhooks are not configured (set JARVIS_GITHUB_WEBHOOK_SECRET)",
        ));
    };
    let limits = crate::limits::of(req.extensions());
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let has = |k: &str| headers.get(k).is_some();
    if !has("x-hub-signature-256") {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "X-Hub-Signature-256 is required",
        ));
    }
    if !has("x-github-event") || !has("x-github-delivery") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "X-GitHub-Event and X-GitHub-Delivery are required",
        ));
    }
    let _slot = api.anonymous.admit(addr)?;
    let body = crate::limits::read_body(headers, body, MAX_PAYLOAD, limits.body_idle).await?;
    handle(api, secret, headers, &body).await
}

async fn handle(
    api: &Api,
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let hooks = &api.webhooks;
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if !signature_valid(secret.as_bytes(), body, header("x-hub-signature-256")) {
        tracing::warn!(delivery = ?header("x-github-delivery"), "GitHub webhook with a missing or wrong signature refused");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "X-Hub-Signature-256 does not match the payload",
        ));
    }
    let (Some(event), Some(delivery)) = (header("x-github-event"), header("x-github-delivery"))
    else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "X-GitHub-Event and X-GitHub-Delivery are required",
        ));
    };
    let payload: Value = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let request = classify(event, &payload, &hooks.args.github_mention);
    let outcome = match &request {
        Request::Review(pr) => format!("review {}/{}#{}", pr.owner, pr.repo, pr.number),
        Request::Ping => "ping".into(),
        Request::Ignore(why) => format!("ignored: {why}"),
    };
    let first = hooks
        .first_delivery(delivery, event, &outcome)
        .map_err(ControlError::Db)?;
    if !first {
        return Ok((
            StatusCode::OK,
            json!({"delivery": delivery, "duplicate": true}),
        ));
    }
    api.control
        .audit(None, "github.delivery", delivery, &outcome);
    match request {
        Request::Ping => Ok((StatusCode::OK, json!({"delivery": delivery, "pong": true}))),
        Request::Ignore(why) => Ok((
            StatusCode::OK,
            json!({"delivery": delivery, "ignored": why}),
        )),
        Request::Review(pr) => {
            let session = format!("github-{}", valid_id_part(delivery));
            let api2 = api.clone();
            let (d, s) = (delivery.to_owned(), session.clone());
            let pr2 = pr.clone();
            // GitHub waits 10 s for an answer; the review runs on.
            tokio::spawn(async move {
                if let Err(e) = review(&api2, &d, &s, &pr2).await {
                    tracing::error!(delivery = %d, error = %e, "PR review failed");
                    api2.webhooks.set_outcome(&d, &format!("failed: {e}"));
                    api2.control
                        .audit(None, "github.review.failed", &s, &e.to_string());
                }
            });
            Ok((
                StatusCode::ACCEPTED,
                json!({"delivery": delivery, "session": session,
                       "review": {"owner": pr.owner, "repo": pr.repo, "number": pr.number}}),
            ))
        }
    }
}

/// Fetches, checks out, starts the review session, and waits to post its answer.
async fn review(
    api: &Api,
    delivery: &str,
    session: &str,
    pr: &PullRequest,
) -> Result<(), WebhookError> {
    let hooks = &api.webhooks;
    let who = hooks.reviewer(&api.control)?;
    let workspace = review_workspace(&pr.owner, &pr.repo, pr.number);
    // Untrusted before a single file of the checkout exists: a pull request's agents, hooks
    // or settings are a stranger's code and never load.
    api.approvals
        .mark_untrusted(&workspace, &format!("review of {}/{}", pr.owner, pr.repo))?;
    api.control.ensure_workspace(
        &who,
        &workspace,
        &format!("{}/{} #{}", pr.owner, pr.repo, pr.number),
    )?;
    let dir = api.cloud.workspace_dir(&workspace);
    let (head, stat, diff) = hooks.fetch_and_checkout(pr, &dir).await?;
    let prompt = format!(
        "Review pull request #{n} \"{title}\" in {owner}/{repo} (head {head}; asked by {trigger}).\n\
         The workspace holds the pull request's head. Changed files:\n{stat}\n\
         The diff against the base:\n```diff\n{diff}```\n\
         Read whatever files you need. Then answer with the review itself, in Markdown: what the \
         change does, bugs and risks with file and line, security concerns, missing tests, and \
         a verdict. Your final answer is posted to GitHub as the review.",
        n = pr.number,
        title = pr.title,
        owner = pr.owner,
        repo = pr.repo,
        trigger = pr.trigger,
    );
    let new = NewSession {
        id: Some(session.to_owned()),
        workspace: workspace.clone(),
        title: format!(
            "Review {}/{}#{}: {}",
            pr.owner, pr.repo, pr.number, pr.title
        ),
        model: hooks.args.github_review_model.clone(),
        message: Some(prompt),
        // Read-only: plan mode, and every tool that is not a read denied outright (deny beats
        // any allow rule). Recorded in the control plane, so the checkout cannot change it.
        permission_mode: Some("plan".into()),
        deny: crate::schedule::unlisted_tools(&["read".into(), "grep".into(), "glob".into()]),
        budget_usd: Some(hooks.args.github_review_budget_usd),
        run: Some("cloud".into()),
        ..Default::default()
    };
    // Recorded before the session starts, so a restart at any point after this finds the
    // review (and the session, once it exists) and posts it once.
    hooks.conn().execute(
        "INSERT OR IGNORE INTO github_reviews
           (session, delivery, owner, repo, number, head_sha, started_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            session,
            delivery,
            pr.owner,
            pr.repo,
            pr.number as i64,
            head,
            now_ms() as i64
        ],
    )?;
    crate::api::start_session(api, &who, new)
        .await
        .map_err(|e| WebhookError::Session(e.message))?;
    hooks.set_outcome(delivery, &format!("reviewing in session {session}"));
    finish_review(api, session).await
}

/// Waits for a review session's answer and posts it once (the row records the posting).
async fn finish_review(api: &Api, session: &str) -> Result<(), WebhookError> {
    let hooks = &api.webhooks;
    let row: Option<(String, String, String, i64, String, Option<i64>)> = hooks
        .conn()
        .query_row(
            "SELECT delivery, owner, repo, number, head_sha, posted_ms FROM github_reviews
             WHERE session = ?1",
            params![session],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()?;
    let Some((delivery, owner, repo, number, head, posted)) = row else {
        return Err(WebhookError::Session(format!(
            "no review for session {session}"
        )));
    };
    if posted.is_some() {
        return Ok(());
    }
    if api.control.session(session)?.is_none() {
        return Err(WebhookError::Session(format!(
            "review session {session} was never started (the server stopped first)"
        )));
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(hooks.args.github_review_timeout_s);
    let text = loop {
        let (status, answer) = api
            .hub
            .read(&format!("session/{session}"), |doc| {
                let s = SessionDoc::new(doc.clone());
                let answer = s
                    .messages()
                    .into_iter()
                    .rev()
                    .find(|m| m.role != Role::System)
                    .filter(|m| m.role == Role::Assistant)
                    .map(|m| {
                        m.blocks
                            .iter()
                            .filter_map(|b| match b {
                                Block::Text { text } => Some(text.as_str()),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                            .join("\n")
                    });
                (s.meta().status, answer)
            })
            .await
            .map_err(|e| WebhookError::Session(e.to_string()))?;
        match (status, answer) {
            (SessionStatus::Done, Some(text)) if !text.trim().is_empty() => break text,
            (SessionStatus::Failed, _) => {
                return Err(WebhookError::Session(format!(
                    "review session {session} failed; see its transcript"
                )));
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(WebhookError::Session(format!(
                "review session {session} did not finish in {} s",
                hooks.args.github_review_timeout_s
            )));
        }
        // The session is driven by the cloud runner; this only watches for its end.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let body = format!("{text}\n\n---\n*Review by My Jarvis (session `{session}`).*");
    let id = hooks
        .post_review((&owner, &repo, number as u64), &head, &body)
        .await?;
    hooks.conn().execute(
        "UPDATE github_reviews SET posted_ms = ?2, review_id = ?3 WHERE session = ?1",
        params![session, now_ms() as i64, id],
    )?;
    hooks.set_outcome(&delivery, &format!("review {id} posted"));
    api.control.audit(
        None,
        "github.review.posted",
        session,
        &format!("{owner}/{repo}#{number}"),
    );
    Ok(())
}

/// After a restart: reviews whose session was started but whose answer was not yet posted are
/// watched again (their sessions resume with the cloud runner's leases).
pub fn resume(api: &Api) {
    let pending: Vec<String> = {
        let conn = api.webhooks.conn();
        let rows = conn
            .prepare("SELECT session FROM github_reviews WHERE posted_ms IS NULL AND error IS NULL")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            });
        match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "listing pending reviews failed");
                return;
            }
        }
    };
    for session in pending {
        let api = api.clone();
        tokio::spawn(async move {
            if let Err(e) = finish_review(&api, &session).await {
                tracing::error!(%session, error = %e, "resumed PR review failed");
                let _ = api.webhooks.conn().execute(
                    "UPDATE github_reviews SET error = ?2 WHERE session = ?1",
                    params![session, e.to_string()],
                );
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sign(secret: &str, body: &[u8]) -> String {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn signatures_verify_only_for_the_exact_body_and_secret() {
        // The example from GitHub's "Validating webhook deliveries" documentation.
        assert!(signature_valid(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17")
        ));
        let body = br#"{"action":"opened"}"#;
        let good = sign("s3cret", body);
        assert!(signature_valid(b"s3cret", body, Some(&good)));
        assert!(!signature_valid(b"other", body, Some(&good)));
        assert!(!signature_valid(
            b"s3cret",
            br#"{"action":"closed"}"#,
            Some(&good)
        ));
        for bad in [
            None,
            Some(""),
            Some("sha1=abc"),
            Some("sha256=zz"),
            Some("sha256=abcd"),
        ] {
            assert!(!signature_valid(b"s3cret", body, bad), "{bad:?}");
        }
    }

    fn args(secret: Option<&str>) -> GithubArgs {
        GithubArgs {
            github_webhook_secret: secret.map(str::to_owned),
            github_token: None,
            github_api_url: String::new(),
            github_clone_url: String::new(),
            github_mention: "@jarvis".into(),
            github_review_user: "admin".into(),
            github_review_model: None,
            github_review_budget_usd: 1.0,
            github_review_timeout_s: 60,
        }
    }

    #[test]
    fn an_empty_secret_counts_as_unset() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        for (secret, on) in [
            (None, false),
            (Some(""), false),
            (Some("  "), false),
            (Some("s"), true),
        ] {
            let w = Webhooks::open(&db, dir.path(), args(secret)).unwrap();
            assert_eq!(w.secret().is_some(), on, "{secret:?}");
        }
    }

    #[test]
    fn every_repository_name_makes_a_valid_review_workspace() {
        for (owner, repo) in [
            ("Codertocat", "Hello-World"),
            ("octo", "app.js"),
            ("octo", "app-js"),
            ("o", ".github"),
            ("o", &"x".repeat(100)),
        ] {
            let w = review_workspace(owner, repo, 12345);
            assert!(crate::control::valid_id(&w), "{owner}/{repo}: {w}");
        }
        // '.' and '-' spell the same id segment; the hash keeps the workspaces apart.
        assert_ne!(
            review_workspace("octo", "app.js", 1),
            review_workspace("octo", "app-js", 1)
        );
    }
}
