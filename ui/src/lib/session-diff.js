// What the agent changed in one session, from the session document alone: every `write` and
// `edit` tool call that ran without error, per file, in order. An edit is its own hunk
// (old_string → new_string). A write is compared with the last content this session knew for
// the file (an earlier write, or what a `read` returned); when the session never knew it, the
// write is shown whole as the new content.
import { diffLines } from 'diff';

function parseInput(s) {
  try { const v = JSON.parse(s); return v && typeof v === 'object' ? v : {}; } catch { return {}; }
}

/** Undo the read tool's `cat -n` style numbering ("     3\tline"). */
export function unnumber(readOutput) {
  const lines = String(readOutput).split('\n');
  if (lines.at(-1) === '') lines.pop();
  const out = [];
  for (const l of lines) {
    const m = /^ *\d+\t(.*)$/.exec(l);
    if (!m) return null;
    out.push(m[1]);
  }
  return out.length ? `${out.join('\n')}\n` : '';
}

/**
 * @param messages plain messages: {blocks: [{type, id, name, input, content, tool_use_id, is_error}]}
 * @returns [{path, changes: [{kind, before, after, toolUseId}]}] in order of first change
 */
export function sessionChanges(messages) {
  const results = new Map();
  for (const m of messages) {
    for (const b of m.blocks ?? []) {
      if (b.type === 'tool_result') results.set(b.tool_use_id, b);
    }
  }
  const known = new Map();
  const files = new Map();
  for (const m of messages) {
    for (const b of m.blocks ?? []) {
      if (b.type !== 'tool_use') continue;
      const r = results.get(b.id);
      if (!r || r.is_error) continue;
      const input = parseInput(b.input);
      const path = typeof input.path === 'string' ? input.path.replace(/^\.\//, '') : null;
      if (!path) continue;
      if (b.name === 'read') {
        if (!input.offset || input.offset === 1) {
          const text = unnumber(r.content ?? '');
          if (text !== null && !known.has(path)) known.set(path, text);
        }
        continue;
      }
      let change = null;
      if (b.name === 'write' && typeof input.content === 'string') {
        change = { kind: 'write', before: known.has(path) ? known.get(path) : null, after: input.content, toolUseId: b.id };
        known.set(path, input.content);
      } else if (b.name === 'edit' && typeof input.old_string === 'string' && typeof input.new_string === 'string') {
        change = { kind: 'edit', before: input.old_string, after: input.new_string, toolUseId: b.id };
        if (known.has(path)) {
          const k = known.get(path);
          known.set(path, input.replace_all ? k.split(input.old_string).join(input.new_string) : k.replace(input.old_string, input.new_string));
        }
      }
      if (!change) continue;
      if (!files.has(path)) files.set(path, []);
      files.get(path).push(change);
    }
  }
  return [...files.entries()].map(([path, changes]) => ({ path, changes }));
}

/** Lines of a change as [{sign: '+'|'-'|' ', text}]. */
export function changeLines(change) {
  const before = change.before ?? '';
  const after = change.after ?? '';
  const out = [];
  for (const part of diffLines(before, after)) {
    const sign = part.added ? '+' : part.removed ? '-' : ' ';
    const lines = part.value.split('\n');
    if (lines.at(-1) === '') lines.pop();
    for (const text of lines) out.push({ sign, text });
  }
  return out;
}
