import { useEffect, useMemo, useRef, useState } from 'react';
import type { Device, SessionSummary } from '../lib/api';
import { useApp, useDoc, useDocVersion } from '../lib/hooks';
import { CONTEXT_TOKENS, MODELS, PERMISSION_MODES, contextUsed, readIndex, readMessages, readMeta, type BlockView, type MessageView } from '../lib/model';
import { sessionChanges } from '../lib/session-diff.js';
import { explainFailure, lastFailure } from '../lib/failure.js';
import { Markdown } from './Markdown';
import { deviceName, statusOf, whereLabel } from './labels';
import { call, inDesktop, useCoreStatus } from '../lib/desktop';


const fmtTokens = (n: number) => (n >= 1000 ? `${(n / 1000).toFixed(n >= 10000 ? 0 : 1)}k` : String(n));
const fmtCost = (micros: number) => `$${(micros / 1e6).toFixed(micros < 10_000 ? 4 : 2)}`;

/** A tool's input as labelled fields; multi-line strings (file contents) shown as they are. */
function ToolInput({ input }: { input: string }) {
  let v: unknown;
  try { v = JSON.parse(input); } catch { return <pre className="tool-pre">{input}</pre>; }
  if (!v || typeof v !== 'object' || Array.isArray(v)) return <pre className="tool-pre">{JSON.stringify(v, null, 2)}</pre>;
  return (
    <dl className="tool-fields">
      {Object.entries(v as Record<string, unknown>).map(([k, x]) => (
        <div key={k}>
          <dt>{k.replace(/_/g, ' ')}</dt>
          <dd><pre className="tool-pre">{typeof x === 'string' ? x : JSON.stringify(x, null, 2)}</pre></dd>
        </div>
      ))}
    </dl>
  );
}

function toolTitle(name: string, input: string): string {
  try {
    const v = JSON.parse(input);
    if (typeof v.path === 'string') return `${name} ${v.path}`;
    if (typeof v.command === 'string') return `${name}: ${v.command.length > 60 ? `${v.command.slice(0, 60)}…` : v.command}`;
    if (typeof v.pattern === 'string') return `${name} ${v.pattern}`;
  } catch { /* raw */ }
  return name;
}

function ToolCard({ block, result, approval, session, readOnly, nameOf }: {
  block: Extract<BlockView, { type: 'tool_use' }>; result?: Extract<BlockView, { type: 'tool_result' }>;
  approval?: Extract<BlockView, { type: 'approval' }>; session: string; readOnly: boolean; nameOf: (id: string) => string;
}) {
  const { api } = useApp();
  const [err, setErr] = useState<string | null>(null);
  const [sent, setSent] = useState(false);
  const waiting = approval && !approval.decision;
  const state = result ? (result.is_error ? 'error' : 'done') : waiting ? 'waiting' : block.status || 'pending';
  const answer = async (d: 'allow' | 'deny' | 'always_allow') => {
    if (!approval) return;
    setSent(true); setErr(null);
    // The desktop's core answers through the hub, or offline in its own copy of a session run here.
    try { await (inDesktop ? call('answer', { session, approval: approval.id, decision: d }) : api.answer(session, approval.id, d)); } catch (e) { setErr(e instanceof Error ? e.message : String(e)); setSent(false); }
  };
  return (
    <div className={`tool-card state-${state}`} data-testid="tool-card" data-tool={block.name} data-state={state}>
      <details open={!!waiting}>
        <summary>
          <span className="tool-icon" aria-hidden>⚙</span>
          <span className="tool-title">{toolTitle(block.name, block.input)}</span>
          <span className="tool-state">{state === 'waiting' ? 'needs your OK' : state}</span>
        </summary>
        <div className="tool-body">
          <ToolInput input={block.input} />
          {result && (<><div className="tool-label">{result.is_error ? 'Error' : 'Result'}</div><pre className="tool-pre" data-testid="tool-result">{result.content}</pre></>)}
        </div>
      </details>
      {approval && (
        <div className="approval" data-testid="approval" data-decision={approval.decision ?? ''}>
          {approval.decision ? (
            <span className="muted small">{approval.decision === 'deny' ? 'Denied' : approval.decision === 'always_allow' ? 'Always allowed' : 'Allowed'}{approval.decided_by ? ` by ${nameOf(approval.decided_by)}` : ''}</span>
          ) : (
            <>
              <span className="approval-q">The agent asks to <b>{approval.summary || approval.tool}</b>. Allow it?</span>
              <div className="approval-buttons">
                <button className="btn primary small" disabled={sent || readOnly} onClick={() => answer('allow')} data-testid="allow">Allow</button>
                <button className="btn small" disabled={sent || readOnly} onClick={() => answer('always_allow')} data-testid="always-allow">Always allow</button>
                <button className="btn danger small" disabled={sent || readOnly} onClick={() => answer('deny')} data-testid="deny">Deny</button>
              </div>
            </>
          )}
          {err && <span className="error small">{err}</span>}
        </div>
      )}
    </div>
  );
}

