import * as Y from 'yjs';
import { readFileSync } from 'node:fs';
const trace = JSON.parse(readFileSync('/work/shared/data/editing-trace.json', 'utf8'));
const doc = new Y.Doc();
const t = doc.getText('content');
let bytes = 0, n = 0;
doc.on('update', (u) => { bytes += u.length; n++; });
const t0 = performance.now();
for (const [pos, del, text] of trace) {
  if (del > 0) t.delete(pos, del); else t.insert(pos, text);
}
const t1 = performance.now();
const snap = Y.encodeStateAsUpdate(doc);
const t2 = performance.now();
const d2 = new Y.Doc(); Y.applyUpdate(d2, snap);
const t3 = performance.now();
console.log(JSON.stringify({ replay_ms: t1 - t0, bytes_per_update: bytes / n, snapshot: snap.length, load_ms: t3 - t2, len: t.length }));
