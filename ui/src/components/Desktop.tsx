// The desktop window's own screens: sign-in to a hub (address + token, or pairing) through the
// core, the sync/connection status line, opened folders, and sessions started on this device.
// Everything goes through the core's commands (lib/desktop.ts); the web view never shows these.
import { useEffect, useMemo, useState } from 'react';
import { Api, type Me } from '../lib/api';
import { AppCtx } from '../lib/hooks';
import { call, desktopPeer, desktopTransport, statusLine, useCoreStatus, type DesktopStatus } from '../lib/desktop';
import { Workbench } from './Workbench';

const errText = (e: unknown) => (e instanceof Error ? e.message : String(e));


export function StatusLine() {
  const line = statusLine(useCoreStatus());
  const s = useCoreStatus();
  return (
    <div className={`desk-status desk-${line.tone}`} data-testid="desktop-status" data-connection={s?.connection ?? ''} role="status">
      <span className="conn-dot" />{line.text}
    </div>
  );
}

function DesktopSignIn({ onLocal }: { onLocal: () => void }) {
  const core = useCoreStatus();
  const [hub, setHub] = useState(core?.hub ?? 'http://127.0.0.1:8080');
  const [token, setToken] = useState('');
  const [name, setName] = useState('My Jarvis desktop');
  const [code, setCode] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const go = async (fn: () => Promise<void>) => {
    setBusy(true); setError(null);
    try { await fn(); } catch (e) { setError(errText(e)); }
    setBusy(false);
  };
  const signIn = (ev: React.FormEvent) => {
    ev.preventDefault();
    go(async () => { desktopPeer().setStatus(await call<DesktopStatus>('sign_in', { hub: hub.trim(), token: token.trim() })); });
  };
  const pair = () => go(async () => {
    const r = await call<{ code: string }>('pair', { hub: hub.trim(), name: name.trim() || 'My Jarvis desktop' });
    setCode(r.code);
  });
  return (
    <main className="signin">
      <div className="signin-card">
        <div className="brand"><span className="brand-dot" />My Jarvis</div>
        <h1>Connect to your cloud agent</h1>
        <StatusLine />
        <p className="muted">Sessions run in folders on this computer, sync through your cloud agent and can continue there. They keep running here when the connection drops. The token is kept in this computer's keychain.</p>
        <form className="stack" onSubmit={signIn}>
          <label htmlFor="desk-hub">Cloud agent address</label>
          <input id="desk-hub" value={hub} onChange={(e) => setHub(e.target.value)} placeholder="https://jarvis.example.com" data-testid="desk-hub" />
          <label htmlFor="desk-token">Device token</label>
          <input id="desk-token" type="password" autoComplete="off" value={token} onChange={(e) => setToken(e.target.value)} placeholder="jt_…" data-testid="desk-token" />
          <button className="btn primary" disabled={busy || !hub.trim() || !token.trim()} data-testid="desk-signin">Sign in</button>
        </form>
        <details className="token-signin">
          <summary>Pair with a code instead</summary>
          <div className="stack">
            <label htmlFor="desk-name">This computer's name</label>
            <input id="desk-name" value={name} onChange={(e) => setName(e.target.value)} data-testid="desk-name" />
            <button className="btn" onClick={pair} disabled={busy || !hub.trim()} data-testid="desk-pair">Get a pairing code</button>
            {code && (
              <div className="pairing" data-testid="pairing">
                <p>Approve this code where you are signed in (My Jarvis › <em>Approve a device</em>):</p>
                <div className="pair-code" data-testid="pair-code">{code}</div>
                <p className="muted"><span className="spinner" /> Waiting for approval…</p>
              </div>
            )}
          </div>
        </details>
        <button className="btn ghost" onClick={onLocal} data-testid="desk-local">Use on this computer only</button>
        {error && <p className="error" role="alert" data-testid="desk-error">{error}</p>}
      </div>
    </main>
  );
}

