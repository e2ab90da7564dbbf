import { useState } from 'react';
import { useApp } from '../lib/hooks';
import { Dialog } from './Dialog';

/** The approving side of pairing: a signed-in person enters the code another device shows. */
export function ApproveDevice({ onClose }: { onClose: () => void }) {
  const { api } = useApp();
  const [code, setCode] = useState('');
  const [msg, setMsg] = useState<{ ok: boolean; text: string } | null>(null);
  const submit = async (e: React.FormEvent) => {
    e.preventDefault();
    try {
      const r = await api.pairApprove(code);
      setMsg({ ok: true, text: `Approved: “${r.device_name}” is now signed in as you.` });
      setCode('');
    } catch (err) {
      setMsg({ ok: false, text: err instanceof Error ? err.message : String(err) });
    }
  };
  return (
    <Dialog title="Approve a device" onClose={onClose}>
      <form onSubmit={submit} className="stack">
        <p className="muted">Enter the code shown by the device or browser you want to sign in. Only approve codes you started yourself.</p>
        <input value={code} onChange={(e) => setCode(e.target.value)} placeholder="ABCD-EFGH" autoFocus data-testid="approve-code" className="code-input" />
        <div className="row end">
          <button type="button" className="btn ghost" onClick={onClose}>Close</button>
          <button className="btn primary" disabled={!code.trim()} data-testid="approve-submit">Approve</button>
        </div>
        {msg && <p className={msg.ok ? 'ok' : 'error'} role="status">{msg.text}</p>}
      </form>
    </Dialog>
  );
}
