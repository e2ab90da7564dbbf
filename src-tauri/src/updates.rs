//! Update checks against the cloud agent this device is signed in to
//! (`<hub>/updates/{{target}}/{{arch}}/{{current_version}}`, served by `jarvis-cloud`). The
//! updater plugin verifies every download against the public key the app was built with
//! (`plugins.updater.pubkey` in tauri.conf.json) before anything is installed: a manifest or an
//! artifact changed on the server is refused.

use serde_json::{Value, json};
use tauri::{AppHandle, Runtime};
use tauri_plugin_updater::{Updater, UpdaterExt};

use crate::core::{CoreError, CoreResult};

pub fn endpoint(hub: &str) -> String {
    format!(
        "{}/updates/{{{{target}}}}/{{{{arch}}}}/{{{{current_version}}}}",
        hub.trim_end_matches('/')
    )
}

fn updater_error(e: impl std::fmt::Display) -> CoreError {
    CoreError::Hub {
        status: 0,
        code: "update_failed".into(),
        message: format!("update: {e}"),
    }
}

/// An updater for `hub`; `pubkey` replaces the built-in key (tests sign with their own).
pub fn updater<R: Runtime>(
    app: &AppHandle<R>,
    hub: &str,
    pubkey: Option<&str>,
) -> CoreResult<Updater> {
    let url = endpoint(hub)
        .parse()
        .map_err(|e| CoreError::Invalid(format!("update address: {e}")))?;
    let mut builder = app
        .updater_builder()
        .endpoints(vec![url])
        .map_err(updater_error)?;
    if let Some(k) = pubkey {
        builder = builder.pubkey(k);
    }
    builder.build().map_err(updater_error)
}

/// `{available: false}` or `{available: true, version, notes}`.
pub async fn check<R: Runtime>(
    app: &AppHandle<R>,
    hub: &str,
    pubkey: Option<&str>,
) -> CoreResult<Value> {
    match updater(app, hub, pubkey)?
        .check()
        .await
        .map_err(updater_error)?
    {
        Some(u) => Ok(json!({"available": true, "version": u.version, "notes": u.body})),
        None => Ok(json!({"available": false})),
    }
}

/// Downloads the offered update and verifies its signature; the bytes only if it is genuine.
pub async fn download_verified<R: Runtime>(
    app: &AppHandle<R>,
    hub: &str,
    pubkey: Option<&str>,
) -> CoreResult<Option<Vec<u8>>> {
    let Some(update) = updater(app, hub, pubkey)?
        .check()
        .await
        .map_err(updater_error)?
    else {
        return Ok(None);
    };
    let bytes = update
        .download(|_, _| {}, || {})
        .await
        .map_err(updater_error)?;
    Ok(Some(bytes))
}

/// Downloads, verifies, installs and restarts.
pub async fn install<R: Runtime>(app: &AppHandle<R>, hub: &str) -> CoreResult<()> {
    let Some(update) = updater(app, hub, None)?
        .check()
        .await
        .map_err(updater_error)?
    else {
        return Err(CoreError::Invalid("no update is available".into()));
    };
    update
        .download_and_install(|_, _| {}, || {})
        .await
        .map_err(updater_error)?;
    app.restart();
}
