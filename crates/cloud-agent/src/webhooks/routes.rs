//! `POST /webhooks/github`: refuse what the headers can refuse, read within the budgets, record
//! the delivery once, and start (or resume) a pull request's review.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jarvis_sync::doc::{Block, Role, SessionDoc, SessionStatus};
use jarvis_wire::api::NewSession;
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};

use crate::control::{ControlError, now_ms};
use crate::http::{ApiError, ErrorCode};
use crate::limits::ClientAddr;
use crate::webhooks::config::WebhookError;
use crate::webhooks::events::{
    PullRequest, Request, classify, review_workspace, signature_valid, valid_id_part,
};
use crate::webhooks::state::GithubApi;

/// GitHub caps payloads at 25 MB.
pub const MAX_PAYLOAD: usize = 25 * 1024 * 1024;

pub fn router(api: GithubApi) -> Router {
    Router::new()
        .route("/webhooks/github", post(github))
        .with_state(api)
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

async fn github(
    State(api): State<GithubApi>,
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
    api: &GithubApi,
    addr: &str,
    req: axum::extract::Request,
) -> Result<(StatusCode, Value), ApiError> {
    let Some(secret) = api.webhooks.secret() else {
        return Err(refuse(
            ErrorCode::NotFound,
            "GitHub webhooks are not configured (set JARVIS_GITHUB_WEBHOOK_SECRET)",
        ));
    };
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let has = |k: &str| headers.get(k).is_some();
    if !has("x-hub-signature-256") {
        return Err(refuse(
            ErrorCode::Unauthorized,
            "X-Hub-Signature-256 is required",
        ));
    }
    if !has("x-github-event") || !has("x-github-delivery") {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "X-GitHub-Event and X-GitHub-Delivery are required",
        ));
    }
    let _slot = api.anonymous.admit(addr)?;
    let body = crate::limits::read_body(headers, body, MAX_PAYLOAD).await?;
    handle(api, secret, headers, &body).await
}

async fn handle(
    api: &GithubApi,
    secret: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let hooks = &api.webhooks;
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    if !signature_valid(secret.as_bytes(), body, header("x-hub-signature-256")) {
        tracing::warn!(delivery = ?header("x-github-delivery"), "GitHub webhook with a missing or wrong signature refused");
        return Err(refuse(
            ErrorCode::Unauthorized,
            "X-Hub-Signature-256 does not match the payload",
        ));
    }
    let (Some(event), Some(delivery)) = (header("x-github-event"), header("x-github-delivery"))
    else {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "X-GitHub-Event and X-GitHub-Delivery are required",
        ));
    };
    let payload: Value = serde_json::from_slice(body).map_err(|e| {
        refuse(
            ErrorCode::InvalidRequest,
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
    api: &GithubApi,
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
        deny: crate::schedule::scheduler::unlisted_tools(&[
            "read".into(),
            "grep".into(),
            "glob".into(),
        ]),
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
    api.sessions
        .start(&who, new)
        .await
        .map_err(|e| WebhookError::Session(e.message))?;
    hooks.set_outcome(delivery, &format!("reviewing in session {session}"));
    finish_review(api, session).await
}

/// Waits for a review session's answer and posts it once (the row records the posting).
async fn finish_review(api: &GithubApi, session: &str) -> Result<(), WebhookError> {
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
pub fn resume(api: &GithubApi) {
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
