// The HTTP API of jarvis-cloud (same origin, or the desktop's hub). Errors are `{code, message}`
// (`ErrorBody`); the shapes in ../api/types.ts are generated from the server's wire types.
import { hubBase } from './hub';
import type { ErrorBody, ErrorCode, Me as WireMe, SessionSummary } from '../api/types';

export type { ErrorBody, ErrorCode, SessionSummary, Usage } from '../api/types';

/** What the window uses of `GET /api/me` (the desktop makes one up for working offline). */
export type Me = Pick<WireMe, 'user' | 'name' | 'admin' | 'device' | 'read_only'>;

export class ApiError extends Error {
  /**
   * `code` is the hub's `ErrorCode`; `http_error` when the answer was not `{code, message}`
   * (a proxy's page), and the desktop core's own codes when the window calls through it.
   */
  constructor(public status: number, public code: ErrorCode | 'http_error' | (string & {}), message: string) {
    super(message);
  }
}

export interface Workspace { id: string; name: string }
export interface Device { id: string; user: string; name: string; created_ms: number; revoked: boolean }
export interface ConfigFile { kind: string; path: string; name: string; hash: string | null; approved: boolean; error: string | null }
export interface Pairing { code: string; device_code: string; expires_in: number; interval: number }

/** Another way to the hub: the desktop window goes through the core (desktop.ts). */
export interface Transport {
  call<T>(method: string, path: string, body?: unknown): Promise<T>;
  blobUrl(workspace: string, hash: string, type: string): Promise<string>;
}

export interface ProviderForm {
  kind: 'anthropic' | 'gateway' | 'bedrock' | 'vertex' | 'openai';
  api_key?: string; base_url?: string; auth_token?: string; region?: string; access_key_id?: string;
  secret_access_key?: string; session_token?: string; project?: string; credentials_json?: string; model?: string;
}
export interface ProviderStatus { configured: boolean; source: 'browser' | 'environment' | 'none'; kind: string | null; problem: string | null }
export interface Invite { code: string; path: string; expires_ms: number; admin: boolean; workspace: string | null; role: string | null }
export interface InviteInfo { invited_by: string; admin: boolean; workspace: string | null; role: string | null; expires_ms: number }
export interface NewWorkspace {
  id: string; name?: string; source: 'empty' | 'files' | 'git';
  files?: { path: string; content: string }[]; git?: { url: string; token: string };
}

