//! The local device inside the desktop app, with no Tauri in it: the device's store, one sync
//! client to the hub (offline-first: documents open and edit without a connection), a file
//! mirror per opened folder, the local runner, and Continue in cloud / Continue here. The Tauri
//! commands in `lib.rs` are a few lines over the methods here, so the same core can be driven
//! by tests without a window.
//!
//! Never: write the hub token or a provider key anywhere but the OS keychain ([`Secrets`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jarvis_agent::anthropic::Provider;
use jarvis_agent::providers::ProviderConfig;
use jarvis_device::pairing::Pairing;
use jarvis_device::{Api, Device, workspace_id};
use jarvis_sync::client::{ClientConfig, ConnectionStatus, SyncClient};
use jarvis_sync::doc::UpdateSubscription;
use jarvis_sync::mirror::FileMirror;
use jarvis_sync::store::SqliteStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::secrets::{KeychainStatus, Secrets};

/// Keychain entry names.
const HUB_TOKEN: &str = "hub-token";
const PROVIDER_KEY: &str = "anthropic-api-key";
/// Origin of edits that came from the window, so they are not echoed back to it.
const UI_ORIGIN: &str = "jarvis-desktop-ui";

mod docs;
mod error;
mod runs;

pub use error::{CoreError, CoreResult};

/// Something the core tells the window (and the shell: tray, notifications).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoreEvent {
    Status(Status),
    /// A document changed by someone other than the window: a base64 Yjs update.
    DocUpdate {
        name: String,
        update: String,
    },
    /// A local run's progress.
    Run {
        session: String,
        event: Value,
    },
    /// A session somewhere needs the person: an approval, or it finished.
    Attention {
        session: String,
        title: String,
        body: String,
    },
}

pub trait EventSink: Send + Sync + 'static {
    fn emit(&self, event: CoreEvent);
}

