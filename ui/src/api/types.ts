// Generated from crates/wire/openapi.json by crates/cloud-agent/tests/openapi.rs.
// Do not edit: change the wire types (crates/wire) and run
// `JARVIS_BLESS=1 cargo test -p jarvis-cloud --test openapi`.

/** One run of a background agent: one occurrence (unique per agent and scheduled time). */
export interface AgentRun {
  /** `<workspace>/<name>`. */
  agent: string;
  cost_micros: number;
  detail: string;
  id: number;
  name: string;
  note: string;
  owner: string;
  scheduled_ms: number;
  session: string | null;
  /** queued, running, done, failed, skipped or over_budget. */
  status: string;
  /** cron, files or webhook. */
  trigger: string;
  workspace: string;
}

/** `GET /api/workspaces/{id}/agents/{name}/runs`, newest first. */
export interface AgentRuns {
  runs: AgentRun[];
}

/** `POST /api/sessions/{id}/approvals/{approval}`: the first answer wins. */
export interface AnswerApproval {
  /** allow, deny or always_allow. */
  decision: string;
  /** With `always_allow` on a bash command: allow the command's prefix (`npm test:*`), not only this exact line. */
  prefix?: boolean;
}

/** The answer to [`AnswerApproval`]. */
export interface ApprovalAnswered {
  approval: string;
  decision: string;
}

/** A device (and its tokens) revoked, and the sockets that lost their access at once. */
export interface DeviceRevoked {
  revoked: string;
  sockets_closed: number;
}

/** The body of every error response. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
}

/** What went wrong, for a program to act on. The message beside it is for a person. */
export type ErrorCode = "unauthorized" | "forbidden" | "not_found" | "conflict" | "invalid_request" | "too_large" | "rate_limited" | "authorization_pending" | "approval_required" | "bad_hash" | "timeout" | "unavailable" | "storage" | "internal" | "wrong_setup_code" | "setup_code_expired" | "already_set_up" | "invite_not_valid" | "not_failed" | "provider_key_refused" | "provider_busy" | "provider_not_found" | "provider_unreachable" | "provider_config" | "provider_failed" | "git_host_refused" | "git_unreachable" | "git_timeout" | "git_failed" | "git_too_large" | "git_missing";

export interface ExpectedDoc {
  doc: string;
  /** v1 state vector, hex */
  sv: string;
}

/** The answer to `POST /api/sessions/{id}/interrupt`: the interrupt request's number. */
export interface Interrupted {
  interrupt: number;
}

export interface Lease {
  device?: string | null;
  epoch: number;
  expect?: ExpectedDoc[];
  expires_ms?: number;
  pending_by?: string | null;
  pending_to?: string | null;
  session: string;
}

/** `GET /api/me`: who the caller's token is. */
export interface Me {
  /** Whether this token has admin powers (the admin user's full-scope writable token). */
  admin: boolean;
  /** Whether the user is the admin user (whatever this token may do). */
  admin_user: boolean;
  /** What this token may do, in words. */
  can: string[];
  /** The device leases are held under: the paired device, or `t-<token id>` for a token without one. */
  device: string;
  name: string;
  read_only: boolean;
  scopes: string[];
  /** The user's id. */
  user: string;
}

/** The answer to `DELETE /api/workspaces/{id}/members/{user}`. */
export interface MemberRemoved {
  removed: string;
  sockets_closed: number;
  workspace: string;
}

/** `PUT /api/workspaces/{id}/members/{user}`: owner, editor or viewer. */
export interface MemberRole {
  role: string;
}

/** The answer to [`MemberRole`]. */
export interface MemberSet {
  role: string;
  sockets_closed: number;
  user: string;
  workspace: string;
}

/** The answer to [`SendMessage`]: the message's id and the device that runs it (none yet when a handoff to the cloud is pending). */
export interface MessageSent {
  message: string;
  runner: string | null;
}

/** `POST /api/sessions`, and what webhooks and background agents start. */
export interface NewSession {
  allow?: string[];
  budget_usd?: number | null;
  deny?: string[];
  /** Chosen by the caller (a device that created it offline), or made up by the server. */
  id?: string | null;
  /** A first user message. */
  message?: string | null;
  model?: string | null;
  /** ask, accept-edits, plan or allow-all. */
  permission_mode?: string | null;
  /** Where it runs: "cloud" hands it to the cloud runner at once. */
  run?: string | null;
  title?: string;
  workspace: string;
}

/** `POST /api/users` (admin). */
export interface NewUser {
  admin?: boolean;
  name: string;
}

/** `POST /api/workspaces`: create a workspace (or return it if the caller may use it). */
export interface NewWorkspace {
  id: string;
  name?: string;
}

/** `POST /api/pair/approve`: a signed-in person approves the code a device shows. */
export interface PairApprove {
  code: string;
}

/** The answer to [`PairApprove`]. */
export interface PairApproved {
  approved: boolean;
  device_name: string;
}

/** `POST /api/pair/poll`: the device collects its token once the code is approved. */
export interface PairPoll {
  device_code: string;
}

/** `POST /api/pair/start`: a device asks to be paired. */
export interface PairStart {
  /** The device's name, shown to the person approving it. */
  name: string;
}

/** `PUT /api/workspaces/{id}/agents/{name}`: the definition file, written through the hub. */
export interface PutAgent {
  /** The whole file: front matter and prompt. */
  definition: string;
}

/** Where a session runs now. */
export type RunsWhere = "cloud" | "device" | "nowhere";

/** `POST /api/sessions/{id}/messages`. */
export interface SendMessage {
  text: string;
}

/** `GET /api/sessions`. */
export interface SessionList {
  sessions: SessionSummary[];
}

/** A session in a list: status, where it runs, usage. */
export interface SessionSummary {
  created_ms: number;
  handoff_to: string | null;
  id: string;
  lease_epoch: number;
  model: string;
  owner: string;
  pending_approvals: number;
  /** The device holding a live lease, if any. */
  runner: string | null;
  /** idle, running, waiting or error. */
  status: string;
  title: string;
  usage: Usage;
  where: RunsWhere;
  workspace: string;
}

/** `PATCH /api/sessions/{id}`: applied by the runner before its next model request. */
export interface SessionUpdate {
  model?: string | null;
  permission_mode?: string | null;
}

/** The answer to [`SessionUpdate`]: the session's model and mode now. */
export interface SessionUpdated {
  model: string;
  permission_mode: string | null;
}

/** A token revoked, and the sockets that lost their access at once. */
export interface TokenRevoked {
  revoked: number;
  sockets_closed: number;
}

/** `POST /api/workspaces/{id}/agents/{name}/runs`: run an agent now. */
export interface TriggerRun {
  /** Added to the run's prompt. */
  payload?: unknown;
}

/** Token usage of a session or a user, at list prices. */
export interface Usage {
  cache_read_tokens: number;
  cache_write_tokens: number;
  cost_micros: number;
  input_tokens: number;
  output_tokens: number;
}