export class Api {
  /**
   * `probe`: a token being tried (the sign-in form), not the signed-in one, so a 401 says
   * "that token is not valid" there instead of signing anyone out.
   */
  constructor(private token: string | null, private transport: Transport | null = null, private probe = false) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    if (this.transport) return this.transport.call<T>(method, path, body);
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const r = await fetch(`${hubBase()}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    let v: any = null;
    try { v = text ? JSON.parse(text) : null; } catch { v = null; }
    if (!r.ok) {
      // A revoked token or device: the app signs out and says why.
      if (r.status === 401 && this.token && !this.probe) dispatchEvent(new CustomEvent('jarvis:unauthorized'));
      const e = v as Partial<ErrorBody> | null;
      throw new ApiError(r.status, e?.code ?? 'http_error', e?.message ?? `${r.status} ${r.statusText}`);
    }
    return v as T;
  }

  /**
   * Follows `GET /api/sessions/changes` (server-sent events) and calls `onChange` whenever a
   * session the caller may open changes; `onLive` says whether the stream is up, so the caller
   * can poll slowly while it is and quickly while it is not. Reconnects with backoff. Returns a
   * stop function; null where there is no stream (the desktop window polls through its core).
   */
  followSessions(onChange: () => void, onLive: (live: boolean) => void): (() => void) | null {
    if (this.transport || !this.token || typeof fetch !== 'function') return null;
    const token = this.token;
    const stop = new AbortController();
    let pause = 500;
    const run = async () => {
      while (!stop.signal.aborted) {
        try {
          const r = await fetch(`${hubBase()}/api/sessions/changes`, { headers: { authorization: `Bearer ${token}` }, signal: stop.signal });
          if (!r.ok || !r.body) throw new Error(`${r.status}`);
          onLive(true);
          pause = 500;
          const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            let end: number;
            while ((end = buffer.indexOf('\n\n')) >= 0) {
              const event = buffer.slice(0, end);
              buffer = buffer.slice(end + 2);
              if (/^event: (changed|lagged)$/m.test(event)) onChange();
            }
          }
        } catch { /* closed, offline or refused: retried below */ }
        onLive(false);
        if (stop.signal.aborted) return;
        await new Promise((done) => setTimeout(done, pause));
        pause = Math.min(pause * 2, 10_000);
      }
    };
    void run();
    return () => stop.abort();
  }

  me() { return this.call<Me>('GET', '/api/me'); }
  sessions() { return this.call<{ sessions: SessionSummary[] }>('GET', '/api/sessions').then((v) => v.sessions); }
  workspaces() { return this.call<{ workspaces: Workspace[] }>('GET', '/api/workspaces').then((v) => v.workspaces); }
  devices() { return this.call<{ devices: Device[] }>('GET', '/api/devices').then((v) => v.devices); }
  createSession(b: { workspace: string; message: string; permission_mode?: string; run?: 'cloud' }) {
    return this.call<{ session: { id: string } }>('POST', '/api/sessions', b);
  }
  ensureWorkspace(id: string) { return this.call<Workspace>('POST', '/api/workspaces', { id, name: id }); }
  send(id: string, text: string) { return this.call('POST', `/api/sessions/${id}/messages`, { text }); }
  interrupt(id: string) { return this.call('POST', `/api/sessions/${id}/interrupt`, {}); }
  /** Mid-session control: the runner applies a new model or permission mode before its next request. */
  updateSession(id: string, b: { model?: string; permission_mode?: string }) {
    return this.call<{ model: string; permission_mode: string | null }>('PATCH', `/api/sessions/${id}`, b);
  }
  answer(id: string, approval: string, decision: 'allow' | 'deny' | 'always_allow') {
    return this.call('POST', `/api/sessions/${id}/approvals/${approval}`, { decision });
  }
  handoff(id: string, to: string) { return this.call('POST', `/api/sessions/${id}/handoff`, { to, wait_ms: 30000 }); }
  pairStart(name: string) { return this.call<Pairing>('POST', '/api/pair/start', { name }); }
  pairPoll(device_code: string) { return this.call<{ device: Device; token: string }>('POST', '/api/pair/poll', { device_code }); }
  config(workspace: string) {
    return this.call<{ untrusted: boolean; config: ConfigFile[] }>('GET', `/api/workspaces/${encodeURIComponent(workspace)}/config`);
  }
  approveConfig(workspace: string, kind: string, path: string, hash: string) {
    return this.call('POST', `/api/workspaces/${encodeURIComponent(workspace)}/config/approve`, { kind, path, hash });
  }
  /** Onboarding (crates/cloud-agent/src/onboarding). */
  setupStatus() { return this.call<{ needed: boolean }>('GET', '/api/setup'); }
  setup(code: string, name: string) { return this.call<{ token: string; user: { id: string; name: string } }>('POST', '/api/setup', { code, name }); }
  provider() { return this.call<ProviderStatus>('GET', '/api/server/provider'); }
  saveProvider(form: ProviderForm) { return this.call<{ saved: boolean; kind: string }>('PUT', '/api/server/provider', form); }
  createWorkspace(b: NewWorkspace) { return this.call<{ workspace: Workspace; files: number }>('POST', '/api/onboarding/workspace', b); }
  invite(b: { admin?: boolean; workspace?: string; role?: string }) { return this.call<Invite>('POST', '/api/invites', b); }
  inviteInfo(code: string) { return this.call<InviteInfo>('GET', `/api/invites/${encodeURIComponent(code)}`); }
  acceptInvite(code: string, name: string) { return this.call<{ token: string; user: { id: string; name: string } }>('POST', `/api/invites/${encodeURIComponent(code)}/accept`, { name }); }
  retry(id: string) { return this.call('POST', `/api/sessions/${id}/retry`, {}); }
  pairApprove(code: string) { return this.call<{ device_name: string }>('POST', '/api/pair/approve', { code }); }

  /** A workspace blob (image, binary) as an object URL. */
  async blobUrl(workspace: string, hash: string, type: string): Promise<string> {
    if (this.transport) return this.transport.blobUrl(workspace, hash, type);
    const r = await fetch(`${hubBase()}/blobs/${hash}`, {
      headers: { authorization: `Bearer ${this.token}`, 'x-jarvis-workspace': workspace },
    });
    if (!r.ok) throw new ApiError(r.status, 'blob', `could not load the file (${r.status})`);
    const bytes = await r.arrayBuffer();
    return URL.createObjectURL(new Blob([bytes], { type }));
  }
}
