//! `jarvis sync` (a folder mirrored as a workspace through the hub, until interrupted) and
//! `jarvis status`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use jarvis_device::Api;
use jarvis_sync::store::Store;
use jarvis_wire::ErrorCode;

use crate::login::{Login, read_login};

pub async fn sync(
    home: &Path,
    store: Arc<dyn Store>,
    dir: &Path,
    workspace: Option<String>,
) -> Result<()> {
    let login = read_login(home)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("folder {} is not accessible", dir.display()))?;
    let workspace = workspace.unwrap_or_else(|| jarvis_device::workspace_id(&dir));
    if !register_workspace(&login, &workspace).await? {
        // Offline at start: the folder syncs from the device's store meanwhile, and the
        // workspace is registered as soon as the hub answers.
        let (login, workspace) = (
            Login {
                hub: login.hub.clone(),
                token: login.token.clone(),
            },
            workspace.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                match register_workspace(&login, &workspace).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        eprintln!("{e:#}");
                        break;
                    }
                }
            }
        });
    }
    let client = Arc::new(jarvis_sync::client::SyncClient::start(
        jarvis_sync::client::ClientConfig::new(jarvis_device::ws_url(&login.hub), login.token),
        store,
    ));
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("importing {pos}/{len} files {wide_bar} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let b2 = bar.clone();
    let mirror = jarvis_sync::mirror::FileMirror::start(
        &dir,
        &workspace,
        client.clone(),
        Some(Box::new(move |done, total| {
            b2.set_length(total as u64);
            b2.set_position(done as u64);
        })),
    )
    .await
    .with_context(|| format!("mirroring {}", dir.display()))?;
    bar.finish_and_clear();
    println!(
        "syncing {} as workspace {workspace} with {} (Ctrl-C to stop)",
        dir.display(),
        login.hub
    );
    println!(
        "open it in a browser: {}/ (Files, workspace {workspace})",
        login.hub
    );
    let line = indicatif::ProgressBar::new_spinner();
    let mut conn = client.connection();
    let mut last_waiting = Vec::new();
    loop {
        let files = mirror.index().list().len();
        let state = match &*conn.borrow() {
            jarvis_sync::client::ConnectionStatus::Connected => "connected".to_owned(),
            jarvis_sync::client::ConnectionStatus::Connecting => "connecting".to_owned(),
            jarvis_sync::client::ConnectionStatus::Offline { reason } => {
                format!("offline ({reason})")
            }
        };
        let pending = client
            .document_status(&format!("ws/{workspace}/index"))
            .map_or(0, |s| s.pending());
        let waiting = mirror.waiting_uploads();
        let uploads = waiting_line(&waiting);
        line.set_message(format!(
            "{state} · {files} files · {pending} index edits not yet acknowledged{}",
            uploads
                .as_deref()
                .map(|u| format!(" · {u}"))
                .unwrap_or_default()
        ));
        line.tick();
        if waiting != last_waiting {
            // Also as a plain line: the spinner is invisible without a terminal.
            match &uploads {
                Some(u) => println!("{u}"),
                None => println!("every upload has reached the hub"),
            }
            last_waiting = waiting;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = conn.changed() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
    line.finish_and_clear();
    // Finish the pass in progress, so its sync state is saved with the changes it made.
    mirror.settle(false).await;
    client
        .flush_all(std::time::Duration::from_secs(10))
        .await
        .context("some changes were not acknowledged by the hub before stopping; they are kept locally and sent next time")?;
    drop(mirror);
    println!("stopped; everything is acknowledged by the hub");
    Ok(())
}

/// A folder that is synced is a workspace the hub lists (and the web view shows): register it
/// before mirroring. `Ok(false)`: the hub did not answer (the caller retries); a refusal names
/// the fix instead of syncing into a workspace nobody sees.
async fn register_workspace(login: &Login, workspace: &str) -> Result<bool> {
    let api = Api::new(&login.hub, &login.token);
    match api.register_workspace(workspace).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_unreachable() => {
            eprintln!(
                "the hub is not reachable ({e}); syncing from this device's copy, the \
                 workspace is registered as soon as the hub answers"
            );
            Ok(false)
        }
        Err(e) => match e.code() {
            Some(ErrorCode::Unauthorized) => bail!(
                "the hub refused this device's token ({}): sign in again with `jarvis login {} --token …`",
                e.message(),
                login.hub
            ),
            Some(ErrorCode::Forbidden | ErrorCode::Conflict) => bail!(
                "you may not use workspace {workspace:?} on {} ({}): ask an owner of it to add you \
                 as a member, or sync the folder under another name with `--workspace <name>`",
                login.hub,
                e.message()
            ),
            _ => Err(anyhow::Error::new(e).context(format!("registering workspace {workspace}"))),
        },
    }
}

/// "2 files waiting to upload (a.bin: upload failed: hub unreachable; …)", or None.
fn waiting_line(waiting: &[(String, String)]) -> Option<String> {
    if waiting.is_empty() {
        return None;
    }
    let shown: Vec<String> = waiting
        .iter()
        .take(3)
        .map(|(p, r)| format!("{p}: {r}"))
        .collect();
    let more = if waiting.len() > 3 { "; …" } else { "" };
    Some(format!(
        "{} file{} waiting to upload ({}{more}), retrying",
        waiting.len(),
        if waiting.len() == 1 { "" } else { "s" },
        shown.join("; ")
    ))
}

pub async fn status(home: &Path, store: &Arc<dyn Store>) -> Result<()> {
    let docs = store.list_docs()?.len();
    println!(
        "device store: {} ({docs} documents)",
        home.join("device.db").display()
    );
    match read_login(home) {
        Ok(login) => {
            let health = jarvis_device::api::hub_health(&login.hub).await;
            println!("hub: {} ({health})", login.hub);
        }
        Err(e) => println!("hub: none ({e})"),
    }
    // Written by `jarvis sync` (possibly running now in another process).
    for (folder, files) in jarvis_sync::mirror::waiting_uploads(store.as_ref()) {
        let files: Vec<(String, String)> = files.into_iter().collect();
        if let Some(line) = waiting_line(&files) {
            println!("{folder}: {line}");
        }
    }
    Ok(())
}
