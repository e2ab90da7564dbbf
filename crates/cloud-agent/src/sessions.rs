//! The sessions service: creating (or reopening) a session with its run settings and first
//! message, and reading a session's summary. `POST /api/sessions`, GitHub review webhooks and
//! background agents all start sessions through [`Sessions::start`], so a session is the same
//! whoever started it.
//!
//! Never: speak HTTP beyond returning an [`ApiError`] (the routes are `crate::api::sessions`).

use std::sync::Arc;
use std::time::Duration;

use jarvis_agent::permissions::{Mode, Rule};
use jarvis_agent::runner::Runner as AgentRunner;
use jarvis_sync::doc::SessionDoc;
use jarvis_sync::hub::Hub;
use jarvis_wire::api::{NewSession, RunsWhere, SessionSummary, Usage};

use crate::control::{
    CLOUD_DEVICE, Control, HandoffState, Identity, Lease, RunSettings, SessionRow, now_ms,
};
use crate::http::error::ApiError;
use crate::runner::Cloud;

pub struct Sessions {
    pub control: Arc<Control>,
    pub hub: Hub,
    pub cloud: Arc<Cloud>,
}

/// A permission mode a request names, or `invalid_request` listing the ones there are.
pub fn check_mode(mode: Option<&str>) -> Result<(), ApiError> {
    match mode {
        Some(m) if Mode::parse(m).is_none() => Err(ApiError::invalid(format!(
            "unknown permission mode {m:?}: ask, accept-edits, plan or allow-all"
        ))),
        _ => Ok(()),
    }
}

impl Sessions {
    /// Creates (or reopens) a session as `who`, with its settings and first message, and hands
    /// it to the cloud runner when `run` is "cloud". Returns the registry row and, when handed
    /// to the cloud, the handoff's state.
    pub async fn start(
        &self,
        who: &Identity,
        b: NewSession,
    ) -> Result<(SessionRow, Option<HandoffState>), ApiError> {
        check_mode(b.permission_mode.as_deref())?;
        for r in b.allow.iter().chain(&b.deny) {
            Rule::parse(r).map_err(|e| ApiError::invalid(e.to_string()))?;
        }
        if let Some(run) = &b.run
            && run != "cloud"
        {
            return Err(ApiError::invalid(
                "run must be \"cloud\" (devices start their own runs)",
            ));
        }
        let id =
            b.id.clone()
                .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let title = if b.title.is_empty() {
            b.message
                .as_deref()
                .unwrap_or("New session")
                .chars()
                .take(80)
                .collect()
        } else {
            b.title.clone()
        };
        let row = self
            .control
            .register_session(who, &id, &b.workspace, &title)?;
        let settings = RunSettings {
            permission_mode: b.permission_mode.clone(),
            allow: b.allow.clone(),
            deny: b.deny.clone(),
            budget_micros: b.budget_usd.map(|usd| (usd.max(0.0) * 1e6) as u64),
            model: b.model.clone(),
        };
        // The hub's copy is the one runners use; it is written once, when the session is new.
        let fresh = self.control.init_run_settings(&id, &settings)?;
        if !fresh {
            // Starting an existing session again (a device reopening it) keeps its settings;
            // what this request asked for is ignored, and the log says so.
            let stored = self.control.run_settings(&id)?.unwrap_or_default();
            let asked = b.permission_mode.is_some()
                || !b.allow.is_empty()
                || !b.deny.is_empty()
                || b.budget_usd.is_some()
                || b.model.is_some();
            if asked && stored != settings {
                tracing::info!(session = %id, "an existing session's run settings are kept; the request's are ignored");
            }
        }
        let author = who.device_id();
        self.hub
            .edit(&format!("session/{id}"), |doc| {
                let s = SessionDoc::new(doc.clone());
                if s.meta().workspace.is_empty() {
                    s.set_workspace(&b.workspace);
                    s.set_title(&title);
                }
                if fresh {
                    // For display only: no runner reads these from the document.
                    if let Some(m) = &settings.model {
                        s.set_model(m);
                    }
                    if let Some(m) = &settings.permission_mode {
                        s.set_setting("permission_mode", m);
                    }
                    if !settings.allow.is_empty() {
                        s.set_setting("allow", &settings.allow.join("\n"));
                    }
                    if !settings.deny.is_empty() {
                        s.set_setting("deny", &settings.deny.join("\n"));
                    }
                    if let Some(b) = settings.budget_micros {
                        s.set_setting("budget_micros", &b.to_string());
                    }
                }
                if let Some(text) = &b.message {
                    AgentRunner::send_user_message(&s, &author, text);
                }
            })
            .await?;
        self.control
            .audit(Some(who), "session.create", &id, &row.workspace);
        let mut state = None;
        if b.run.is_some() {
            state = Some(
                self.cloud
                    .request_handoff(who, &id, CLOUD_DEVICE, vec![], Duration::ZERO)
                    .await?,
            );
        }
        Ok((row, state))
    }

    /// A registered session's summary as lists show it (the caller has been checked).
    pub async fn summary(&self, row: &SessionRow) -> Result<SessionSummary, ApiError> {
        let (meta, pending) = self
            .hub
            .read(&format!("session/{}", row.id), |doc| {
                let s = SessionDoc::new(doc.clone());
                (s.meta(), s.pending_approvals().len())
            })
            .await?;
        let lease = self.control.lease(&row.id)?;
        Ok(summary(row, &meta, pending, &lease))
    }
}

/// Copies the document's usage into the wire's.
pub fn wire_usage(u: &jarvis_sync::doc::Usage) -> Usage {
    Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_read_tokens: u.cache_read_tokens,
        cache_write_tokens: u.cache_write_tokens,
        cost_micros: u.cost_micros,
    }
}

/// A session's summary from its registry row, its document's metadata and its lease.
pub fn summary(
    row: &SessionRow,
    meta: &jarvis_sync::doc::SessionMeta,
    pending: usize,
    lease: &Lease,
) -> SessionSummary {
    let runner = lease.device.clone().filter(|_| lease.live(now_ms()));
    let runs_where = match runner.as_deref() {
        Some(CLOUD_DEVICE) => RunsWhere::Cloud,
        Some(_) => RunsWhere::Device,
        None => RunsWhere::Nowhere,
    };
    SessionSummary {
        id: row.id.clone(),
        workspace: row.workspace.clone(),
        owner: row.owner.clone(),
        title: if meta.title.is_empty() {
            row.title.clone()
        } else {
            meta.title.clone()
        },
        model: meta.model.clone(),
        status: meta.status.as_str().to_owned(),
        pending_approvals: pending,
        runner,
        runs_where,
        lease_epoch: lease.epoch,
        handoff_to: lease.pending_to.clone(),
        usage: wire_usage(&meta.usage),
        created_ms: row.created_ms,
    }
}
