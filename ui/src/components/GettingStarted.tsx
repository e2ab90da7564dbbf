import { useEffect, useState } from 'react';
import { type Invite, type ProviderForm, type ProviderStatus, type Workspace } from '../lib/api';
import { useApp } from '../lib/hooks';
import { Dialog } from './Dialog';

type Step = 'provider' | 'workspace' | 'invite';
const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

const KINDS: { kind: ProviderForm['kind']; label: string }[] = [
  { kind: 'anthropic', label: 'Anthropic API key' },
  { kind: 'bedrock', label: 'Amazon Bedrock' },
  { kind: 'vertex', label: 'Google Vertex AI' },
  { kind: 'gateway', label: 'LLM gateway' },
  { kind: 'openai', label: 'OpenAI-compatible server' },
];

/** The fields each provider needs: [field, label, secret?, placeholder]. */
const FIELDS: Record<ProviderForm['kind'], [keyof ProviderForm, string, boolean, string][]> = {
  anthropic: [['api_key', 'API key', true, 'sk-ant-…'], ['base_url', 'Address (leave empty for api.anthropic.com)', false, 'https://api.anthropic.com']],
  bedrock: [['region', 'AWS region', false, 'us-east-1'], ['access_key_id', 'Access key id', false, 'AKIA…'], ['secret_access_key', 'Secret access key', true, ''], ['session_token', 'Session token (optional)', true, '']],
  vertex: [['region', 'Region', false, 'us-east5'], ['project', 'Project id', false, 'my-project'], ['credentials_json', 'Service account key (JSON)', true, '{ "type": "service_account", … }']],
  gateway: [['base_url', 'Gateway address', false, 'https://llm.example.com'], ['auth_token', 'Gateway token', true, '']],
  openai: [['base_url', 'Server address', false, 'http://ollama.internal:11434/v1'], ['api_key', 'API key (optional)', true, ''], ['model', 'Model', false, 'llama3.1']],
};

function ProviderStep() {
  const { api } = useApp();
  const [status, setStatus] = useState<ProviderStatus | null>(null);
  const [form, setForm] = useState<ProviderForm>({ kind: 'anthropic' });
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);
  useEffect(() => { api.provider().then(setStatus).catch(() => setStatus(null)); }, [api]);
  const save = async (e: React.FormEvent) => {
    e.preventDefault();
    setBusy(true); setResult(null);
    try {
      await api.saveProvider(form);
      setResult({ ok: true, text: 'It answered. Saved: new turns use it now.' });
      setForm({ kind: form.kind });
      setStatus(await api.provider());
    } catch (err) {
      setResult({ ok: false, text: message(err) });
    }
    setBusy(false);
  };
  return (
    <form className="stack" onSubmit={save} data-testid="provider-form">
      <p className="muted">
        {status?.configured
          ? `A provider is set up (${status.kind ?? 'from the server\u2019s environment'}${status.source === 'browser' ? ', saved here' : ''}). Saving another replaces it.`
          : 'No AI provider yet: sessions cannot answer until one is set up.'}
      </p>
      <label htmlFor="pv-kind">Provider</label>
      <select id="pv-kind" value={form.kind} onChange={(e) => setForm({ kind: e.target.value as ProviderForm['kind'] })} data-testid="provider-kind">
        {KINDS.map((k) => <option key={k.kind} value={k.kind}>{k.label}</option>)}
      </select>
      {FIELDS[form.kind].map(([field, label, secret, placeholder]) => (
        <div className="stack" key={field}>
          <label htmlFor={`pv-${field}`}>{label}</label>
          {field === 'credentials_json'
            ? <textarea id={`pv-${field}`} rows={4} value={form[field] ?? ''} placeholder={placeholder} onChange={(e) => setForm({ ...form, [field]: e.target.value })} data-testid={`provider-${field}`} />
            : <input id={`pv-${field}`} type={secret ? 'password' : 'text'} autoComplete="off" value={form[field] ?? ''} placeholder={placeholder} onChange={(e) => setForm({ ...form, [field]: e.target.value })} data-testid={`provider-${field}`} />}
        </div>
      ))}
      <p className="muted small">Tested with one short request before it is saved. Kept encrypted on this server; never shown again.</p>
      <div className="row end"><button className="btn primary" disabled={busy} data-testid="provider-save">{busy ? 'Testing…' : 'Test and save'}</button></div>
      {result && <p className={result.ok ? 'ok' : 'error'} role="status" data-testid="provider-result">{result.text}</p>}
    </form>
  );
}

