import { useCallback, useEffect, useRef, useState } from 'react';
import type { SessionSummary, Device } from '../lib/api';
import { useApp, usePeerStatus, usePoll } from '../lib/hooks';
import { SessionList, NewSession } from './Sessions';
import { Chat } from './Chat';
import { FileTree } from './Files';
import { Preview } from './Preview';
import { ApproveDevice } from './ApproveDevice';
import { ApproveConfig } from './ApproveConfig';
import { GettingStarted } from './GettingStarted';
import { GETTING_STARTED } from './SignIn';
import { DesktopPanel, StatusLine } from './Desktop';
import { inDesktop, onTrayOpen } from '../lib/desktop';

type Tab = 'sessions' | 'chat' | 'files' | 'preview';
const PHONE = '(max-width: 760px)';

function useMedia(q: string): boolean {
  const [m, setM] = useState(() => matchMedia(q).matches);
  useEffect(() => {
    const mq = matchMedia(q);
    const on = () => setM(mq.matches);
    mq.addEventListener('change', on);
    return () => mq.removeEventListener('change', on);
  }, [q]);
  return m;
}

function sessionFromUrl(): string | null {
  const m = /^\/s\/([A-Za-z0-9_-]{1,64})\/?$/.exec(location.pathname);
  return m ? m[1] : null;
}

/** Widths of the two outer panels, in pixels, remembered per browser. */
function usePanelWidths() {
  const [w, setW] = useState<[number, number]>(() => {
    try {
      const v = JSON.parse(localStorage.getItem('jarvis.panels') ?? '');
      if (Array.isArray(v) && v.length === 2) return [Number(v[0]) || 300, Number(v[1]) || 440];
    } catch { /* defaults */ }
    return [300, 440];
  });
  useEffect(() => { localStorage.setItem('jarvis.panels', JSON.stringify(w)); }, [w]);
  return [w, setW] as const;
}

function Splitter({ onDrag, label }: { onDrag: (dx: number) => void; label: string }) {
  const last = useRef<number | null>(null);
  return (
    <div
      className="splitter" role="separator" aria-orientation="vertical" aria-label={label} tabIndex={0}
      onPointerDown={(e) => { last.current = e.clientX; (e.target as HTMLElement).setPointerCapture(e.pointerId); }}
      onPointerMove={(e) => { if (last.current !== null) { onDrag(e.clientX - last.current); last.current = e.clientX; } }}
      onPointerUp={() => { last.current = null; }}
      onKeyDown={(e) => { if (e.key === 'ArrowLeft') onDrag(-24); if (e.key === 'ArrowRight') onDrag(24); }}
    />
  );
}

