import { useEffect, useMemo, useState } from 'react';
import type { Workspace } from '../lib/api';
import { useApp, useDoc, useDocVersion, usePoll } from '../lib/hooks';
import { readIndex, readMessages, type FileEntry } from '../lib/model';
import { sessionChanges } from '../lib/session-diff.js';

interface Dir { name: string; path: string; dirs: Map<string, Dir>; files: FileEntry[] }

function buildTree(entries: FileEntry[]): Dir {
  const root: Dir = { name: '', path: '', dirs: new Map(), files: [] };
  for (const e of entries) {
    const parts = e.path.split('/');
    let d = root;
    for (let i = 0; i < parts.length - 1; i++) {
      const p = parts.slice(0, i + 1).join('/');
      if (!d.dirs.has(parts[i])) d.dirs.set(parts[i], { name: parts[i], path: p, dirs: new Map(), files: [] });
      d = d.dirs.get(parts[i])!;
    }
    d.files.push(e);
  }
  return root;
}

function fileKind(path: string): string {
  if (/\.(md|mdx|markdown|txt)$/i.test(path)) return 'doc';
  if (/\.(png|jpe?g|gif|webp|svg)$/i.test(path)) return 'img';
  return 'code';
}

function DirView({ dir, depth, isOpen, toggle, selected, changed, onOpen }: {
  dir: Dir; depth: number; isOpen: (p: string) => boolean; toggle: (p: string) => void; selected: string | null; changed: Set<string>; onOpen: (p: string) => void;
}) {
  const dirs = [...dir.dirs.values()].sort((a, b) => a.name.localeCompare(b.name));
  return (
    <>
      {dirs.map((d) => (
        <li key={d.path}>
          <button className="tree-row dir" style={{ paddingLeft: 10 + depth * 14 }} onClick={() => toggle(d.path)} aria-expanded={isOpen(d.path)}>
            <span className="caret">{isOpen(d.path) ? '▾' : '▸'}</span>{d.name}
          </button>
          {isOpen(d.path) && <ul><DirView dir={d} depth={depth + 1} isOpen={isOpen} toggle={toggle} selected={selected} changed={changed} onOpen={onOpen} /></ul>}
        </li>
      ))}
      {dir.files.map((f) => {
        const name = f.path.split('/').pop()!;
        return (
          <li key={f.path}>
            <button className={`tree-row file ${selected === f.path ? 'selected' : ''}`} style={{ paddingLeft: 10 + depth * 14 + 14 }} onClick={() => onOpen(f.path)} data-testid={`file-${f.path}`} title={f.path}>
              <span className={`file-icon fi-${fileKind(name)}`} aria-hidden />{name}
              {changed.has(f.path) && <span className="changed-dot" title="Changed in this session" data-testid="changed-dot" />}
            </button>
          </li>
        );
      })}
    </>
  );
}

/** Without an open session, the person picks which workspace to browse. */
function WorkspacePicker({ workspace, onPick }: { workspace: string | null; onPick: (w: string) => void }) {
  const { api } = useApp();
  const [list, setList] = useState<Workspace[] | null>(null);
  // Polled: a folder synced from a device (`jarvis sync`) shows up here within seconds.
  usePoll(() => { api.workspaces().then(setList).catch(() => setList([])); }, 3000, [api]);
  // The only workspace is the one to browse.
  useEffect(() => { if (!workspace && list?.length === 1) onPick(list[0].id); }, [list, workspace, onPick]);
  if (list === null) return null;
  if (!list.length) {
    return (
      <p className="muted small-pad" data-testid="no-workspace">
        No workspace yet. Sync a folder from your computer with <code>jarvis sync &lt;folder&gt;</code>, create one under <b>Set up</b>, or ask an owner to invite you to theirs.
      </p>
    );
  }
  return (
    <div className="small-pad">
      <select aria-label="Workspace" value={workspace ?? ''} onChange={(e) => onPick(e.target.value)} data-testid="workspace-picker">
        <option value="" disabled>Choose a workspace…</option>
        {list.map((w) => <option key={w.id} value={w.id}>{w.name || w.id}</option>)}
      </select>
    </div>
  );
}

export function FileTree({ workspace, session, selected, onOpen, onShowChanges, onPickWorkspace }: {
  workspace: string | null; session: string | null; selected: string | null; onOpen: (p: string) => void; onShowChanges: () => void;
  onPickWorkspace: (w: string) => void;
}) {
  const index = useDoc(workspace ? `ws/${workspace}/index` : null);
  const iv = useDocVersion(index?.doc);
  const sess = useDoc(session ? `session/${session}` : null);
  const sv = useDocVersion(sess?.doc);
  // Folders start open in a small workspace and closed in a large one; a click flips one.
  const [flipped, setFlipped] = useState<Set<string>>(new Set());
  const entries = useMemo(() => (index ? readIndex(index.doc) : []), [index, iv]);
  const tree = useMemo(() => buildTree(entries), [entries]);
  const changed = useMemo(() => new Set(sess ? sessionChanges(readMessages(sess.doc)).map((c) => c.path) : []), [sess, sv]);
  const toggle = (p: string) => setFlipped((s) => { const n = new Set(s); if (n.has(p)) n.delete(p); else n.add(p); return n; });
  const openByDefault = entries.length <= 200;
  // The folders of the selected file and of changed files are always reachable.
  const isOpen = (p: string) => {
    const base = openByDefault || !!selected?.startsWith(`${p}/`) || [...changed].some((c) => c.startsWith(`${p}/`));
    return flipped.has(p) ? !base : base;
  };

  return (
    <div className="files">
      <div className="panel-head">
        <h2>Files{workspace ? <span className="muted"> · {workspace}</span> : null}</h2>
        {changed.size > 0 && <button className="link small" onClick={onShowChanges}>Changes ({changed.size})</button>}
      </div>
      {!session && <WorkspacePicker workspace={workspace} onPick={onPickWorkspace} />}
      {index?.denied && <p className="error small-pad">{index.denied}</p>}
      {workspace && index && !index.synced && entries.length === 0 && <p className="muted small-pad">Loading…</p>}
      {workspace && index?.synced && entries.length === 0 && <p className="muted small-pad">No files yet.</p>}
      <ul className="tree" data-testid="file-tree">
        <DirView dir={tree} depth={0} isOpen={isOpen} toggle={toggle} selected={selected} changed={changed} onOpen={onOpen} />
      </ul>
    </div>
  );
}
