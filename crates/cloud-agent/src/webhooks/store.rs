//! The GitHub integration's state: configuration, the deliveries and reviews tables (the hub's
//! database, its own connection), repository caches, and posting a review.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use crate::control::{Control, ControlError, Identity, now_ms};
use crate::webhooks::config::{GithubArgs, WebhookError};
use crate::webhooks::events::{PullRequest, repo_hash, valid_id_part};

/// The GitHub integration's state: configuration, the deliveries and reviews tables (the hub's
/// database, its own connection) and one lock per repository cache.
pub struct Webhooks {
    pub(crate) args: GithubArgs,
    data_dir: PathBuf,
    conn: Mutex<Connection>,
    http: reqwest::Client,
    repo_locks: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Webhooks {
    pub fn open(db: &Path, data_dir: &Path, args: GithubArgs) -> anyhow::Result<Arc<Webhooks>> {
        use anyhow::Context;
        let mut conn = Connection::open(db)
            .with_context(|| format!("opening {} for webhooks", db.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The tables are the hub database's migrations (`jarvis_control::schema`, the one place
        // its schema is written); applied here too so this store opens on its own (tests).
        jarvis_control::schema::migrate(&mut conn).context("migrating the hub database")?;
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

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The webhook secret; an empty one counts as unset (anyone can sign with an empty key).
    pub(crate) fn secret(&self) -> Option<&str> {
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

    pub(crate) fn set_outcome(&self, delivery: &str, outcome: &str) {
        if let Err(e) = self.conn().execute(
            "UPDATE github_deliveries SET outcome = ?2 WHERE delivery = ?1",
            params![delivery, outcome],
        ) {
            tracing::error!(error = %e, "recording a delivery's outcome failed");
        }
    }

    /// The user review sessions run as, with full scopes (the server acts for them).
    pub(crate) fn reviewer(&self, control: &Control) -> Result<Identity, WebhookError> {
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
    pub(crate) async fn git(
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
    pub(crate) async fn fetch_and_checkout(
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

    pub(crate) async fn post_review(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(crate) fn args(secret: Option<&str>) -> GithubArgs {
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
    pub(crate) fn an_empty_secret_counts_as_unset() {
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
}