function Message({ m, results, approvals, toolIds, session, readOnly, myDevice, nameOf }: {
  m: MessageView; results: Map<string, Extract<BlockView, { type: 'tool_result' }>>;
  approvals: Map<string, Extract<BlockView, { type: 'approval' }>>; toolIds: Set<string>; session: string; readOnly: boolean; myDevice: string;
  nameOf: (id: string) => string;
}) {
  // Results and approvals show inside the card of their tool call.
  const visible = m.blocks.filter((b) => b.type !== 'tool_result' && !(b.type === 'approval' && toolIds.has(b.tool_use_id)));
  if (m.role === 'user' && visible.length === 0) return null;
  if (m.role === 'system') {
    return <div className="msg system" data-testid="msg-system">{m.blocks.map((b, i) => {
      // A provider failure in plain words; the raw answer stays one click away.
      const plain = (text: string) => <details className="plain-failure"><summary>{explainFailure(text).title}</summary>{text}</details>;
      if (b.type === 'text') return <span key={i}>{/no model provider configured/.test(b.text) ? plain(b.text) : b.text}</span>;
      if (b.type === 'notice') return <span key={i} data-testid={`notice-${b.kind}`}>{b.kind === 'request_failed' ? plain(b.text) : b.text}</span>;
      if (b.type === 'compaction') {
        // Collapsed: what it replaced; the summary the model continues from on demand.
        return (
          <details key={i} className="compaction" data-testid="compaction">
            <summary>Compacted {b.replaced} earlier message{b.replaced === 1 ? '' : 's'} ({fmtTokens(b.tokens_before)} tokens){b.trigger === 'manual' ? ' on request' : ''}{b.focus ? `, focus: ${b.focus}` : ''}; they stay above but are no longer sent to the model</summary>
            <Markdown source={b.summary} testId="compaction-summary" />
          </details>
        );
      }
      return null;
    })}</div>;
  }
  return (
    <div className={`msg ${m.role}`} data-testid={`msg-${m.role}`}>
      {m.role === 'user' && m.author && m.author !== myDevice && <div className="msg-author">from {nameOf(m.author)}</div>}
      {visible.map((b, i) => {
        switch (b.type) {
          case 'text':
            return m.role === 'user' ? <div key={i} className="bubble">{b.text}</div> : <Markdown key={i} source={b.text} testId="assistant-text" />;
          case 'thinking':
            return <details key={i} className="thinking"><summary>Thinking</summary><div className="thinking-text">{b.text}</div></details>;
          case 'tool_use':
            return <ToolCard key={i} block={b} result={results.get(b.id)} approval={approvals.get(b.id)} session={session} readOnly={readOnly} nameOf={nameOf} />;
          case 'approval':
            return <ToolCard key={i} block={{ type: 'tool_use', id: b.tool_use_id, name: b.tool, input: '{}', status: '' }} approval={b} result={results.get(b.tool_use_id)} session={session} readOnly={readOnly} nameOf={nameOf} />;
          default:
            return b.type === 'unknown' ? <div key={i} className="muted small">[{b.kind} block]</div> : null;
        }
      })}
      {m.cut && <div className="muted small">(cut short by a handoff; continued below)</div>}
    </div>
  );
}

