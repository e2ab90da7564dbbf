//! Request and response bodies of the hub's JSON API under `/api`, as both sides see them.
//! The server deserializes requests and serializes responses with these types; devices and the
//! UI (through `ui/src/api/types.ts`, generated from `openapi.json`) read the same shapes.
//!
//! Fields a newer server adds are ignored by older clients (no `deny_unknown_fields`), so a
//! field is added, never renamed or removed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// ---- pairing ------------------------------------------------------------------------------

/// `POST /api/pair/start`: a device asks to be paired.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PairStart {
    /// The device's name, shown to the person approving it.
    pub name: String,
}

/// `POST /api/pair/poll`: the device collects its token once the code is approved.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PairPoll {
    pub device_code: String,
}

/// `POST /api/pair/approve`: a signed-in person approves the code a device shows.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PairApprove {
    pub code: String,
}

/// The answer to [`PairApprove`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PairApproved {
    pub approved: bool,
    pub device_name: String,
}

// ---- users, tokens, devices ---------------------------------------------------------------

/// `GET /api/me`: who the caller's token is.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Me {
    /// The user's id.
    pub user: String,
    pub name: String,
    /// Whether this token has admin powers (the admin user's full-scope writable token).
    pub admin: bool,
    /// Whether the user is the admin user (whatever this token may do).
    pub admin_user: bool,
    pub scopes: Vec<String>,
    /// The device leases are held under: the paired device, or `t-<token id>` for a token
    /// without one.
    pub device: String,
    pub read_only: bool,
    /// What this token may do, in words.
    pub can: Vec<String>,
}

/// `POST /api/users` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// A token revoked, and the sockets that lost their access at once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TokenRevoked {
    pub revoked: i64,
    pub sockets_closed: usize,
}

/// A device (and its tokens) revoked, and the sockets that lost their access at once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DeviceRevoked {
    pub revoked: String,
    pub sockets_closed: usize,
}

// ---- workspaces ---------------------------------------------------------------------------

/// `POST /api/workspaces`: create a workspace (or return it if the caller may use it).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NewWorkspace {
    pub id: String,
    #[serde(default)]
    pub name: String,
}

/// `PUT /api/workspaces/{id}/members/{user}`: owner, editor or viewer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MemberRole {
    pub role: String,
}

/// The answer to [`MemberRole`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MemberSet {
    pub workspace: String,
    pub user: String,
    pub role: String,
    pub sockets_closed: usize,
}

/// The answer to `DELETE /api/workspaces/{id}/members/{user}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MemberRemoved {
    pub workspace: String,
    pub removed: String,
    pub sockets_closed: usize,
}

/// One entry of a workspace's file index.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FileEntry {
    pub path: String,
    /// `text` (a file document) or `blob` (content-addressed bytes).
    pub kind: String,
    pub size: u64,
    pub modified_ms: u64,
}

// ---- sessions -----------------------------------------------------------------------------

/// `POST /api/sessions`, and what webhooks and background agents start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct NewSession {
    /// Chosen by the caller (a device that created it offline), or made up by the server.
    pub id: Option<String>,
    pub workspace: String,
    #[serde(default)]
    pub title: String,
    pub model: Option<String>,
    /// A first user message.
    pub message: Option<String>,
    /// ask, accept-edits, plan or allow-all.
    pub permission_mode: Option<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
    pub budget_usd: Option<f64>,
    /// Where it runs: "cloud" hands it to the cloud runner at once.
    pub run: Option<String>,
}

/// `POST /api/sessions/{id}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SendMessage {
    pub text: String,
}

/// The answer to [`SendMessage`]: the message's id and the device that runs it (none yet when
/// a handoff to the cloud is pending).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageSent {
    pub message: String,
    pub runner: Option<String>,
}

/// `PATCH /api/sessions/{id}`: applied by the runner before its next model request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct SessionUpdate {
    pub model: Option<String>,
    pub permission_mode: Option<String>,
}

/// The answer to [`SessionUpdate`]: the session's model and mode now.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionUpdated {
    pub model: String,
    pub permission_mode: Option<String>,
}

/// The answer to `POST /api/sessions/{id}/interrupt`: the interrupt request's number.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Interrupted {
    pub interrupt: u64,
}

/// `POST /api/sessions/{id}/approvals/{approval}`: the first answer wins.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AnswerApproval {
    /// allow, deny or always_allow.
    pub decision: String,
    /// With `always_allow` on a bash command: allow the command's prefix (`npm test:*`), not
    /// only this exact line.
    #[serde(default)]
    pub prefix: bool,
}

/// The answer to [`AnswerApproval`].
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ApprovalAnswered {
    pub approval: String,
    pub decision: String,
}

/// Token usage of a session or a user, at list prices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
    #[serde(default)]
    pub cost_micros: u64,
}

/// Where a session runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunsWhere {
    /// The cloud runner holds its lease.
    Cloud,
    /// A device (desktop or CLI) holds its lease.
    Device,
    /// Nobody holds a live lease.
    Nowhere,
}

/// A session in a list: status, where it runs, usage.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionSummary {
    pub id: String,
    pub workspace: String,
    pub owner: String,
    pub title: String,
    pub model: String,
    /// idle, running, waiting or error.
    pub status: String,
    pub pending_approvals: usize,
    /// The device holding a live lease, if any.
    pub runner: Option<String>,
    #[serde(rename = "where")]
    pub runs_where: RunsWhere,
    pub lease_epoch: u64,
    pub handoff_to: Option<String>,
    pub usage: Usage,
    pub created_ms: i64,
}

/// `GET /api/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
}

// ---- background agents --------------------------------------------------------------------

/// `PUT /api/workspaces/{id}/agents/{name}`: the definition file, written through the hub.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PutAgent {
    /// The whole file: front matter and prompt.
    pub definition: String,
}

/// `POST /api/workspaces/{id}/agents/{name}/runs`: run an agent now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct TriggerRun {
    /// Added to the run's prompt.
    #[serde(default)]
    pub payload: serde_json::Value,
}

/// One run of a background agent: one occurrence (unique per agent and scheduled time).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentRun {
    pub id: i64,
    /// `<workspace>/<name>`.
    pub agent: String,
    pub workspace: String,
    pub name: String,
    pub scheduled_ms: u64,
    /// cron, files or webhook.
    pub trigger: String,
    pub detail: String,
    /// queued, running, done, failed, skipped or over_budget.
    pub status: String,
    pub session: Option<String>,
    pub owner: String,
    pub cost_micros: u64,
    pub note: String,
}

/// `GET /api/workspaces/{id}/agents/{name}/runs`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentRuns {
    pub runs: Vec<AgentRun>,
}
