import { useEffect, useState } from 'react';
import { useApp } from '../lib/hooks';
import type { ConfigFile } from '../lib/api';
import { Dialog } from './Dialog';

/**
 * Configuration that runs code (background agents) takes effect only once a workspace owner
 * approves its exact content. Lists the workspace's files with their state; an owner approves
 * one here (the hub refuses anyone else, and says so).
 */
export function ApproveConfig({ workspace, onClose }: { workspace: string; onClose: () => void }) {
  const { api } = useApp();
  const [files, setFiles] = useState<ConfigFile[] | null>(null);
  const [untrusted, setUntrusted] = useState(false);
  const [msg, setMsg] = useState<{ ok: boolean; text: string } | null>(null);
  const load = async () => {
    try {
      const v = await api.config(workspace);
      setFiles(v.config);
      setUntrusted(v.untrusted);
    } catch (err) {
      setMsg({ ok: false, text: err instanceof Error ? err.message : String(err) });
    }
  };
  useEffect(() => { void load(); }, [workspace]);
  const approve = async (f: ConfigFile) => {
    try {
      await api.approveConfig(workspace, f.kind, f.path, f.hash ?? '');
      setMsg({ ok: true, text: `Approved ${f.path}.` });
      await load();
    } catch (err) {
      setMsg({ ok: false, text: err instanceof Error ? err.message : String(err) });
    }
  };
  return (
    <Dialog title={`Agents in ${workspace}`} onClose={onClose}>
      <div className="stack" data-testid="config-dialog">
        <p className="muted">
          {untrusted
            ? 'This is a review checkout: nothing in it ever runs.'
            : 'An agent runs only once an owner of this workspace approved its exact content. Read the file first.'}
        </p>
        {files === null ? <p className="muted">Loading…</p> : files.length === 0 ? <p className="muted">No agents in this workspace.</p> : (
          <ul className="config-list">
            {files.map((f) => (
              <li key={f.path} className="row" data-testid="config-file">
                <code>{f.path}</code>
                <span className={f.approved ? 'ok' : 'muted'}>{f.approved ? 'approved' : f.error ? 'invalid' : 'waits for an owner'}</span>
                {!f.approved && !untrusted && f.hash && !f.error && (
                  <button className="btn small" onClick={() => void approve(f)} data-testid="config-approve">Approve</button>
                )}
              </li>
            ))}
          </ul>
        )}
        <div className="row end"><button type="button" className="btn ghost" onClick={onClose} data-testid="config-close">Close</button></div>
        {msg && <p className={msg.ok ? 'ok' : 'error'} role="status">{msg.text}</p>}
      </div>
    </Dialog>
  );
}
