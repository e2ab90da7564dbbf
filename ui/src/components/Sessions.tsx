import { useEffect, useState } from 'react';
import type { Device, SessionSummary, Workspace } from '../lib/api';
import { useApp, useDoc, useDocVersion } from '../lib/hooks';
import { readMeta, readMessages } from '../lib/model';
import { Dialog } from './Dialog';
import { statusOf, timeAgo, whereLabel } from './labels';

/** One row. A session that is open or at work follows its document live; the rest use the list. */
function SessionRow({ s, selected, devices, onOpen }: { s: SessionSummary; selected: boolean; devices: Device[]; onOpen: (id: string) => void }) {
  const { me } = useApp();
  const active = selected || s.status === 'running' || s.status === 'waiting_approval';
  const doc = useDoc(active ? `session/${s.id}` : null);
  const v = useDocVersion(doc?.doc);
  const live = doc?.synced && v >= 0;
  const status = live ? readMeta(doc.doc).status : s.status;
  // Status and pending approvals from the same source, so a row never pairs a live "done" with
  // the list's older count of open approvals.
  const pending = live
    ? readMessages(doc.doc).flatMap((m) => m.blocks).filter((b) => b.type === 'approval' && !b.decision).length
    : s.pending_approvals;
  const st = statusOf(status);
  const where = whereLabel(s.runner, me.device, devices);
  return (
    <li>
      <button className={`session-item ${selected ? 'selected' : ''}`} onClick={() => onOpen(s.id)} data-testid={`session-${s.id}`} data-status={status}>
        <span className="session-title">{s.title || 'Untitled session'}</span>
        <span className="session-sub">
          <span className={`badge tone-${st.tone}`}>{st.label}{pending > 0 && status !== 'waiting_approval' ? ' · approval' : ''}</span>
          <span className={`where where-${where.kind}`} data-testid="where">{where.label}</span>
        </span>
        <span className="session-meta">{s.workspace} · {timeAgo(s.created_ms)}</span>
      </button>
    </li>
  );
}

export function SessionList({ sessions, error, selected, devices, onOpen, onNew }: {
  sessions: SessionSummary[] | null; error: string | null; selected: string | null; devices: Device[];
  onOpen: (id: string) => void; onNew: () => void;
}) {
  const { me } = useApp();
  // New sessions (from any device) arrive with the list, refreshed every 1.5 s.
  const sorted = [...(sessions ?? [])].sort((a, b) => b.created_ms - a.created_ms);
  return (
    <div className="sessions">
      <div className="panel-head">
        <h2>Sessions</h2>
        <button className="btn primary small" onClick={onNew} disabled={me.read_only} data-testid="new-session">New</button>
      </div>
      {error && <p className="error small-pad">{error}</p>}
      {sessions === null && !error && <p className="muted small-pad">Loading…</p>}
      {sessions?.length === 0 && <p className="muted small-pad">No sessions yet. Start one with <b>New</b>.</p>}
      <ul className="session-list" data-testid="session-list">
        {sorted.map((s) => <SessionRow key={s.id} s={s} selected={selected === s.id} devices={devices} onOpen={onOpen} />)}
      </ul>
    </div>
  );
}

export function NewSession({ onClose, onCreated }: { onClose: () => void; onCreated: (id: string) => void }) {
  const { api } = useApp();
  const [workspaces, setWorkspaces] = useState<Workspace[]>([]);
  const [workspace, setWorkspace] = useState('');
  const [message, setMessage] = useState('');
  const [mode, setMode] = useState('ask');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api.workspaces().then((w) => { setWorkspaces(w); if (w.length && !workspace) setWorkspace(w[0].id); }).catch((e) => setError(e.message));
  }, [api]);
  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    setBusy(true); setError(null);
    try {
      const ws = workspace.trim();
      if (!workspaces.some((w) => w.id === ws)) await api.ensureWorkspace(ws);
      const r = await api.createSession({ workspace: ws, message: message.trim(), permission_mode: mode, run: 'cloud' });
      onCreated(r.session.id);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
      setBusy(false);
    }
  };
  return (
    <Dialog title="New session" onClose={onClose}>
      <form className="stack" onSubmit={submit}>
        <label htmlFor="ns-ws">Workspace</label>
        <input id="ns-ws" list="ns-workspaces" value={workspace} onChange={(e) => setWorkspace(e.target.value)} placeholder="notes" data-testid="ns-workspace" required pattern="[A-Za-z0-9_\-]{1,64}" />
        <datalist id="ns-workspaces">{workspaces.map((w) => <option key={w.id} value={w.id}>{w.name}</option>)}</datalist>
        <label htmlFor="ns-msg">What should the agent do?</label>
        <textarea id="ns-msg" rows={4} value={message} onChange={(e) => setMessage(e.target.value)} data-testid="ns-message" required />
        <label htmlFor="ns-mode">Permissions</label>
        <select id="ns-mode" value={mode} onChange={(e) => setMode(e.target.value)}>
          <option value="ask">Ask before changing anything</option>
          <option value="accept-edits">Allow file edits, ask for commands</option>
          <option value="plan">Plan only (no changes)</option>
          <option value="allow-all">Allow everything</option>
        </select>
        <p className="muted small">The session runs in the cloud, so it keeps going when you close this page.</p>
        <div className="row end">
          <button type="button" className="btn ghost" onClick={onClose}>Cancel</button>
          <button className="btn primary" disabled={busy || !workspace.trim() || !message.trim()} data-testid="ns-start">Start</button>
        </div>
        {error && <p className="error" role="alert">{error}</p>}
      </form>
    </Dialog>
  );
}