/** Folders of this computer, and sessions started in them (run here, under this device's lease). */
export function DesktopPanel({ onOpen }: { onOpen: (session: string, workspace?: string) => void }) {
  const core = useCoreStatus();
  const [path, setPath] = useState('');
  const [workspace, setWorkspace] = useState('');
  const [prompt, setPrompt] = useState('');
  const [mode, setMode] = useState('ask');
  const [key, setKey] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const folders = core?.folders ?? [];
  const ws = workspace || folders[folders.length - 1]?.workspace || '';
  const go = async (fn: () => Promise<void>) => {
    setBusy(true); setError(null);
    try { await fn(); } catch (e) { setError(errText(e)); }
    setBusy(false);
  };
  const opened = (f: { workspace: string } | null) => { if (f) setWorkspace(f.workspace); };
  return (
    <div className="desk-panel" data-testid="desktop-panel">
      <div className="panel-head"><h2>This computer</h2>
        <button className="btn small" disabled={busy} onClick={() => go(async () => opened(await call('pick_folder')))} data-testid="folder-pick">Open folder…</button>
      </div>
      <form className="row desk-row" onSubmit={(e) => { e.preventDefault(); go(async () => { opened(await call('open_folder', { path: path.trim() })); setPath(''); }); }}>
        <input value={path} onChange={(e) => setPath(e.target.value)} placeholder="/path/to/folder" aria-label="Folder path" data-testid="folder-path" />
        <button className="btn small" disabled={busy || !path.trim()} data-testid="folder-open">Open</button>
      </form>
      {folders.length > 0 && (
        <ul className="desk-folders" data-testid="folders">
          {folders.map((f) => <li key={f.workspace} title={f.path} data-testid={`folder-${f.workspace}`}><b>{f.workspace}</b> <span className="muted small">{f.path}</span></li>)}
        </ul>
      )}
      {core && !core.provider && (
        <form className="row desk-row" onSubmit={(e) => { e.preventDefault(); go(async () => { await call('set_provider_key', { key }); setKey(''); desktopPeer().setStatus(await call('status')); }); }}>
          <input type="password" value={key} onChange={(e) => setKey(e.target.value)} placeholder="Anthropic API key for local runs" aria-label="Provider key" />
          <button className="btn small" disabled={busy || !key.trim()}>Save</button>
        </form>
      )}
      {folders.length > 0 && (
        <form className="stack desk-row" onSubmit={(e) => {
          e.preventDefault();
          go(async () => { const id = await call<string>('start_session', { workspace: ws, prompt: prompt.trim(), permissionMode: mode }); setPrompt(''); onOpen(id, ws); });
        }}>
          <div className="row">
            <select value={ws} onChange={(e) => setWorkspace(e.target.value)} aria-label="Folder" data-testid="local-workspace">
              {folders.map((f) => <option key={f.workspace} value={f.workspace}>{f.workspace}</option>)}
            </select>
            <select value={mode} onChange={(e) => setMode(e.target.value)} aria-label="Permissions" data-testid="local-mode">
              <option value="ask">Ask before changes</option>
              <option value="accept-edits">Allow edits</option>
              <option value="plan">Plan only</option>
              <option value="allow-all">Allow everything</option>
            </select>
          </div>
          <textarea rows={2} value={prompt} onChange={(e) => setPrompt(e.target.value)} placeholder="What should the agent do in this folder?" data-testid="local-prompt" />
          <button className="btn primary small" disabled={busy || !ws || !prompt.trim()} data-testid="local-start">Run here</button>
        </form>
      )}
      {(core?.running.length ?? 0) > 0 && (
        <ul className="desk-folders" data-testid="running-here">
          {core!.running.map((r) => <li key={r.session}><button className="link small" onClick={() => onOpen(r.session, r.workspace)}>● {r.title}</button></li>)}
        </ul>
      )}
      {(core?.unsynced.length ?? 0) > 0 && (
        <div className="desk-row muted small" data-testid="unsynced">
          Not on the cloud agent yet (they sync once it answers):
          <ul className="desk-folders">
            {core!.unsynced.map((r) => <li key={r.session}><button className="link small" onClick={() => onOpen(r.session, r.workspace)} data-testid={`unsynced-${r.session}`}>{r.title}</button></li>)}
          </ul>
        </div>
      )}
      {error && <p className="error small-pad" role="alert" data-testid="desk-error">{error}</p>}
    </div>
  );
}

/** The whole window: sign-in while signed out, else the workbench over the core. */
export function DesktopApp() {
  const peer = desktopPeer();
  const core = useCoreStatus();
  const api = useMemo(() => new Api(null, desktopTransport), []);
  const [me, setMe] = useState<Me | null>(null);
  const [error, setError] = useState<string | null>(null);
  const signedIn = !!core && core.connection !== 'signed_out';
  // Signed out, by choice: folders and sessions on this computer only; they reach the hub
  // once the person signs in.
  const [local, setLocal] = useState(false);
  useEffect(() => { if (signedIn) setLocal(false); }, [signedIn]);
  const online = core?.connection === 'online';
  const device = core?.device ?? null;

  useEffect(() => {
    if (!signedIn) { setMe(null); return; }
    let live = true;
    api.me().then((m) => { if (live) { setMe(m); setError(null); } }).catch((e) => {
      if (!live) return;
      setError(errText(e));
      // Offline with a known device: work locally as that device until the hub answers.
      if (device) setMe((m) => m ?? { user: '', name: 'This computer', admin: false, device, read_only: false });
    });
    return () => { live = false; };
  }, [api, signedIn, online, device]);

  const signOut = () => { call<DesktopStatus>('sign_out').then((s) => peer.setStatus(s)).catch((e) => setError(errText(e))); };

  if (!core) return <div className="center-screen"><p className="muted">Starting…</p></div>;
  if (!signedIn && local) {
    const here: Me = { user: '', name: 'This computer', admin: false, device: core.device ?? 'desktop', read_only: false };
    return (
      <AppCtx.Provider value={{ api, peer, me: here, signOut: () => setLocal(false), signedOut: true }}>
        <Workbench />
      </AppCtx.Provider>
    );
  }
  if (!signedIn) return <DesktopSignIn onLocal={() => setLocal(true)} />;
  if (!me) {
    return (
      <div className="center-screen">
        <StatusLine />
        {error && <p className="muted">{error}</p>}
        <button className="btn" onClick={signOut}>Sign out</button>
      </div>
    );
  }
  return (
    <AppCtx.Provider value={{ api, peer, me, signOut }}>
      <Workbench />
    </AppCtx.Provider>
  );
}
