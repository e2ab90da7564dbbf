//! Sessions run by this device: started here, Continue in cloud, Continue here, messages and
//! approvals from the window, with the hub or without. Holding a session and running it is
//! `jarvis_device` (the same code as `jarvis run` and the cloud runner); this file decides
//! where a session runs and tells the window what happened.

use std::path::PathBuf;
use std::sync::Arc;

use jarvis_agent::runner::{Outcome, RunEvent, Runner};
use jarvis_device::handoff::request_handoff;
use jarvis_device::{
    Device, Lease, RunOptions, RunOverrides, new_session_id, prepare, run_offline,
};
use jarvis_sync::client::ConnectionStatus;
use jarvis_sync::doc::Decision;
use jarvis_sync::mirror::FileMirror;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{CoreError, CoreEvent, CoreResult, DesktopCore, Run};

impl DesktopCore {
    /// Starts a session on this device in an opened folder. Signed in and online, it is
    /// registered with the hub and runs under this device's lease (so it can be handed to the
    /// cloud); otherwise it runs locally and its documents wait in the store until the hub is
    /// reachable.
    pub async fn start_session(
        self: &Arc<Self>,
        workspace: &str,
        prompt: &str,
        permission_mode: Option<String>,
    ) -> CoreResult<String> {
        if prompt.trim().is_empty() {
            return Err(CoreError::Invalid("say what the session should do".into()));
        }
        let session = new_session_id();
        self.launch(
            &session,
            workspace,
            prompt,
            permission_mode,
            prompt.chars().take(80).collect(),
            None,
        )
        .await?;
        Ok(session)
    }

