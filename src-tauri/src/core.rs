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

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use jarvis_agent::anthropic::Provider;
use jarvis_agent::providers::ProviderConfig;
use jarvis_agent::runner::{Outcome, RunEvent, Runner};
use jarvis_device::handoff::request_handoff;
use jarvis_device::pairing::Pairing;
use jarvis_device::{
    Api, Device, DeviceError, Lease, RunOptions, RunOverrides, new_session_id, prepare,
    run_offline, workspace_id,
};
use jarvis_sync::client::{ClientConfig, ConnectionStatus, SyncClient};
use jarvis_sync::doc::{Decision, SessionDoc, UpdateSubscription};
use jarvis_sync::mirror::FileMirror;
use jarvis_sync::store::SqliteStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use yrs::updates::decoder::Decode;
use yrs::{Origin, ReadTxn, StateVector, Transact, Update};

use crate::secrets::{KeychainStatus, SecretError, Secrets};

/// Keychain entry names.
const HUB_TOKEN: &str = "hub-token";
const PROVIDER_KEY: &str = "anthropic-api-key";
/// Origin of edits that came from the window, so they are not echoed back to it.
const UI_ORIGIN: &str = "jarvis-desktop-ui";

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("sign in to a cloud agent first")]
    NotSignedIn,
    #[error("the cloud agent is not reachable right now; local sessions keep working")]
    Offline,
    #[error(transparent)]
    Keychain(#[from] SecretError),
    #[error("{0}")]
    Invalid(String),
    #[error("open the folder of workspace {0:?} first")]
    NoFolder(String),
    #[error("{message}")]
    Hub {
        status: u16,
        code: String,
        message: String,
    },
    #[error("{0:#}")]
    Internal(anyhow::Error),
}

impl CoreError {
    pub fn code(&self) -> &str {
        match self {
            CoreError::NotSignedIn => "not_signed_in",
            CoreError::Offline => "offline",
            CoreError::Keychain(e) => e.code(),
            CoreError::Invalid(_) => "invalid",
            CoreError::NoFolder(_) => "no_folder",
            CoreError::Hub { code, .. } => code,
            CoreError::Internal(_) => "internal",
        }
    }
}

impl From<DeviceError> for CoreError {
    /// The hub's refusal keeps its code (a lease held elsewhere is `conflict`) and its own
    /// words; the window says what to do about it (a button, never a shell command).
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Hub {
                status,
                code,
                message,
            } => CoreError::Hub {
                status,
                code: code.map_or("error", |c| c.as_str()).to_owned(),
                message,
            },
            DeviceError::Unreachable { .. } => CoreError::Offline,
            DeviceError::Invalid(m) => CoreError::Invalid(m),
            other => CoreError::Internal(other.into()),
        }
    }
}

/// What the window gets for an error: `{code, message}`.
impl Serialize for CoreError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = json!({"code": self.code(), "message": self.to_string()});
        // The hub's HTTP status too, so the window can tell a 401 from a 404.
        if let CoreError::Hub { status, .. } = self {
            v["status"] = json!(status);
        }
        v.serialize(s)
    }
}