impl<F: Fn(CoreEvent) + Send + Sync + 'static> EventSink for F {
    fn emit(&self, event: CoreEvent) {
        self(event)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FolderInfo {
    pub workspace: String,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunInfo {
    pub session: String,
    pub workspace: String,
    pub title: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    /// The hub this device is signed in to.
    pub hub: Option<String>,
    /// `signed_out`, `connecting`, `online`, `offline`.
    pub connection: String,
    /// This device's id at the hub (leases are held under it).
    pub device: Option<String>,
    pub keychain: KeychainStatus,
    pub folders: Vec<FolderInfo>,
    pub running: Vec<RunInfo>,
    /// Sessions started here that the hub does not know yet (signed out or unreachable).
    pub unsynced: Vec<RunInfo>,
    /// Whether a provider key or provider configuration is present for local runs.
    pub provider: bool,
}

/// What survives a restart besides the store and the keychain (nothing secret).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Settings {
    hub: Option<String>,
    device: Option<String>,
    folders: Vec<(String, PathBuf)>,
    /// Sessions started while the hub was unreachable, registered with it once it answers.
    #[serde(default)]
    unregistered: Vec<Unregistered>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Unregistered {
    session: String,
    workspace: String,
    title: String,
}

pub struct CoreConfig {
    pub data_dir: PathBuf,
    pub keychain_service: String,
    /// The process environment (provider variables); the keychain's provider key is added when
    /// the environment has none.
    pub env: HashMap<String, String>,
    pub model: String,
}

struct Folder {
    path: PathBuf,
    mirror: Option<Arc<FileMirror>>,
}

struct Run {
    workspace: String,
    title: String,
    cancel: CancellationToken,
}

/// A document the window has open: how many times, and the subscription that forwards
/// everyone else's updates to it (removed when the last opener closes it).
struct WindowDoc {
    refs: usize,
    updates: Option<UpdateSubscription>,
}

struct Inner {
    settings: Settings,
    client: Arc<SyncClient>,
    device: Option<Arc<Device>>,
    folders: HashMap<String, Folder>,
    runs: HashMap<String, Run>,
    /// The hub token while signed in (memory only; the keychain holds it across restarts).
    token: Option<String>,
    /// Documents the window has open.
    docs: HashMap<String, WindowDoc>,
    /// Stops the background tasks of the current sign-in (connector, watcher).
    epoch: CancellationToken,
    /// The hub failed to answer since this sign-in started: the status reads offline, not
    /// connecting, until it is back (so the status line does not flicker between the two).
    unreachable: bool,
}

pub struct DesktopCore {
    config: CoreConfig,
    secrets: Secrets,
    store: Arc<SqliteStore>,
    events: Arc<dyn EventSink>,
    inner: tokio::sync::Mutex<Inner>,
    /// Last session statuses seen, to notice a cloud session newly waiting or finished; None
    /// until the first look after signing in (what was already so then is not news).
    seen: Mutex<Option<HashMap<String, (String, u64)>>>,
    /// Sessions whose local run just ended and said so itself: their next rest is not news.
    quiet: Mutex<std::collections::HashSet<String>>,
}

fn settings_path(dir: &Path) -> PathBuf {
    dir.join("desktop.json")
}

fn load_settings(dir: &Path) -> Settings {
    std::fs::read(settings_path(dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_settings(dir: &Path, s: &Settings) -> CoreResult<()> {
    let bytes = serde_json::to_vec_pretty(s).map_err(|e| CoreError::Internal(e.into()))?;
    jarvis_sync::paths::atomic_write(&settings_path(dir), &bytes, None)
        .map_err(|e| CoreError::Internal(anyhow::anyhow!("saving settings: {e}")))
}

fn offline_client(store: Arc<SqliteStore>) -> Arc<SyncClient> {
    // Not signed in: the same offline-first client, kept offline, so local sessions and their
    // documents work exactly as they do when signed in.
    let client = SyncClient::start(ClientConfig::new("ws://127.0.0.1:9/sync", ""), store);
    client.set_online(false);
    Arc::new(client)
}

impl DesktopCore {
    pub async fn start(config: CoreConfig, events: Arc<dyn EventSink>) -> CoreResult<Arc<Self>> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            CoreError::Internal(anyhow::anyhow!(
                "creating {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let store = Arc::new(
            SqliteStore::open(&config.data_dir.join("device.db"))
                .map_err(|e| CoreError::Internal(anyhow::anyhow!("opening the store: {e}")))?,
        );
        let secrets = Secrets::new(&config.keychain_service);
        let settings = load_settings(&config.data_dir);
        let core = Arc::new(DesktopCore {
            secrets,
            store: store.clone(),
            events,
            inner: tokio::sync::Mutex::new(Inner {
                settings: settings.clone(),
                client: offline_client(store),
                device: None,
                folders: HashMap::new(),
                runs: HashMap::new(),
                token: None,
                docs: HashMap::new(),
                epoch: CancellationToken::new(),
                unreachable: false,
            }),
            config,
            seen: Mutex::new(None),
            quiet: Mutex::new(Default::default()),
        });
        for (workspace, path) in &settings.folders {
            let mut inner = core.inner.lock().await;
            inner.folders.insert(
                workspace.clone(),
                Folder {
                    path: path.clone(),
                    mirror: None,
                },
            );
        }
        if let Some(hub) = settings.hub.clone() {
            // A keychain that is locked or missing leaves the device signed out, and says why.
            match core.secrets.get(HUB_TOKEN) {
                Ok(Some(token)) => core.connect(&hub, &token).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the hub token"),
            }
        }
        core.emit_status().await;
        Ok(core)
    }

    /// Signs in with a token: keeps it in the keychain (refusing when there is none) and
    /// connects. The hub must answer, so a wrong token or address is a clear error now.
    pub async fn sign_in(self: &Arc<Self>, hub: &str, token: &str) -> CoreResult<Status> {
        let hub = hub.trim().trim_end_matches('/').to_owned();
        if !(hub.starts_with("http://") || hub.starts_with("https://")) {
            return Err(CoreError::Invalid(format!(
                "{hub:?} is not an http(s) address of a cloud agent"
            )));
        }
        let device = Api::new(&hub, token).me().await?.device;
        self.secrets.set(HUB_TOKEN, token)?;
        {
            let mut inner = self.inner.lock().await;
            inner.settings.hub = Some(hub.clone());
            inner.settings.device = device;
            save_settings(&self.config.data_dir, &inner.settings)?;
        }
        self.connect(&hub, token).await;
        Ok(self.status().await)
    }

    /// Pairs this device by a code the person approves where they are signed in; returns the
    /// code at once and finishes the sign-in in the background.
    pub async fn pair(self: &Arc<Self>, hub: &str, name: &str) -> CoreResult<Value> {
        let hub = hub.trim().trim_end_matches('/').to_owned();
        let pairing = Pairing::start(&hub, name).await?;
        let answer = json!({"code": pairing.code, "expires_in": pairing.expires_in});
        let core = self.clone();
        tokio::spawn(async move {
            match pairing.wait().await {
                Ok(paired) => {
                    if let Err(e) = core.sign_in(&pairing.hub, &paired.token).await {
                        tracing::warn!(error = %e, "pairing approved but signing in failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "pairing ended"),
            }
        });
        Ok(answer)
    }

    pub async fn sign_out(self: &Arc<Self>) -> CoreResult<Status> {
        self.secrets.delete(HUB_TOKEN)?;
        {
            let mut inner = self.inner.lock().await;
            inner.epoch.cancel();
            for run in inner.runs.values() {
                run.cancel.cancel();
            }
            inner.device = None;
            inner.token = None;
            for f in inner.folders.values_mut() {
                f.mirror = None;
            }
            inner.settings.hub = None;
            inner.settings.device = None;
            inner.client = offline_client(self.store.clone());
            save_settings(&self.config.data_dir, &inner.settings)?;
        }
        self.emit_status().await;
        Ok(self.status().await)
    }

    /// Starts the sync client for `hub` and, in the background, everything that needs the hub
    /// to answer: the device identity, the folder mirrors, and watching sessions elsewhere.
    async fn connect(self: &Arc<Self>, hub: &str, token: &str) {
        let epoch = CancellationToken::new();
        let client = Arc::new(SyncClient::start(
            ClientConfig::new(jarvis_device::ws_url(hub), token),
            self.store.clone(),
        ));
        {
            let mut inner = self.inner.lock().await;
            inner.epoch.cancel();
            inner.epoch = epoch.clone();
            // A new sign-in looks afresh: what is already so then is not news.
            *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
            inner.unreachable = false;
            inner.client = client.clone();
            inner.token = Some(token.to_owned());
            inner.device = None;
            for f in inner.folders.values_mut() {
                f.mirror = None;
            }
        }
        let core = self.clone();
        let hub = hub.to_owned();
        let token = token.to_owned();
        tokio::spawn(async move {
            let mut connection = client.connection();
            let mut pause = Duration::from_millis(200);
            // Who we are: once, as soon as the hub answers.
            let device = loop {
                if epoch.is_cancelled() {
                    return;
                }
                let api = Api::new(&hub, &token);
                match api.me().await {
                    Ok(me) => {
                        if let Some(id) = me.device {
                            break Arc::new(Device {
                                api,
                                client: client.clone(),
                                id,
                            });
                        }
                        tracing::warn!("the hub did not say which device this is");
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "hub not reachable yet");
                        core.mark_unreachable(&epoch).await;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = epoch.cancelled() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(10));
            };
            {
                let mut inner = core.inner.lock().await;
                if epoch.is_cancelled() {
                    return;
                }
                inner.device = Some(device.clone());
            }
            core.mirror_folders().await;
            core.register_offline_sessions(&device).await;
            core.emit_status().await;
            let mut poll = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = epoch.cancelled() => return,
                    changed = connection.changed() => {
                        if changed.is_err() { return; }
                        let now = connection.borrow().clone();
                        match now {
                            ConnectionStatus::Connected => core.register_offline_sessions(&device).await,
                            ConnectionStatus::Offline { .. } => core.mark_unreachable(&epoch).await,
                            ConnectionStatus::Connecting => {}
                        }
                        core.emit_status().await;
                    }
                    _ = poll.tick() => core.watch_sessions(&device).await,
                }
            }
        });
    }

    /// Starts a mirror for every opened folder that has none (needs the device identity).
    async fn mirror_folders(&self) {
        let (device, todo) = {
            let inner = self.inner.lock().await;
            let Some(device) = inner.device.clone() else {
                return;
            };
            let todo: Vec<(String, PathBuf)> = inner
                .folders
                .iter()
                .filter(|(_, f)| f.mirror.is_none())
                .map(|(w, f)| (w.clone(), f.path.clone()))
                .collect();
            (device, todo)
        };
        for (workspace, path) in todo {
            // A folder opened while the hub was away is registered now, before it syncs: a
            // workspace the hub does not list would sync into nowhere (no web view shows it).
            if let Err(e) = register_workspace(&device, &workspace).await {
                tracing::warn!(%workspace, error = %e, "the hub refused the folder's workspace");
                continue;
            }
            match device.mirror(&path, &workspace).await {
                Ok(m) => {
                    tracing::info!(%workspace, files = m.index().list().len(), "folder mirrored");
                    let mut inner = self.inner.lock().await;
                    if let Some(f) = inner.folders.get_mut(&workspace) {
                        f.mirror = Some(Arc::new(m));
                    }
                }
                Err(e) => tracing::warn!(%workspace, error = %e, "cannot mirror the folder"),
            }
        }
    }

    async fn mark_unreachable(&self, epoch: &CancellationToken) {
        let changed = {
            let mut inner = self.inner.lock().await;
            let current = !epoch.is_cancelled() && !inner.unreachable;
            if current {
                inner.unreachable = true;
            }
            current
        };
        if changed {
            self.emit_status().await;
        }
    }

    async fn remember_unregistered(
        &self,
        session: &str,
        workspace: &str,
        title: &str,
    ) -> CoreResult<()> {
        let mut inner = self.inner.lock().await;
        if inner
            .settings
            .unregistered
            .iter()
            .any(|u| u.session == session)
        {
            return Ok(());
        }
        inner.settings.unregistered.push(Unregistered {
            session: session.to_owned(),
            workspace: workspace.to_owned(),
            title: title.to_owned(),
        });
        save_settings(&self.config.data_dir, &inner.settings)
    }

    /// Registers with the hub the sessions started while it was unreachable, then opens their
    /// documents again so the sync client asks for them once more (the hub refused documents
    /// of sessions it did not know).
    async fn register_offline_sessions(&self, device: &Device) {
        let todo = self.inner.lock().await.settings.unregistered.clone();
        for u in todo {
            let body = json!({
                "id": u.session, "workspace": u.workspace, "title": u.title,
                "model": self.config.model,
            });
            if let Err(e) = device
                .api
                .post("/api/workspaces", json!({"id": u.workspace}))
                .await
            {
                tracing::warn!(session = %u.session, error = %e, "registering the workspace of an offline session");
                continue;
            }
            match device.api.post("/api/sessions", body).await {
                Ok(_) => {
                    tracing::info!(session = %u.session, "offline session registered with the hub");
                    let client = device.client.clone();
                    let name = format!("session/{}", u.session);
                    tokio::spawn(async move { docs::resync(&client, &name).await });
                    let mut inner = self.inner.lock().await;
                    inner
                        .settings
                        .unregistered
                        .retain(|x| x.session != u.session);
                    if let Err(e) = save_settings(&self.config.data_dir, &inner.settings) {
                        tracing::warn!(error = %e, "saving settings");
                    }
                }
                Err(e) => {
                    tracing::warn!(session = %u.session, error = %e, "registering an offline session")
                }
            }
        }
    }

    /// Notices sessions running elsewhere that now need the person (an approval) or finished,
    /// and says so once per change.
    async fn watch_sessions(&self, device: &Device) {
        let Ok(v) = device.api.get("/api/sessions").await else {
            return;
        };
        let mine: Vec<String> = self.inner.lock().await.runs.keys().cloned().collect();
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let baseline = guard.is_none();
        if baseline {
            tracing::info!("watching sessions for approvals and endings");
        }
        let seen = guard.get_or_insert_with(HashMap::new);
        let mut quiet = self.quiet.lock().unwrap_or_else(|p| p.into_inner());
        for s in v["sessions"].as_array().into_iter().flatten() {
            let (Some(id), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else {
                continue;
            };
            let pending = s["pending_approvals"].as_u64().unwrap_or(0);
            let now = (status.to_owned(), pending);
            // A session new since the last look is compared with "nothing yet", so one that
            // started and already waits (or finished) between two looks is still news.
            let before = seen
                .insert(id.to_owned(), now.clone())
                .unwrap_or_else(|| (String::new(), 0));
            if baseline || before == now || mine.iter().any(|m| m == id) {
                continue;
            }
            if matches!(status, "done" | "failed" | "interrupted") && quiet.remove(id) {
                continue;
            }
            let title = s["title"].as_str().unwrap_or(id).to_owned();
            let where_ = s["where"].as_str().unwrap_or("");
            if pending > before.1 {
                self.events.emit(CoreEvent::Attention {
                    session: id.to_owned(),
                    title: "Approval needed".into(),
                    body: format!("{title} is waiting for your approval ({where_})"),
                });
            } else if status != before.0 && matches!(status, "done" | "failed") {
                self.events.emit(CoreEvent::Attention {
                    session: id.to_owned(),
                    title: if status == "done" {
                        "Session finished".into()
                    } else {
                        "Session failed".into()
                    },
                    body: title,
                });
            }
        }
    }

    /// Whether the core has taken its first look at the sessions since signing in (from then
    /// on, a session that comes to need the person raises [`CoreEvent::Attention`]).
    pub fn watching_sessions(&self) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub async fn status(&self) -> Status {
        let inner = self.inner.lock().await;
        let current = inner.client.connection().borrow().clone();
        let connection = match (&inner.settings.hub, current) {
            (None, _) => "signed_out",
            (Some(_), ConnectionStatus::Connected) if inner.device.is_some() => "online",
            (Some(_), _) if !inner.unreachable => "connecting",
            (Some(_), _) => "offline",
        };
        let mut folders: Vec<FolderInfo> = inner
            .folders
            .iter()
            .map(|(w, f)| FolderInfo {
                workspace: w.clone(),
                path: f.path.display().to_string(),
            })
            .collect();
        folders.sort_by(|a, b| a.workspace.cmp(&b.workspace));
        let mut running: Vec<RunInfo> = inner
            .runs
            .iter()
            .map(|(s, r)| RunInfo {
                session: s.clone(),
                workspace: r.workspace.clone(),
                title: r.title.clone(),
            })
            .collect();
        running.sort_by(|a, b| a.session.cmp(&b.session));
        Status {
            hub: inner.settings.hub.clone(),
            connection: connection.into(),
            device: inner
                .device
                .as_ref()
                .map(|d| d.id.clone())
                .or_else(|| inner.settings.device.clone()),
            keychain: self.secrets.status(),
            folders,
            running,
            unsynced: inner
                .settings
                .unregistered
                .iter()
                .map(|u| RunInfo {
                    session: u.session.clone(),
                    workspace: u.workspace.clone(),
                    title: u.title.clone(),
                })
                .collect(),
            provider: self.provider_config().is_ok(),
        }
    }

    async fn emit_status(&self) {
        let s = self.status().await;
        self.events.emit(CoreEvent::Status(s));
    }

    /// Opens a folder as a workspace of this device (id: the folder's name).
    pub async fn open_folder(self: &Arc<Self>, path: &str) -> CoreResult<FolderInfo> {
        let dir = Path::new(path)
            .canonicalize()
            .map_err(|e| CoreError::Invalid(format!("{path}: {e}")))?;
        if !dir.is_dir() {
            return Err(CoreError::Invalid(format!("{path} is not a folder")));
        }
        let workspace = workspace_id(&dir);
        // Signed in and reachable: the hub lists the workspace before anything syncs, or says
        // why not (not a member of a workspace of that name: the window shows the hub's words).
        let device = self.inner.lock().await.device.clone();
        if let Some(device) = device {
            register_workspace(&device, &workspace).await?;
        }
        {
            let mut inner = self.inner.lock().await;
            if let Some(f) = inner.folders.get(&workspace)
                && f.path != dir
            {
                return Err(CoreError::Invalid(format!(
                    "workspace {workspace:?} is already the folder {}; rename one of them",
                    f.path.display()
                )));
            }
            inner.folders.entry(workspace.clone()).or_insert(Folder {
                path: dir.clone(),
                mirror: None,
            });
            inner.settings.folders.retain(|(w, _)| w != &workspace);
            inner
                .settings
                .folders
                .push((workspace.clone(), dir.clone()));
            save_settings(&self.config.data_dir, &inner.settings)?;
        }
        self.mirror_folders().await;
        self.emit_status().await;
        Ok(FolderInfo {
            workspace,
            path: dir.display().to_string(),
        })
    }

    pub fn set_provider_key(&self, key: &str) -> CoreResult<()> {
        if key.trim().is_empty() {
            return Ok(self.secrets.delete(PROVIDER_KEY)?);
        }
        Ok(self.secrets.set(PROVIDER_KEY, key.trim())?)
    }

    fn provider_config(&self) -> CoreResult<ProviderConfig> {
        let mut env = self.config.env.clone();
        let has_own = ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"]
            .iter()
            .any(|k| env.contains_key(*k))
            || env.contains_key("CLAUDE_CODE_USE_BEDROCK")
            || env.contains_key("CLAUDE_CODE_USE_VERTEX")
            || env.contains_key("JARVIS_OPENAI_BASE_URL");
        if !has_own && let Ok(Some(key)) = self.secrets.get(PROVIDER_KEY) {
            env.insert("ANTHROPIC_API_KEY".into(), key);
        }
        ProviderConfig::from_env(&env, |p| std::fs::read_to_string(p))
            .map_err(|e| CoreError::Invalid(format!("no model provider: {e}")))
    }

    fn provider(&self) -> CoreResult<Arc<dyn Provider>> {
        let p = self
            .provider_config()?
            .build()
            .map_err(|e| CoreError::Invalid(format!("model provider: {e}")))?;
        Ok(Arc::from(p))
    }
}

/// `POST /api/workspaces` for a folder this device opens (creating the workspace when the user
/// may, re-opening it when they are a member). An unreachable hub is not an error: the folder
/// is registered when the device next connects (`mirror_folders`).
async fn register_workspace(device: &Device, workspace: &str) -> CoreResult<()> {
    match device.api.register_workspace(workspace).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_unreachable() => Ok(()),
        Err(e) => Err(e.into()),
    }
}