async function readFiles(list: FileList): Promise<{ path: string; content: string }[]> {
  const out = [];
  for (const f of Array.from(list)) {
    const bytes = new Uint8Array(await f.arrayBuffer());
    let bin = '';
    for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    // A folder upload names files by their path inside it.
    const rel = (f as File & { webkitRelativePath?: string }).webkitRelativePath || f.name;
    out.push({ path: rel.includes('/') ? rel.slice(rel.indexOf('/') + 1) : rel, content: btoa(bin) });
  }
  return out;
}

function WorkspaceStep({ onCreated }: { onCreated: (id: string) => void }) {
  const { api } = useApp();
  const [id, setId] = useState('');
  const [source, setSource] = useState<'empty' | 'files' | 'git'>('empty');
  const [files, setFiles] = useState<FileList | null>(null);
  const [url, setUrl] = useState('');
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);
  const create = async (e: React.FormEvent) => {
    e.preventDefault();
    setBusy(true); setResult(null);
    try {
      const body = source === 'files'
        ? { id, source, files: files ? await readFiles(files) : [] }
        : source === 'git' ? { id, source, git: { url, token } } : { id, source };
      const r = await api.createWorkspace(body);
      setResult({ ok: true, text: `Workspace ${r.workspace.id} is ready${source === 'empty' ? '' : ` with ${r.files} file${r.files === 1 ? '' : 's'}`}.` });
      setToken('');
      onCreated(r.workspace.id);
    } catch (err) {
      setResult({ ok: false, text: message(err) });
    }
    setBusy(false);
  };
  return (
    <form className="stack" onSubmit={create} data-testid="workspace-form">
      <label htmlFor="ws-id">Name</label>
      <input id="ws-id" value={id} onChange={(e) => setId(e.target.value)} placeholder="notes" pattern="[A-Za-z0-9_.\-]{1,64}" required data-testid="workspace-id" />
      <fieldset className="choices">
        <legend className="muted small">Start with</legend>
        {([['empty', 'Nothing (an empty folder)'], ['files', 'Files from this computer'], ['git', 'A git repository']] as const).map(([v, label]) => (
          <label key={v} className="choice"><input type="radio" name="ws-source" checked={source === v} onChange={() => setSource(v)} data-testid={`workspace-source-${v}`} /> {label}</label>
        ))}
      </fieldset>
      {source === 'files' && <input type="file" multiple onChange={(e) => setFiles(e.target.files)} data-testid="workspace-files" />}
      {source === 'git' && (
        <>
          <label htmlFor="ws-url">Repository address (https)</label>
          <input id="ws-url" value={url} onChange={(e) => setUrl(e.target.value)} placeholder="https://github.com/you/notes.git" data-testid="workspace-git-url" required />
          <label htmlFor="ws-token">Access token (for a private repository)</label>
          <input id="ws-token" type="password" autoComplete="off" value={token} onChange={(e) => setToken(e.target.value)} data-testid="workspace-git-token" />
        </>
      )}
      <div className="row end"><button className="btn primary" disabled={busy || !id.trim()} data-testid="workspace-create">{busy ? 'Creating…' : 'Create workspace'}</button></div>
      {result && <p className={result.ok ? 'ok' : 'error'} role="status" data-testid="workspace-result">{result.text}</p>}
    </form>
  );
}