export function Workbench() {
  const { api, me, signOut, signedOut } = useApp();
  const phone = useMedia(PHONE);
  const status = usePeerStatus();
  const [sessions, setSessions] = useState<SessionSummary[] | null>(null);
  const [devices, setDevices] = useState<Device[]>([]);
  const [listError, setListError] = useState<string | null>(null);
  const [selected, setSelected] = useState<string | null>(() => sessionFromUrl());
  const [workspace, setWorkspace] = useState<string | null>(null);
  const [file, setFile] = useState<string | null>(null);
  const [previewMode, setPreviewMode] = useState<'file' | 'changes'>('file');
  const [tab, setTab] = useState<Tab>(() => (sessionFromUrl() ? 'chat' : 'sessions'));
  // Right after the owner's setup, the guide opens by itself (once).
  const [dialog, setDialog] = useState<'new' | 'approve' | 'config' | 'setup' | null>(() => {
    if (sessionStorage.getItem(GETTING_STARTED) !== '1') return null;
    sessionStorage.removeItem(GETTING_STARTED);
    return 'setup';
  });
  const [widths, setWidths] = usePanelWidths();

  // Admins hear at once when sessions cannot answer yet (no provider), not at the first failure.
  const [noProvider, setNoProvider] = useState(false);
  useEffect(() => {
    if (!me.admin || inDesktop || dialog === 'setup') return;
    api.provider().then((p) => setNoProvider(!p.configured)).catch(() => {});
  }, [api, me.admin, dialog]);
  const refresh = useCallback(() => {
    api.sessions().then((s) => { setSessions(s); setListError(null); }).catch((e) => setListError(e.message));
  }, [api]);
  useEffect(() => { performance.mark('jarvis:interactive'); }, []);
  useEffect(() => { if (sessions && !performance.getEntriesByName('jarvis:sessions').length) performance.mark('jarvis:sessions'); }, [sessions]);
  // The list follows the hub's change stream; polling stays as the fallback (quick while the
  // stream is down, e.g. in the desktop window or behind a proxy that buffers it).
  const [live, setLive] = useState(false);
  useEffect(() => {
    const stop = api.followSessions(refresh, setLive);
    return stop ?? undefined;
  }, [api, refresh]);
  usePoll(refresh, live ? 15000 : 1500, [refresh, live]);
  usePoll(() => { api.devices().then(setDevices).catch(() => {}); }, 15000, [api]);

  // The tray's session items (desktop window).
  useEffect(() => (inDesktop ? onTrayOpen((id) => { setSelected(id); history.pushState(null, '', `/s/${id}`); if (phone) setTab('chat'); }) : undefined), [phone]);
  useEffect(() => {
    const on = () => setSelected(sessionFromUrl());
    addEventListener('popstate', on);
    return () => removeEventListener('popstate', on);
  }, []);

  const summary = sessions?.find((s) => s.id === selected) ?? null;
  useEffect(() => { if (summary?.workspace) setWorkspace(summary.workspace); }, [summary?.workspace]);

  const open = (id: string) => {
    if (id !== selected) { setFile(null); setPreviewMode('file'); }
    setSelected(id);
    history.pushState(null, '', `/s/${id}`);
    if (phone) setTab('chat');
  };
  const openFile = (path: string) => { setFile(path); setPreviewMode('file'); if (phone) setTab('preview'); };
  const showChanges = () => { setPreviewMode('changes'); if (phone) setTab('preview'); };

  // The desktop window's folders and local sessions (components/Desktop.tsx).
  const desktopPanel = inDesktop ? <DesktopPanel onOpen={(id, ws) => { refresh(); open(id); if (ws) setWorkspace(ws); }} /> : null;
  const sessionsPanel = (
    <SessionList sessions={sessions} error={listError} selected={selected} devices={devices} onOpen={open} onNew={() => setDialog('new')} />
  );
  const filesPanel = (
    <FileTree workspace={workspace} session={selected} selected={file} onOpen={openFile} onShowChanges={showChanges} onPickWorkspace={(w) => { setWorkspace(w); setFile(null); }} />
  );
  const previewPanel = (
    <Preview workspace={workspace} session={selected} path={file} mode={previewMode} setMode={setPreviewMode} onOpenFile={openFile} />
  );
  const chatPanel = <Chat session={selected} summary={summary} devices={devices} onShowChanges={showChanges} />;

  const header = (
    <header className="topbar">
      {/* On a phone the brand and the connection keep their dots only: the actions need the width. */}
      <div className="brand"><span className="brand-dot" /><span className="hide-phone">My Jarvis</span></div>
      {inDesktop ? <StatusLine /> : (
        <div className={`conn conn-${status}`} data-testid="conn" title={`Sync: ${status}`}>
          <span className="conn-dot" /><span className="conn-label">{status === 'connected' ? 'Live' : status === 'connecting' ? 'Connecting…' : 'Offline'}</span>
        </div>
      )}
      <div className="spacer" />
      {!signedOut && workspace && <button className="btn ghost small" onClick={() => setDialog('config')} data-testid="config-open"><span className="hide-phone">Agents</span><span className="show-phone">Agents</span></button>}
      {!signedOut && !inDesktop && !me.read_only && <button className="btn ghost small" onClick={() => setDialog('setup')} data-testid="setup-open">Set up</button>}
      {!signedOut && <button className="btn ghost small" onClick={() => setDialog('approve')} data-testid="approve-device-open"><span className="hide-phone">Approve a device</span><span className="show-phone">Approve</span></button>}
      <span className="who" title={me.device}>{me.name}</span>
      {signedOut
        ? <button className="btn ghost small" onClick={signOut} data-testid="sign-in">Sign in</button>
        : <button className="btn ghost small" onClick={signOut} data-testid="sign-out">Sign out</button>}
    </header>
  );

  return (
    <div className={`app ${phone ? 'phone' : 'wide'}`}>
      {header}
      {noProvider && (
        <div className="banner" role="status" data-testid="no-provider">
          <span>No AI provider is set up yet: sessions cannot answer until one is.</span>
          <button className="btn small primary" onClick={() => setDialog('setup')}>Set up the AI provider</button>
        </div>
      )}
      {phone ? (
        <>
          <main className="phone-panel">
            {tab === 'sessions' && <>{desktopPanel}{sessionsPanel}</>}
            {tab === 'chat' && chatPanel}
            {tab === 'files' && filesPanel}
            {tab === 'preview' && previewPanel}
          </main>
          <nav className="tabbar" aria-label="Panels">
            {(['sessions', 'chat', 'files', 'preview'] as Tab[]).map((t) => (
              <button key={t} className={tab === t ? 'active' : ''} onClick={() => setTab(t)} data-testid={`tab-${t}`}>
                {t[0].toUpperCase() + t.slice(1)}
              </button>
            ))}
          </nav>
        </>
      ) : (
        <main className="panels" style={{ gridTemplateColumns: `${widths[0]}px 6px minmax(240px, 1fr) 6px ${widths[1]}px` }}>
          <section className="panel left" aria-label="Sessions and files">
            {desktopPanel && <div className="left-desktop">{desktopPanel}</div>}
            <div className="left-sessions">{sessionsPanel}</div>
            <div className="left-files">{filesPanel}</div>
          </section>
          <Splitter label="Resize the left panel" onDrag={(dx) => setWidths(([a, b]) => [Math.min(560, Math.max(200, a + dx)), b])} />
          <section className="panel middle" aria-label="Preview">{previewPanel}</section>
          <Splitter label="Resize the chat panel" onDrag={(dx) => setWidths(([a, b]) => [a, Math.min(900, Math.max(320, b - dx))])} />
          <section className="panel right" aria-label="Chat">{chatPanel}</section>
        </main>
      )}
      {dialog === 'new' && <NewSession onClose={() => setDialog(null)} onCreated={(id) => { setDialog(null); refresh(); open(id); }} />}
      {dialog === 'approve' && <ApproveDevice onClose={() => setDialog(null)} />}
      {dialog === 'setup' && <GettingStarted onClose={() => setDialog(null)} onWorkspace={(w) => { setWorkspace(w); setFile(null); }} />}
      {dialog === 'config' && workspace && <ApproveConfig workspace={workspace} onClose={() => setDialog(null)} />}
    </div>
  );
}
