//! The commands of a device logged in to a hub: `jarvis run` under the hub's lease, `jarvis
//! handoff` (Continue in cloud / Continue here), `jarvis attach`, `jarvis sessions` and
//! remote approvals. What a device does is `jarvis_device`; this file parses, calls it, and
//! prints.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use jarvis_agent::providers::ProviderConfig;
use jarvis_agent::runner::Outcome;
use jarvis_device::attach::{AttachOptions, attach as follow};
use jarvis_device::handoff::request_handoff;
use jarvis_device::{Api, Device, Lease, RunOptions, RunOverrides, new_session_id, run_here};
use jarvis_sync::doc::Decision;
use jarvis_sync::store::Store;
use jarvis_wire::ErrorCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::OutputFormat;
use crate::login::Login;
use crate::print::{attach_event, outcome_name, printer};

/// A token cancelled by Ctrl-C.
fn ctrl_c() -> CancellationToken {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    cancel
}

/// `jarvis run` when logged in: the session runs here under a lease, synced through the hub.
pub async fn run(
    login: Login,
    store: Arc<dyn Store>,
    provider: &dyn jarvis_agent::anthropic::Provider,
    opts: RunOptions,
    granted: Option<Lease>,
    format: OutputFormat,
) -> Result<()> {
    let device = Device::connect(&login.hub, &login.token, store)
        .await
        .with_context(|| format!("connecting to {}", login.hub))?;
    let session = opts.session.clone().unwrap_or_else(new_session_id);
    let opts = RunOptions {
        session: Some(session.clone()),
        ..opts
    };
    let (tx, task) = printer(format, session.clone());
    let report = run_here(&device, provider, opts, granted, Some(tx), ctrl_c()).await;
    if let Err(e) = task.await {
        tracing::warn!(error = %e, "the printer stopped");
    }
    let report = match report {
        Ok(r) => r,
        // Held elsewhere: say how to take it (the window offers a button instead).
        Err(e) if e.is_conflict() => bail!(
            "{}: run `jarvis handoff {session} --to here --dir <folder>` to take it",
            e.message()
        ),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("running session {session}"))),
    };
    if let Some(w) = &report.git_warning {
        eprintln!("warning: {w}");
    }
    let doc = device.session(&report.session).await?;
    let usage = doc.meta().usage;
    let name = outcome_name(&report.outcome);
    match format {
        OutputFormat::StreamJson => println!(
            "{}",
            json!({"type": "result", "session": report.session, "outcome": name,
                   "handed_to": report.handed_to, "usage": usage,
                   "cost_usd": usage.cost_micros as f64 / 1e6})
        ),
        OutputFormat::Text => {
            println!();
            match &report.handed_to {
                Some(to) => eprintln!("session {}: continued on {to}", report.session),
                None => eprintln!("session {}: {name}", report.session),
            }
        }
    }
    match report.outcome {
        Outcome::EndTurn | Outcome::Yielded => Ok(()),
        Outcome::Failed(reason) => bail!("the session failed: {reason}"),
        other => bail!("the session stopped: {}", outcome_name(&other)),
    }
}

/// `jarvis handoff <session> --to cloud|here|<device>`.
#[allow(clippy::too_many_arguments)]
pub async fn handoff(
    login: Login,
    store: Arc<dyn Store>,
    session: &str,
    to: &str,
    dir: Option<PathBuf>,
    format: OutputFormat,
    model: String,
    permission_mode: Option<String>,
) -> Result<()> {
    if to == "here" && dir.is_none() {
        bail!("--to here needs --dir <folder>: where this device keeps the workspace");
    }
    let device = Device::connect(&login.hub, &login.token, store.clone()).await?;
    let granted = request_handoff(&device, session, to, dir.as_deref())
        .await
        .with_context(|| format!("handing session {session} to {to}"))?;
    let Some(lease) = granted else {
        bail!("the handoff is still pending: the current runner has not yielded yet");
    };
    if to != "here" {
        println!(
            "session {session} now runs on {}",
            lease.device.as_deref().unwrap_or("?")
        );
        return Ok(());
    }
    eprintln!(
        "session {session} is on this device now (epoch {})",
        lease.epoch
    );
    // The cloud's commits come back on the agent's branch (never onto the user's own).
    if let Some(d) = dir.as_deref() {
        match device.api.receive_git_state(session, d).await {
            Ok(Some(b)) => eprintln!(
                "the cloud's commits are on branch {} (at {}){}",
                b.branch,
                &b.head[..b.head.len().min(10)],
                b.note.map(|n| format!("; note: {n}")).unwrap_or_default()
            ),
            Ok(None) => {}
            Err(e) => eprintln!("warning: the cloud's commits did not come back: {e}"),
        }
    }
    drop(device);
    // Continue here: run whatever the session was in the middle of, in the folder, with the
    // session's own run settings (read from the hub by the device).
    let env: HashMap<String, String> = std::env::vars().collect();
    let provider = ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))?.build()?;
    run(
        login,
        store,
        provider.as_ref(),
        RunOptions {
            prompt: String::new(),
            dir: dir.unwrap_or_default(),
            workspace: None,
            session: Some(session.to_owned()),
            model,
            overrides: RunOverrides {
                permission_mode,
                ..RunOverrides::default()
            },
            mirror: None,
        },
        Some(lease),
        format,
    )
    .await
}

/// `jarvis attach`: follows a session live, wherever it runs.
pub async fn attach(
    login: Login,
    store: Arc<dyn Store>,
    session: &str,
    format: OutputFormat,
    until_done: bool,
    approve: Option<Decision>,
) -> Result<()> {
    let device = Device::connect(&login.hub, &login.token, store).await?;
    let mut failed: Option<std::io::Error> = None;
    let cancel = ctrl_c();
    let stop = cancel.clone();
    follow(
        &device,
        session,
        AttachOptions {
            until_done,
            approve,
        },
        cancel,
        |e| {
            if failed.is_none()
                && let Err(err) = attach_event(&mut std::io::stdout().lock(), &e, format, session)
            {
                // stdout is gone (a closed pipe): nobody is following any more.
                failed = Some(err);
                stop.cancel();
            }
        },
    )
    .await?;
    match failed {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `jarvis sessions`.
pub async fn sessions(login: Login, as_json: bool) -> Result<()> {
    let api = Api::new(&login.hub, &login.token);
    let v = api.get("/api/sessions").await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<18} {:<18} {:<16} {:<8} TITLE",
        "SESSION", "STATUS", "WORKSPACE", "WHERE"
    );
    for s in v["sessions"].as_array().into_iter().flatten() {
        println!(
            "{:<18} {:<18} {:<16} {:<8} {}",
            s["id"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            s["workspace"].as_str().unwrap_or(""),
            s["where"].as_str().unwrap_or(""),
            s["title"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Answers an approval at the hub. `Ok(false)`: the hub does not know the session (it is a
/// local one).
pub async fn approve(
    login: &Login,
    session: &str,
    approval: &str,
    decision: Decision,
    prefix: bool,
) -> Result<bool> {
    let api = Api::new(&login.hub, &login.token);
    match api
        .post(
            &format!("/api/sessions/{session}/approvals/{approval}"),
            json!({"decision": decision.as_str(), "prefix": prefix}),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
