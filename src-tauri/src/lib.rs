//! The Tauri shell of My Jarvis: a window with the ui bundle, thin commands over
//! [`core::DesktopCore`], the tray, native notifications, single instance, the folder dialog
//! and the updater. Every command parses, calls one core method, and returns `{code, message}`
//! on error; nothing here decides anything the core could.

pub mod core;
pub mod secrets;
pub mod updates;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Emitter, Manager, State};
use tauri_plugin_dialog::DialogExt;
use tauri_plugin_notification::NotificationExt;

use crate::core::{CoreConfig, CoreError, CoreEvent, CoreResult, DesktopCore, FolderInfo, Status};

type Core<'a> = State<'a, Arc<DesktopCore>>;

/// The event every core event reaches the window under.
pub const EVENT: &str = "jarvis://event";
const TRAY: &str = "jarvis-tray";

#[tauri::command]
async fn status(core: Core<'_>) -> CoreResult<Status> {
    Ok(core.status().await)
}

#[tauri::command]
async fn sign_in(core: Core<'_>, hub: String, token: String) -> CoreResult<Status> {
    core.sign_in(&hub, &token).await
}

#[tauri::command]
async fn pair(core: Core<'_>, hub: String, name: String) -> CoreResult<Value> {
    core.pair(&hub, &name).await
}

#[tauri::command]
async fn sign_out(core: Core<'_>) -> CoreResult<Status> {
    core.sign_out().await
}

#[tauri::command]
async fn open_folder(core: Core<'_>, path: String) -> CoreResult<FolderInfo> {
    core.open_folder(&path).await
}

/// The native folder dialog, then [`open_folder`]. `None` when the person cancels.
#[tauri::command]
async fn pick_folder(app: AppHandle, core: Core<'_>) -> CoreResult<Option<FolderInfo>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.dialog().file().pick_folder(move |picked| {
        let _ = tx.send(picked);
    });
    let picked = rx
        .await
        .map_err(|_| CoreError::Invalid("the folder dialog closed".into()))?;
    match picked.and_then(|p| p.into_path().ok()) {
        Some(path) => Ok(Some(core.open_folder(&path.to_string_lossy()).await?)),
        None => Ok(None),
    }
}

#[tauri::command]
async fn set_provider_key(core: Core<'_>, key: String) -> CoreResult<()> {
    core.set_provider_key(&key)
}

#[tauri::command]
async fn start_session(
    core: Core<'_>,
    workspace: String,
    prompt: String,
    permission_mode: Option<String>,
) -> CoreResult<String> {
    core.start_session(&workspace, &prompt, permission_mode)
        .await
}

#[tauri::command]
async fn continue_in_cloud(core: Core<'_>, session: String) -> CoreResult<Value> {
    core.continue_in_cloud(&session).await
}

#[tauri::command]
async fn continue_here(core: Core<'_>, session: String) -> CoreResult<Value> {
    core.continue_here(&session).await
}

#[tauri::command]
async fn send_message(core: Core<'_>, session: String, text: String) -> CoreResult<Value> {
    core.send_message(&session, &text).await
}

#[tauri::command]
async fn answer(
    core: Core<'_>,
    session: String,
    approval: String,
    decision: String,
) -> CoreResult<Value> {
    core.answer(&session, &approval, &decision).await
}

#[tauri::command]
async fn stop_session(core: Core<'_>, session: String) -> CoreResult<()> {
    core.stop(&session).await
}

#[tauri::command]
async fn hub_api(
    core: Core<'_>,
    method: String,
    path: String,
    body: Option<Value>,
) -> CoreResult<Value> {
    core.hub_api(&method, &path, body).await
}

#[tauri::command]
async fn blob(core: Core<'_>, workspace: String, hash: String) -> CoreResult<String> {
    core.blob(&workspace, &hash).await
}

#[tauri::command]
async fn doc_open(core: Core<'_>, name: String) -> CoreResult<String> {
    core.doc_open(&name).await
}

#[tauri::command]
async fn doc_apply(core: Core<'_>, name: String, update: String) -> CoreResult<()> {
    core.doc_apply(&name, &update).await
}

#[tauri::command]
async fn doc_close(core: Core<'_>, name: String) -> CoreResult<()> {
    core.doc_close(&name).await;
    Ok(())
}

/// When the process started, for the start-up figure.
struct Started(std::time::Instant);

/// Called by the window two animation frames after its page loaded, i.e. once the first frame
/// with the app drawn is on screen; prints the start-up time (the desktop benchmark reads it).
#[tauri::command]
fn window_ready(started: State<'_, Started>) {
    let ms = started.0.elapsed().as_secs_f64() * 1e3;
    println!("window interactive after {ms:.0} ms");
    tracing::info!(ms, "window interactive");
}

#[tauri::command]
async fn check_update(app: AppHandle, core: Core<'_>) -> CoreResult<Value> {
    let hub = core.status().await.hub.ok_or(CoreError::NotSignedIn)?;
    updates::check(&app, &hub, None).await
}

#[tauri::command]
async fn install_update(app: AppHandle, core: Core<'_>) -> CoreResult<()> {
    let hub = core.status().await.hub.ok_or(CoreError::NotSignedIn)?;
    updates::install(&app, &hub).await
}