pub type CoreResult<T> = Result<T, CoreError>;

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
                    tokio::spawn(async move { resync(&client, &name).await });
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

    /// The hub's HTTP API with this device's token, for the window (the token never leaves
    /// the core). `path` must be under `/api/`.
    pub async fn hub_api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> CoreResult<Value> {
        if !path.starts_with("/api/") || path.contains("..") {
            return Err(CoreError::Invalid(format!("{path} is not an API path")));
        }
        let (hub, device) = {
            let inner = self.inner.lock().await;
            (inner.settings.hub.clone(), inner.device.clone())
        };
        if hub.is_none() {
            return Err(CoreError::NotSignedIn);
        }
        let device = device.ok_or(CoreError::Offline)?;
        let method: reqwest::Method = method
            .parse()
            .map_err(|_| CoreError::Invalid(format!("{method} is not an HTTP method")))?;
        Ok(device.api.call(method, path, body.as_ref()).await?)
    }

    /// A workspace blob for the window, as base64 (images in the preview), checked against
    /// its hash before it is handed over.
    pub async fn blob(&self, workspace: &str, hash: &str) -> CoreResult<String> {
        if !jarvis_sync::blob::valid_hash(hash) {
            return Err(CoreError::Invalid("not a blob hash".into()));
        }
        let (hub, token) = {
            let inner = self.inner.lock().await;
            (inner.settings.hub.clone(), inner.token.clone())
        };
        let (Some(hub), Some(token)) = (hub, token) else {
            return Err(CoreError::NotSignedIn);
        };
        let resp = reqwest::Client::new()
            .get(format!("{hub}/blobs/{hash}"))
            .bearer_auth(token)
            .header("x-jarvis-workspace", workspace)
            .send()
            .await
            .map_err(|_| CoreError::Offline)?;
        if !resp.status().is_success() {
            return Err(CoreError::Hub {
                status: resp.status().as_u16(),
                code: "blob".into(),
                message: format!("could not load the file ({})", resp.status()),
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CoreError::Internal(e.into()))?;
        if jarvis_sync::blob::hash_bytes(&bytes) != hash {
            return Err(CoreError::Invalid(
                "the file does not match its hash".into(),
            ));
        }
        Ok(B64.encode(bytes))
    }

    /// Opens a document for the window: its whole state now, then every change made by anyone
    /// else as a [`CoreEvent::DocUpdate`]. Works offline from the store.
    pub async fn doc_open(&self, name: &str) -> CoreResult<String> {
        let client = self.inner.lock().await.client.clone();
        let doc = client
            .open(name)
            .await
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let first = {
            let mut inner = self.inner.lock().await;
            let w = inner.docs.entry(name.to_owned()).or_insert(WindowDoc {
                refs: 0,
                updates: None,
            });
            w.refs += 1;
            w.refs == 1
        };
        if first {
            let events = self.events.clone();
            let owned = name.to_owned();
            let sub = UpdateSubscription::new(&doc, move |txn, e| {
                let from_window = txn.origin().is_some_and(|o| o == &Origin::from(UI_ORIGIN));
                if !from_window {
                    events.emit(CoreEvent::DocUpdate {
                        name: owned.clone(),
                        update: B64.encode(&e.update),
                    });
                }
            })
            .await;
            // Closed again meanwhile: dropping the subscription ends it.
            if let Some(w) = self.inner.lock().await.docs.get_mut(name) {
                w.updates = Some(sub);
            }
        }
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        Ok(B64.encode(state))
    }

    /// Applies an edit the window made; the sync client stores it and sends it to the hub.
    pub async fn doc_apply(&self, name: &str, update: &str) -> CoreResult<()> {
        let bytes = B64
            .decode(update)
            .map_err(|_| CoreError::Invalid("update is not base64".into()))?;
        let update =
            Update::decode_v1(&bytes).map_err(|e| CoreError::Invalid(format!("update: {e}")))?;
        let client = self.inner.lock().await.client.clone();
        let doc = client
            .open(name)
            .await
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        let mut txn = doc.transact_mut_with(Origin::from(UI_ORIGIN));
        txn.apply_update(update)
            .map_err(|e| CoreError::Invalid(format!("update: {e}")))?;
        Ok(())
    }

    pub async fn doc_close(&self, name: &str) {
        let mut inner = self.inner.lock().await;
        if let Some(w) = inner.docs.get_mut(name) {
            w.refs -= 1;
            if w.refs == 0 {
                // Dropping the entry drops its subscription.
                inner.docs.remove(name);
            }
        }
    }

    /// A session document from the device's own copy (tests and the tray).
    pub async fn session_doc(&self, session: &str) -> CoreResult<SessionDoc> {
        let client = self.inner.lock().await.client.clone();
        let doc = client
            .open(&format!("session/{session}"))
            .await
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        Ok(SessionDoc::new(doc))
    }
}

/// Makes the sync client ask for `name` again until the hub takes it: the hub refused the
/// document of a session it did not know yet, and that refusal may still be on its way when the
/// session is registered. Gives up after a while (the next reconnect asks again).
async fn resync(client: &SyncClient, name: &str) {
    if let Err(e) = client.open(name).await {
        tracing::warn!(doc = %name, error = %e, "reopening a document");
        return;
    }
    let Some(mut status) = client.watch_document(name) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = status.borrow_and_update().clone();
        if now.synced && now.denied.is_none() {
            return;
        }
        if now.denied.is_some() {
            // Opening a refused document asks the hub again.
            let _ = client.open(name).await;
        }
        match tokio::time::timeout_at(deadline, status.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                tracing::warn!(doc = %name, "the hub has not taken the document yet");
                return;
            }
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn errors_reach_the_window_as_code_and_message() {
        let v = serde_json::to_value(CoreError::NoFolder("notes".into())).unwrap();
        assert_eq!(v["code"], "no_folder");
        assert_eq!(v["message"], "open the folder of workspace \"notes\" first");
        let v = serde_json::to_value(CoreError::Keychain(SecretError::Unavailable(
            "no D-Bus".into(),
        )))
        .unwrap();
        assert_eq!(v["code"], "keychain_unavailable");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("never in plain files")
        );
    }
}