export function Chat({ session, summary, devices, onShowChanges }: {
  session: string | null; summary: SessionSummary | null; devices: Device[]; onShowChanges: () => void;
}) {
  const { api, me } = useApp();
  const core = useCoreStatus();
  const entry = useDoc(session ? `session/${session}` : null);
  const version = useDocVersion(entry?.doc);
  const [draft, setDraft] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);

  const { meta, messages } = useMemo(() => {
    if (!entry) return { meta: null, messages: [] as MessageView[] };
    return { meta: readMeta(entry.doc), messages: readMessages(entry.doc) };
  }, [entry, version]);
  const { results, approvals, toolIds } = useMemo(() => {
    const results = new Map<string, Extract<BlockView, { type: 'tool_result' }>>();
    const approvals = new Map<string, Extract<BlockView, { type: 'approval' }>>();
    const toolIds = new Set<string>();
    for (const m of messages) for (const b of m.blocks) {
      if (b.type === 'tool_result') results.set(b.tool_use_id, b);
      if (b.type === 'approval') approvals.set(b.tool_use_id, b);
      if (b.type === 'tool_use') toolIds.add(b.id);
    }
    return { results, approvals, toolIds };
  }, [messages]);
  const changed = useMemo(() => sessionChanges(messages).length, [messages]);
  // The `/` picker: the workspace's Claude Code commands (`.claude/commands/**/*.md`), read
  // from the synced file index; the runner expands the one a message names.
  const index = useDoc(meta?.workspace ? `ws/${meta.workspace}/index` : null);
  const indexVersion = useDocVersion(index?.doc);
  const commands = useMemo(() => {
    if (!index) return [] as string[];
    const names = readIndex(index.doc)
      .filter((e) => e.kind === 'text' && e.path.startsWith('.claude/commands/') && e.path.endsWith('.md'))
      .map((e) => e.path.slice(e.path.lastIndexOf('/') + 1, -3));
    return [...new Set(names)].sort();
  }, [index, indexVersion]);
  const typed = /^\/([\w:-]*)$/.exec(draft)?.[1];
  const picks = typed === undefined ? [] : commands.filter((c) => c.startsWith(typed));

  useEffect(() => {
    const el = scroller.current;
    if (el && stick.current) el.scrollTop = el.scrollHeight;
  }, [version]);

  if (!session) {
    return <div className="empty"><h2>No session open</h2><p className="muted">Pick a session, or start a new one.</p></div>;
  }
  if (entry?.denied) return <div className="empty"><p className="error">You cannot open this session: {entry.denied}</p></div>;

  const status = meta?.status ?? summary?.status ?? 'idle';
  const st = statusOf(status);
  // The desktop's core knows what runs on this computer, with or without the hub.
  const runningHere = !!core?.running.some((r) => r.session === session);
  const runner = runningHere ? me.device : summary?.runner ?? (meta?.runner && meta.runner.expires > Date.now() ? meta.runner.device : null);
  const where = whereLabel(runner, me.device, devices);
  const nameOf = (id: string) => deviceName(id, me.device, devices);
  const ctx = meta?.context?.tokens ?? contextUsed(messages);
  const windowTokens = meta?.context?.window || CONTEXT_TOKENS;
  const usage = meta?.usage;
  const canRunHere = inDesktop;
  // In the desktop window the core hands over: it flushes the folder first (to the cloud) or
  // runs the session in the opened folder (here).
  const toCloud = () => (inDesktop ? call('continue_in_cloud', { session }) : api.handoff(session, 'cloud'));
  const toHere = () => (inDesktop ? call('continue_here', { session }) : api.handoff(session, 'here'));
  const active = status === 'running' || status === 'waiting_approval';
  // A finished or failed session runs nowhere: a new message (or Retry) starts it in the
  // cloud, so "Continue in cloud" is only offered while a device runs it.
  const movable = where.kind !== 'cloud' && status !== 'done' && status !== 'failed';
  const failedWith = status === 'failed' ? lastFailure(messages) : null;
  const failure = failedWith ? explainFailure(failedWith) : null;

  const act = async (what: string, fn: () => Promise<unknown>) => {
    setBusy(what); setError(null);
    try { await fn(); } catch (e) { setError(e instanceof Error ? e.message : String(e)); }
    setBusy(null);
  };
  const send = async () => {
    const text = draft.trim();
    if (!text) return;
    stick.current = true;
    // In the desktop window a resting session whose folder is open here runs the turn here.
    await act('send', async () => { await (inDesktop ? call('send_message', { session, text }) : api.send(session, text)); setDraft(''); });
  };

  return (
    <div className="chat">
      <div className="chat-head">
        <div className="chat-title" data-testid="chat-title">{meta?.title || summary?.title || 'Session'}</div>
        <div className="chat-sub">
          <span className={`badge tone-${st.tone}`} data-testid="chat-status">{st.label}</span>
          <span className={`where where-${where.kind}`} data-testid="chat-where">{where.label}</span>
          {meta?.workspace && <span className="muted small">{meta.workspace}</span>}
          {/* The server cannot (or, by the operator's choice, does not) sandbox commands. */}
          {meta?.sandbox && !meta.sandbox.startsWith('bubblewrap') && !meta.sandbox.startsWith('none') && (
            <span className="badge tone-fail" title={meta.sandbox} data-testid="chat-sandbox">
              {meta.sandbox.startsWith('UNCONFINED') ? 'Commands unsandboxed' : 'Commands refused: no sandbox'}
            </span>
          )}
          {meta && !inDesktop && (
            <>
              <select className="small" value={meta.model} disabled={!!busy || me.read_only} title="Model (applied before the next request)" data-testid="model-select"
                onChange={(e) => { const model = e.target.value; void act('model', () => api.updateSession(session, { model })); }}>
                {[...new Set([meta.model, ...MODELS].filter(Boolean))].map((m) => <option key={m} value={m}>{m}</option>)}
              </select>
              <select className="small" value={meta.permission_mode} disabled={!!busy || me.read_only} title="Permission mode" data-testid="mode-select"
                onChange={(e) => { const permission_mode = e.target.value; void act('mode', () => api.updateSession(session, { permission_mode })); }}>
                {PERMISSION_MODES.map((m) => <option key={m} value={m}>{m}</option>)}
              </select>
            </>
          )}
          {changed > 0 && <button className="link small" onClick={onShowChanges} data-testid="show-changes">{changed} file{changed > 1 ? 's' : ''} changed</button>}
        </div>
        <div className="chat-actions">
          {movable && <button className="btn small" disabled={!!busy || me.read_only} onClick={() => act('cloud', toCloud)} data-testid="continue-cloud">Continue in cloud</button>}
          {/* A browser cannot run a session itself; the desktop window (same bundle) can. */}
          {canRunHere && where.kind !== 'here' && (
            <button className="btn small" disabled={!!busy} onClick={() => act('here', toHere)} data-testid="continue-here">Continue here</button>
          )}
          {active && <button className="btn danger small" disabled={!!busy || me.read_only} onClick={() => act('stop', () => api.interrupt(session))} data-testid="interrupt">Stop</button>}
        </div>
      </div>
      <div className="chat-scroll" ref={scroller} onScroll={(e) => { const el = e.currentTarget; stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 60; }} data-testid="chat-scroll">
        {!entry?.synced && messages.length === 0 && <p className="muted small-pad">Loading the conversation…</p>}
        {messages.map((m) => <Message key={m.id} m={m} results={results} approvals={approvals} toolIds={toolIds} session={session} readOnly={me.read_only} myDevice={me.device} nameOf={nameOf} />)}
        {status === 'running' && <div className="typing" aria-label="working"><span /><span /><span /></div>}
      </div>
      {failure && failedWith && (
        <div className="failure" role="alert" data-testid="failure" data-kind={failure.kind}>
          <div className="failure-title">{failure.title}</div>
          <div>{failure.what}</div>
          <div className="row">
            {failure.retry && !inDesktop && <button className="btn primary small" disabled={!!busy || me.read_only} onClick={() => act('retry', () => api.retry(session))} data-testid="retry">{busy === 'retry' ? 'Retrying…' : 'Retry'}</button>}
          </div>
          <details><summary>Details</summary><pre>{failedWith}</pre></details>
        </div>
      )}
      <div className="usage" data-testid="usage">
        <div className="ctx-bar" title={`${ctx} of ${windowTokens} tokens of context`}><div style={{ width: `${Math.min(100, (ctx / windowTokens) * 100)}%` }} /></div>
        <span>Context {fmtTokens(ctx)} / {fmtTokens(windowTokens)}</span>
        {meta && meta.background.length > 0 && <span data-testid="background" title={meta.background.map(([id, cmd]) => `${id}: ${cmd}`).join('\n')}>{meta.background.length} background command{meta.background.length > 1 ? 's' : ''}</span>}
        {usage && <span>In {fmtTokens(usage.input + usage.cache_read + usage.cache_write)} · Out {fmtTokens(usage.output)}</span>}
        {usage && <span data-testid="cost">{fmtCost(usage.cost_micros)}</span>}
      </div>
      {picks.length > 0 && (
        <ul className="command-picker" role="listbox" aria-label="Workspace commands" data-testid="command-picker">
          {picks.map((c) => (
            <li key={c} role="option" aria-selected={false}>
              <button type="button" className="link" onClick={() => setDraft(`/${c} `)} data-testid="command-pick">/{c}</button>
            </li>
          ))}
        </ul>
      )}
      <form className="composer" onSubmit={(e) => { e.preventDefault(); send(); }}>
        <textarea
          value={draft} rows={2} placeholder={me.read_only ? 'Read-only access' : 'Message the agent… (/ for commands)'} disabled={me.read_only}
          onChange={(e) => setDraft(e.target.value)} data-testid="composer"
          onKeyDown={(e) => {
            // Tab completes the first command the picker offers.
            if (e.key === 'Tab' && picks.length > 0) { e.preventDefault(); setDraft(`/${picks[0]} `); return; }
            if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) { e.preventDefault(); send(); }
          }}
        />
        <button className="btn primary" disabled={!draft.trim() || busy === 'send'} data-testid="send">Send</button>
      </form>
      {error && <p className="error small-pad" role="alert">{error}</p>}
    </div>
  );
}