fn tray_menu(app: &AppHandle, status: &Status) -> tauri::Result<Menu<tauri::Wry>> {
    let menu = Menu::new(app)?;
    menu.append(&MenuItem::with_id(
        app,
        "show",
        "Show My Jarvis",
        true,
        None::<&str>,
    )?)?;
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    if status.running.is_empty() {
        menu.append(&MenuItem::with_id(
            app,
            "none",
            "No sessions running here",
            false,
            None::<&str>,
        )?)?;
    }
    for r in &status.running {
        let label = format!("● {} ({})", r.title, r.workspace);
        menu.append(&MenuItem::with_id(
            app,
            format!("session:{}", r.session),
            label,
            true,
            None::<&str>,
        )?)?;
    }
    menu.append(&PredefinedMenuItem::separator(app)?)?;
    menu.append(&MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?)?;
    Ok(menu)
}

fn show_main(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
    }
}

/// Delivers a core event: to the window always; to the tray and the notification centre when
/// it concerns them.
fn deliver(app: &AppHandle, event: CoreEvent) {
    match &event {
        CoreEvent::Status(status) => {
            if let Some(tray) = app.tray_by_id(TRAY) {
                match tray_menu(app, status) {
                    Ok(menu) => {
                        let _ = tray.set_menu(Some(menu));
                    }
                    Err(e) => tracing::warn!(error = %e, "updating the tray menu"),
                }
                let tip = match status.running.len() {
                    0 => "My Jarvis".to_owned(),
                    n => format!("My Jarvis: {n} running"),
                };
                let _ = tray.set_tooltip(Some(tip));
            }
        }
        CoreEvent::Attention { title, body, .. } => {
            if let Err(e) = app.notification().builder().title(title).body(body).show() {
                tracing::warn!(error = %e, "showing a notification");
            }
        }
        _ => {}
    }
    if let Err(e) = app.emit(EVENT, &event) {
        tracing::warn!(error = %e, "sending an event to the window");
    }
}

/// Where the app keeps its store and settings: `JARVIS_DESKTOP_DATA` (tests, portable use) or
/// the platform's app data folder.
fn data_dir(app: &AppHandle) -> tauri::Result<std::path::PathBuf> {
    if let Ok(dir) = std::env::var("JARVIS_DESKTOP_DATA") {
        return Ok(dir.into());
    }
    app.path().app_data_dir()
}

pub fn run() {
    let started = Started(std::time::Instant::now());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = tauri::Builder::default()
        // First, so a second launch hands over to the running app before anything starts.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            show_main(app);
        }))
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_dialog::init())
        .plugin(tauri_plugin_updater::Builder::new().build())
        .manage(started)
        .on_page_load(|webview, payload| {
            if payload.event() == tauri::webview::PageLoadEvent::Finished
                && webview.label() == "main"
            {
                let _ = webview.eval(
                    "requestAnimationFrame(() => requestAnimationFrame(() => \
                     window.__TAURI_INTERNALS__.invoke('window_ready')))",
                );
            }
        })
        .invoke_handler(tauri::generate_handler![
            window_ready,
            status,
            sign_in,
            pair,
            sign_out,
            open_folder,
            pick_folder,
            set_provider_key,
            start_session,
            continue_in_cloud,
            continue_here,
            send_message,
            answer,
            stop_session,
            hub_api,
            blob,
            doc_open,
            doc_apply,
            doc_close,
            check_update,
            install_update,
        ])
        .setup(|app| {
            let handle = app.handle().clone();
            let dir = data_dir(&handle)?;
            let env: HashMap<String, String> = std::env::vars().collect();
            let model = env
                .get("ANTHROPIC_MODEL")
                .cloned()
                .unwrap_or_else(|| jarvis_agent::models::DEFAULT_MODEL.into());
            let config = CoreConfig {
                data_dir: dir,
                keychain_service: std::env::var("JARVIS_KEYCHAIN_SERVICE")
                    .unwrap_or_else(|_| secrets::SERVICE.into()),
                env,
                model,
            };
            let sink_handle = handle.clone();
            let sink = Arc::new(move |e: CoreEvent| deliver(&sink_handle, e));
            let core = tauri::async_runtime::block_on(DesktopCore::start(config, sink))
                .map_err(|e| Box::<dyn std::error::Error>::from(e.to_string()))?;
            let status = tauri::async_runtime::block_on(core.status());
            app.manage(core);
            let icon = tauri::image::Image::from_bytes(include_bytes!("../icons/tray.png"))?;
            TrayIconBuilder::with_id(TRAY)
                .icon(icon)
                .tooltip("My Jarvis")
                .menu(&tray_menu(&handle, &status)?)
                .on_menu_event(|app, event| match event.id().as_ref() {
                    "quit" => app.exit(0),
                    "show" => show_main(app),
                    id if id.starts_with("session:") => {
                        show_main(app);
                        let _ = app.emit("jarvis://open-session", &id["session:".len()..]);
                    }
                    _ => {}
                })
                .build(app)?;
            Ok(())
        })
        .run(tauri::generate_context!());
    if let Err(e) = result {
        eprintln!("My Jarvis could not start: {e}");
        std::process::exit(1);
    }
}