    async fn launch(
        self: &Arc<Self>,
        session: &str,
        workspace: &str,
        prompt: &str,
        permission_mode: Option<String>,
        title: String,
        granted: Option<Lease>,
    ) -> CoreResult<()> {
        let provider = self.provider()?;
        let (dir, mirror, device, client) = {
            let inner = self.inner.lock().await;
            if inner.runs.contains_key(session) {
                return Err(CoreError::Invalid(format!(
                    "session {session} already runs here"
                )));
            }
            let f = inner
                .folders
                .get(workspace)
                .ok_or_else(|| CoreError::NoFolder(workspace.to_owned()))?;
            // Under the hub's lease only while it answers: a session started offline runs on
            // the device's own copy and is registered when the hub is back.
            let online = *inner.client.connection().borrow() == ConnectionStatus::Connected;
            let device = inner.device.clone().filter(|_| online || granted.is_some());
            (
                f.path.clone(),
                f.mirror.clone(),
                device,
                inner.client.clone(),
            )
        };
        if device.is_none() {
            self.remember_unregistered(session, workspace, &title)
                .await?;
        }
        let cancel = CancellationToken::new();
        // Reserved before anything awaits, so two calls cannot both start the session here.
        self.inner.lock().await.runs.insert(
            session.to_owned(),
            Run {
                workspace: workspace.to_owned(),
                title: title.clone(),
                cancel: cancel.clone(),
            },
        );
        self.emit_status().await;
        let model = self.config.model.clone();
        let overrides = RunOverrides {
            permission_mode,
            ..RunOverrides::default()
        };
        // Online, the session is held before this returns: a lease held elsewhere is this
        // call's error (code `conflict`), not a notice after the fact. The run's settings are
        // the session's own, read from the hub (the same for a new session and Continue here).
        let prepared = match &device {
            Some(device) => {
                let opts = RunOptions {
                    prompt: prompt.to_owned(),
                    dir: dir.clone(),
                    workspace: Some(workspace.to_owned()),
                    session: Some(session.to_owned()),
                    model: model.clone(),
                    overrides: overrides.clone(),
                    mirror,
                };
                match prepare(device, opts, granted).await {
                    Ok(p) => Some(p),
                    Err(e) => {
                        self.inner.lock().await.runs.remove(session);
                        self.emit_status().await;
                        return Err(e.into());
                    }
                }
            }
            None => None,
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RunEvent>();
        let events = self.events.clone();
        let s = session.to_owned();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                events.emit(CoreEvent::Run {
                    session: s.clone(),
                    event: run_event_json(&e),
                });
            }
        });
        let core = self.clone();
        let session = session.to_owned();
        let workspace = workspace.to_owned();
        let prompt = prompt.to_owned();
        let me = self.local_id().await;
        tokio::spawn(async move {
            let result = match prepared {
                Some(p) => p.run(provider.as_ref(), Some(tx), cancel).await,
                None => {
                    run_offline(
                        &client,
                        provider.as_ref(),
                        &me,
                        &session,
                        &workspace,
                        &dir,
                        &prompt,
                        &model,
                        &overrides,
                        Some(tx),
                        &cancel,
                    )
                    .await
                }
            };
            let (title, body) = match &result {
                Ok(report) => ("Session ended".to_owned(), ended(report)),
                Err(e) => ("Session failed".to_owned(), e.to_string()),
            };
            tracing::info!(%session, %body, "local run ended");
            // A run that ended here said so itself: the session's next rest is not news. One
            // handed elsewhere goes on there, and its ending is.
            let handed = matches!(&result, Ok(r) if r.handed_to.is_some());
            if !handed {
                core.quiet
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(session.clone());
            }
            core.inner.lock().await.runs.remove(&session);
            core.events.emit(CoreEvent::Attention {
                session: session.clone(),
                title,
                body,
            });
            core.emit_status().await;
        });
        Ok(())
    }

    /// Continue in cloud: the hub asks this device's runner (or whichever holds the session)
    /// to yield; a session resting here is flushed and moved at once.
    pub async fn continue_in_cloud(&self, session: &str) -> CoreResult<Value> {
        let (device, dir, mirror) = self.session_context(session).await?;
        let running_here = self.inner.lock().await.runs.contains_key(session);
        let granted = if running_here {
            // The runner sees the request in the session document, stops at a safe point,
            // flushes and releases to the cloud itself.
            request_handoff(&device, session, "cloud", None).await?
        } else {
            if let Some(m) = &mirror {
                m.rescan().await;
                m.settle(false).await;
            }
            request_handoff(&device, session, "cloud", dir.as_deref()).await?
        };
        Ok(match granted {
            Some(l) => json!({"state": "granted", "device": l.device, "epoch": l.epoch}),
            None => json!({"state": "pending"}),
        })
    }

    /// Continue here: the cloud (or another device) yields, and the session continues in this
    /// device's folder under a lease granted to this device.
    pub async fn continue_here(self: &Arc<Self>, session: &str) -> CoreResult<Value> {
        let (device, dir, _) = self.session_context(session).await?;
        let info = device.api.get(&format!("/api/sessions/{session}")).await?;
        let workspace = info["workspace"].as_str().unwrap_or_default().to_owned();
        if dir.is_none() {
            return Err(CoreError::NoFolder(workspace));
        }
        let Some(lease) = request_handoff(&device, session, "here", None).await? else {
            return Ok(json!({"state": "pending"}));
        };
        let title = info["title"].as_str().unwrap_or(session).to_owned();
        let epoch = lease.epoch;
        self.launch(session, &workspace, "", None, title, Some(lease))
            .await?;
        Ok(json!({"state": "granted", "epoch": epoch}))
    }

    /// A message from the window. A session that rests (no live runner) and whose folder is
    /// open here runs the turn on this device, under a lease it takes; anything else (a run
    /// here picks it up from the document, the cloud or another device runs it) goes through
    /// the hub, which starts the cloud for a session nobody runs whose folder is not here.
    pub async fn send_message(self: &Arc<Self>, session: &str, text: &str) -> CoreResult<Value> {
        if text.trim().is_empty() {
            return Err(CoreError::Invalid("the message is empty".into()));
        }
        if !self.online().await {
            return self.send_offline(session, text).await;
        }
        let (device, dir, _) = self.session_context(session).await?;
        let running_here = self.inner.lock().await.runs.contains_key(session);
        let info = device.api.get(&format!("/api/sessions/{session}")).await?;
        let resting = info["where"].as_str() == Some("nowhere");
        if !running_here && resting && dir.is_some() {
            let workspace = info["workspace"].as_str().unwrap_or_default().to_owned();
            let title = info["title"].as_str().unwrap_or(session).to_owned();
            self.launch(session, &workspace, text, None, title, None)
                .await?;
            return Ok(json!({"runner": device.id}));
        }
        Ok(device
            .api
            .post(
                &format!("/api/sessions/{session}/messages"),
                json!({"text": text}),
            )
            .await?)
    }

    /// Who this device is in documents written without the hub: its id at the hub once known.
    async fn local_id(&self) -> String {
        let inner = self.inner.lock().await;
        inner
            .settings
            .device
            .clone()
            .unwrap_or_else(|| "desktop".into())
    }

    /// Whether the hub answers right now (connected, and this device known to it).
    async fn online(&self) -> bool {
        let inner = self.inner.lock().await;
        inner.device.is_some() && *inner.client.connection().borrow() == ConnectionStatus::Connected
    }

    /// A message with no hub: into the device's own copy of a session run here, or a new
    /// local turn of a resting session whose folder is open here.
    async fn send_offline(self: &Arc<Self>, session: &str, text: &str) -> CoreResult<Value> {
        let doc = self.session_doc(session).await?;
        let (running_here, author, has_folder) = {
            let inner = self.inner.lock().await;
            let workspace = doc.meta().workspace;
            (
                inner.runs.contains_key(session),
                inner
                    .settings
                    .device
                    .clone()
                    .unwrap_or_else(|| "desktop".into()),
                inner.folders.contains_key(&workspace),
            )
        };
        if running_here {
            let id = Runner::send_user_message(&doc, &author, text);
            return Ok(json!({"message": id}));
        }
        if !has_folder {
            return Err(CoreError::Offline);
        }
        let meta = doc.meta();
        self.launch(session, &meta.workspace, text, None, meta.title, None)
            .await?;
        Ok(json!({"runner": author}))
    }

    /// An approval from the window. With the hub, the hub records it (and checks who may);
    /// without, a session running here takes it in the device's own copy, which syncs later.
    pub async fn answer(&self, session: &str, approval: &str, decision: &str) -> CoreResult<Value> {
        let Some(d) = Decision::parse(decision) else {
            return Err(CoreError::Invalid(
                "decision must be allow, deny or always_allow".into(),
            ));
        };
        if self.online().await {
            return self
                .hub_api(
                    "POST",
                    &format!("/api/sessions/{session}/approvals/{approval}"),
                    Some(json!({"decision": decision})),
                )
                .await;
        }
        let (running_here, by) = {
            let inner = self.inner.lock().await;
            (
                inner.runs.contains_key(session),
                inner
                    .settings
                    .device
                    .clone()
                    .unwrap_or_else(|| "desktop".into()),
            )
        };
        if !running_here {
            return Err(CoreError::Offline);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.session_doc(session)
            .await?
            .answer_approval(approval, d, &by, now)
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        Ok(json!({}))
    }

    /// Stops a run on this device now (a streaming reply keeps what arrived).
    pub async fn stop(&self, session: &str) -> CoreResult<()> {
        match self.inner.lock().await.runs.get(session) {
            Some(r) => {
                r.cancel.cancel();
                Ok(())
            }
            None => Err(CoreError::Invalid(format!(
                "session {session} is not running on this device"
            ))),
        }
    }

    async fn session_context(
        &self,
        session: &str,
    ) -> CoreResult<(Arc<Device>, Option<PathBuf>, Option<Arc<FileMirror>>)> {
        let inner = self.inner.lock().await;
        if inner.settings.hub.is_none() {
            return Err(CoreError::NotSignedIn);
        }
        let device = inner.device.clone().ok_or(CoreError::Offline)?;
        drop(inner);
        let info = device.api.get(&format!("/api/sessions/{session}")).await?;
        let workspace = info["workspace"].as_str().unwrap_or_default();
        let inner = self.inner.lock().await;
        let folder = inner.folders.get(workspace);
        Ok((
            device,
            folder.map(|f| f.path.clone()),
            folder.and_then(|f| f.mirror.clone()),
        ))
    }
}

fn run_event_json(e: &RunEvent) -> Value {
    match e {
        RunEvent::Text(t) => json!({"kind": "text", "text": t}),
        RunEvent::ToolUse { id, name, input } => {
            json!({"kind": "tool_use", "id": id, "name": name, "input": input})
        }
        other => json!({"kind": "other", "debug": format!("{other:?}")}),
    }
}

/// What the notice says when a run here ends.
fn ended(report: &jarvis_device::RunReport) -> String {
    if let Some(to) = &report.handed_to {
        return format!("continued on {to}");
    }
    match &report.outcome {
        Outcome::EndTurn => "done".into(),
        Outcome::Interrupted => "interrupted".into(),
        Outcome::ApprovalPending { .. } => "waiting for your approval".into(),
        Outcome::BudgetExhausted => "stopped: the session's budget is spent".into(),
        Outcome::RequestLimit => "stopped: the session's request limit is reached".into(),
        Outcome::Failed(why) => format!("failed: {why}"),
        Outcome::Yielded => "handed over".into(),
        Outcome::LeaseLost => "stopped: another device took the session".into(),
    }
}