function InviteStep() {
  const { api, me } = useApp();
  const [workspaces, setWorkspaces] = useState<Workspace[]>([]);
  const [workspace, setWorkspace] = useState('');
  const [role, setRole] = useState('editor');
  const [admin, setAdmin] = useState(false);
  const [invite, setInvite] = useState<Invite | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    api.workspaces().then((w) => { setWorkspaces(w); if (w.length) setWorkspace((cur) => cur || w[0].id); }).catch((e) => setError(message(e)));
  }, [api]);
  const create = async (e: React.FormEvent) => {
    e.preventDefault();
    setError(null); setInvite(null);
    try { setInvite(await api.invite({ admin, workspace: workspace || undefined, role: workspace ? role : undefined })); } catch (err) { setError(message(err)); }
  };
  const link = invite ? `${location.origin}${invite.path}` : '';
  return (
    <form className="stack" onSubmit={create} data-testid="invite-create-form">
      <p className="muted">A link that signs one person up. It works once and expires in 3 days.</p>
      <label htmlFor="inv-ws">Workspace they get</label>
      <select id="inv-ws" value={workspace} onChange={(e) => setWorkspace(e.target.value)} data-testid="invite-workspace">
        {me.admin && <option value="">(none)</option>}
        {workspaces.map((w) => <option key={w.id} value={w.id}>{w.name}</option>)}
      </select>
      {workspace && (
        <>
          <label htmlFor="inv-role">As</label>
          <select id="inv-role" value={role} onChange={(e) => setRole(e.target.value)} data-testid="invite-role">
            <option value="viewer">Viewer (reads)</option>
            <option value="editor">Editor (works in it)</option>
            <option value="owner">Owner (also manages members)</option>
          </select>
        </>
      )}
      {me.admin && <label className="choice"><input type="checkbox" checked={admin} onChange={(e) => setAdmin(e.target.checked)} data-testid="invite-admin" /> Also an admin of this server</label>}
      <div className="row end"><button className="btn primary" data-testid="invite-create">Create link</button></div>
      {invite && (
        <div className="stack">
          <label htmlFor="inv-link">Send this link</label>
          <input id="inv-link" readOnly value={link} onFocus={(e) => e.currentTarget.select()} data-testid="invite-link" />
          <div className="row end"><button type="button" className="btn small" onClick={() => navigator.clipboard?.writeText(link).catch(() => {})}>Copy</button></div>
        </div>
      )}
      {error && <p className="error" role="alert">{error}</p>}
    </form>
  );
}

/** Set up: the AI provider (admins), a workspace, invitations. */
export function GettingStarted({ onClose, onWorkspace }: { onClose: () => void; onWorkspace: (id: string) => void }) {
  const { me } = useApp();
  const [step, setStep] = useState<Step>(me.admin ? 'provider' : 'workspace');
  const steps: [Step, string][] = [
    ...(me.admin ? [['provider', '1. AI provider'] as [Step, string]] : []),
    ['workspace', me.admin ? '2. Workspace' : 'Workspace'],
    ['invite', me.admin ? '3. Invite' : 'Invite'],
  ];
  return (
    <Dialog title="Set up My Jarvis" onClose={onClose}>
      <nav className="steps" aria-label="Steps">
        {steps.map(([s, label]) => (
          <button key={s} type="button" className={step === s ? 'active' : ''} onClick={() => setStep(s)} data-testid={`step-${s}`}>{label}</button>
        ))}
      </nav>
      {step === 'provider' && <ProviderStep />}
      {step === 'workspace' && <WorkspaceStep onCreated={onWorkspace} />}
      {step === 'invite' && <InviteStep />}
      <div className="row end"><button type="button" className="btn ghost" onClick={onClose} data-testid="setup-close">Done</button></div>
    </Dialog>
  );
}

