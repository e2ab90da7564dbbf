// Plain views of the Yjs documents (shapes from crates/sync/src/doc): read defensively, since
// any peer may write anything. Numbers written by yrs as 64-bit integers arrive as BigInt.
import * as Y from 'yjs';

export const num = (v: unknown): number =>
  typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : typeof v === 'string' ? Number(v) || 0 : 0;
const str = (v: unknown): string => (typeof v === 'string' ? v : v instanceof Y.Text ? v.toString() : '');

export interface Runner { device: string; epoch: number; expires: number }
export interface MetaView {
  title: string; workspace: string; model: string; status: string;
  runner: Runner | null; handoff: { to: string; by: string } | null;
  /** How the cloud runs this session's commands (written by the cloud runner; "" elsewhere). */
  sandbox: string;
  usage: { input: number; output: number; cache_read: number; cache_write: number; cost_micros: number };
  /** The runner's context meter (tokens of the next request, the model's window); null before one ran. */
  context: { tokens: number; window: number } | null;
  /** Background commands the runner has running: id → command line. */
  background: [string, string][];
  permission_mode: string;
}

/** Models offered in the chat header (the session's own is always offered too). */
export const MODELS = ['claude-sonnet-5-5', 'claude-opus-5-5', 'claude-haiku-4-5'];
export const PERMISSION_MODES = ['ask', 'accept-edits', 'plan', 'allow-all'];
export type BlockView =
  | { type: 'text'; text: string }
  | { type: 'thinking'; text: string }
  | { type: 'tool_use'; id: string; name: string; input: string; status: string }
  | { type: 'tool_result'; tool_use_id: string; content: string; is_error: boolean }
  | { type: 'approval'; id: string; tool_use_id: string; tool: string; summary: string; decision: string | null; decided_by: string | null }
  | { type: 'compaction'; summary: string; replaced: number; tokens_before: number; trigger: string; focus: string | null }
  | { type: 'notice'; kind: string; text: string }
  | { type: 'unknown'; kind: string };
export interface MessageView {
  id: string; role: string; author: string; created: number; cut: boolean;
  usage: { input: number; output: number; cache_read: number; cache_write: number } | null;
  blocks: BlockView[];
}

function usageOf(v: unknown) {
  const u = (v && typeof v === 'object' ? v : {}) as Record<string, unknown>;
  return { input: num(u.input), output: num(u.output), cache_read: num(u.cache_read), cache_write: num(u.cache_write), cost_micros: num(u.cost_micros) };
}

export function readMeta(doc: Y.Doc): MetaView {
  const m = doc.getMap('meta');
  const r = m.get('runner') as Record<string, unknown> | null | undefined;
  const h = m.get('handoff') as Record<string, unknown> | null | undefined;
  return {
    title: str(m.get('title')),
    workspace: str(m.get('workspace')),
    model: str(m.get('model')),
    status: str(m.get('status')) || 'idle',
    runner: r && typeof r === 'object' && typeof r.device === 'string'
      ? { device: r.device, epoch: num(r.epoch), expires: num(r.expires) } : null,
    handoff: h && typeof h === 'object' && typeof h.to === 'string' ? { to: h.to, by: str(h.by) } : null,
    sandbox: str(m.get('setting.sandbox')),
    usage: usageOf(m.get('usage')),
    permission_mode: str(m.get('setting.permission_mode')) || 'ask',
    context: m.get('context_window') !== undefined
      ? { tokens: num(m.get('context_tokens')), window: num(m.get('context_window')) } : null,
    background: (() => {
      const b = m.get('background');
      return b && typeof b === 'object' && !(b instanceof Y.AbstractType)
        ? Object.entries(b as Record<string, unknown>).filter(([, v]) => typeof v === 'string').map(([k, v]) => [k, v as string] as [string, string]).sort()
        : [];
    })(),
  };
}

function readBlock(b: unknown): BlockView {
  if (!(b instanceof Y.Map)) return { type: 'unknown', kind: 'malformed' };
  const type = str(b.get('type'));
  switch (type) {
    case 'text': return { type, text: str(b.get('text')) };
    case 'thinking': return { type, text: str(b.get('text')) };
    case 'tool_use': return { type, id: str(b.get('id')), name: str(b.get('name')), input: str(b.get('input')), status: str(b.get('status')) };
    case 'tool_result': return { type, tool_use_id: str(b.get('tool_use_id')), content: str(b.get('content')), is_error: b.get('is_error') === true };
    case 'approval': return {
      type, id: str(b.get('id')), tool_use_id: str(b.get('tool_use_id')), tool: str(b.get('tool')), summary: str(b.get('summary')),
      decision: str(b.get('decision')) || null, decided_by: str(b.get('decided_by')) || null,
    };
    case 'compaction': return {
      type, summary: str(b.get('summary')), replaced: num(b.get('replaced')), tokens_before: num(b.get('tokens_before')),
      trigger: str(b.get('trigger')), focus: str(b.get('focus')) || null,
    };
    case 'notice': return { type, kind: str(b.get('kind')), text: str(b.get('text')) };
    default: return { type: 'unknown', kind: type || 'malformed' };
  }
}

export function readMessages(doc: Y.Doc): MessageView[] {
  const out: MessageView[] = [];
  doc.getArray('messages').forEach((m) => {
    if (!(m instanceof Y.Map)) return;
    const blocks = m.get('blocks');
    out.push({
      id: str(m.get('id')),
      role: str(m.get('role')),
      author: str(m.get('author')),
      created: num(m.get('created')),
      cut: m.get('cut') === true,
      usage: m.get('usage') ? usageOf(m.get('usage')) : null,
      blocks: blocks instanceof Y.Array ? blocks.toArray().map(readBlock) : [],
    });
  });
  return out;
}

export interface FileEntry { path: string; kind: 'text' | 'blob'; doc: string | null; hash: string | null; size: number; modified: number }

export function readIndex(doc: Y.Doc): FileEntry[] {
  const out: FileEntry[] = [];
  doc.getMap('files').forEach((v, path) => {
    const e = v as Record<string, unknown> | null;
    if (!e || typeof e !== 'object' || e.deleted === true) return;
    const kind = e.kind === 'blob' ? 'blob' : e.kind === 'text' ? 'text' : null;
    if (!kind) return;
    out.push({ path, kind, doc: typeof e.doc === 'string' ? e.doc : null, hash: typeof e.hash === 'string' ? e.hash : null, size: num(e.size), modified: num(e.modified) });
  });
  out.sort((a, b) => a.path.localeCompare(b.path));
  return out;
}

/** The context window the bar measures against when the runner has not reported one yet. */
export const CONTEXT_TOKENS = 200_000;

/** Tokens the last model turn sent (what the context holds now). */
export function contextUsed(messages: MessageView[]): number {
  for (let i = messages.length - 1; i >= 0; i--) {
    const u = messages[i].usage;
    if (u) return u.input + u.cache_read + u.cache_write + u.output;
  }
  return 0;
}
