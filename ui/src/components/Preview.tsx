import { useEffect, useMemo, useState } from 'react';
import { useApp, useDoc, useDocVersion } from '../lib/hooks';
import { readIndex, readMessages } from '../lib/model';
import { changeLines, sessionChanges, type FileChanges } from '../lib/session-diff.js';
import { Markdown } from './Markdown';

const IMAGE_TYPES: Record<string, string> = { png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', webp: 'image/webp', svg: 'image/svg+xml' };
const ext = (p: string) => p.split('.').pop()?.toLowerCase() ?? '';

function Code({ text, path }: { text: string; path: string }) {
  const [hl, setHl] = useState<{ html: string | null; for: string } | null>(null);
  useEffect(() => {
    let live = true;
    import('../lib/highlight').then((m) => { if (live) setHl({ html: m.highlight(text, path), for: text }); });
    return () => { live = false; };
  }, [text, path]);
  const lines = text.split('\n').length;
  return (
    <div className="code">
      <pre className="gutter" aria-hidden>{Array.from({ length: lines }, (_, i) => i + 1).join('\n')}</pre>
      {hl && hl.for === text && hl.html !== null
        ? <pre className="hljs" data-testid="code"><code dangerouslySetInnerHTML={{ __html: hl.html }} /></pre>
        : <pre className="hljs" data-testid="code"><code>{text}</code></pre>}
    </div>
  );
}

function TextFile({ workspace, doc, path, onOpenFile }: { workspace: string; doc: string; path: string; onOpenFile: (p: string) => void }) {
  const entry = useDoc(`ws/${workspace}/file/${doc}`);
  const v = useDocVersion(entry?.doc);
  const text = useMemo(() => entry?.doc.getText('content').toString() ?? '', [entry, v]);
  const [source, setSource] = useState(false);
  const e = ext(path);
  const markdown = e === 'md' || e === 'markdown' || e === 'mdx';
  if (entry?.denied) return <p className="error small-pad">{entry.denied}</p>;
  if (!entry?.synced && !text) return <p className="muted small-pad">Loading…</p>;
  return (
    <>
      {markdown && (
        <div className="seg">
          <button className={!source ? 'on' : ''} onClick={() => setSource(false)}>Preview</button>
          <button className={source ? 'on' : ''} onClick={() => setSource(true)}>Source</button>
          {e === 'mdx' && <span className="muted small">MDX is shown as Markdown: its code is never run.</span>}
        </div>
      )}
      <div className="preview-body" data-testid="preview-body">
        {markdown && !source ? <Markdown source={text} mdx={e === 'mdx'} testId="markdown" path={path} onOpenFile={onOpenFile} /> : <Code text={text} path={path} />}
      </div>
    </>
  );
}

function BlobFile({ workspace, hash, path, size }: { workspace: string; hash: string; path: string; size: number }) {
  const { api } = useApp();
  const type = IMAGE_TYPES[ext(path)];
  const [url, setUrl] = useState<string | null>(null);
  const [err, setErr] = useState<string | null>(null);
  useEffect(() => {
    if (!type) return;
    let u: string | null = null;
    let live = true;
    api.blobUrl(workspace, hash, type).then((x) => { u = x; if (live) setUrl(x); else URL.revokeObjectURL(x); }).catch((e) => setErr(e.message));
    return () => { live = false; if (u) URL.revokeObjectURL(u); };
  }, [api, workspace, hash, type]);
  if (!type) return <p className="muted small-pad">A binary file ({size.toLocaleString()} bytes); no preview.</p>;
  if (err) return <p className="error small-pad">{err}</p>;
  return <div className="image-preview">{url ? <img src={url} alt={path} data-testid="image" /> : <p className="muted">Loading…</p>}</div>;
}

export function Changes({ files }: { files: FileChanges[] }) {
  if (files.length === 0) return <p className="muted small-pad">The agent has not changed any file in this session.</p>;
  return (
    <div className="changes" data-testid="changes">
      {files.map((f) => (
        <section key={f.path} className="change-file" data-testid={`diff-${f.path}`}>
          <h3>{f.path}</h3>
          {f.changes.map((c) => (
            <div key={c.toolUseId} className="hunk">
              <div className="hunk-head">{c.kind === 'edit' ? 'Edited' : c.before === null ? 'Written (new content)' : 'Rewritten'}</div>
              <pre className="diff">
                {changeLines(c).map((l, i) => (
                  <div key={i} className={`dl ${l.sign === '+' ? 'add' : l.sign === '-' ? 'del' : 'ctx'}`}><span className="sign">{l.sign}</span>{l.text}</div>
                ))}
              </pre>
            </div>
          ))}
        </section>
      ))}
    </div>
  );
}

export function Preview({ workspace, session, path, mode, setMode, onOpenFile }: {
  workspace: string | null; session: string | null; path: string | null; mode: 'file' | 'changes'; setMode: (m: 'file' | 'changes') => void;
  onOpenFile: (p: string) => void;
}) {
  const index = useDoc(workspace ? `ws/${workspace}/index` : null);
  const iv = useDocVersion(index?.doc);
  const sess = useDoc(session ? `session/${session}` : null);
  const sv = useDocVersion(sess?.doc);
  const entry = useMemo(() => (index && path ? readIndex(index.doc).find((e) => e.path === path) ?? null : null), [index, iv, path]);
  const changes = useMemo(() => (sess ? sessionChanges(readMessages(sess.doc)) : []), [sess, sv]);
  return (
    <div className="preview">
      <div className="panel-head">
        <div className="seg" role="tablist">
          <button role="tab" aria-selected={mode === 'file'} className={mode === 'file' ? 'on' : ''} onClick={() => setMode('file')} data-testid="mode-file">File</button>
          <button role="tab" aria-selected={mode === 'changes'} className={mode === 'changes' ? 'on' : ''} onClick={() => setMode('changes')} data-testid="mode-changes">
            Changes{changes.length ? ` (${changes.length})` : ''}
          </button>
        </div>
        {mode === 'file' && path && <span className="preview-path" title={path}>{path}</span>}
      </div>
      {mode === 'changes' ? <Changes files={changes} /> : !path || !workspace ? (
        <div className="empty"><p className="muted">Choose a file to preview it here.</p></div>
      ) : !entry ? (
        <p className="muted small-pad">{index?.synced ? 'This file is no longer in the workspace.' : 'Loading…'}</p>
      ) : entry.kind === 'text' && entry.doc ? (
        <TextFile key={entry.doc} workspace={workspace} doc={entry.doc} path={path} onOpenFile={onOpenFile} />
      ) : entry.hash ? (
        <BlobFile workspace={workspace} hash={entry.hash} path={path} size={entry.size} />
      ) : <p className="muted small-pad">No content.</p>}
    </div>
  );
}
