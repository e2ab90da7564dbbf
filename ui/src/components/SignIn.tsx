import { useEffect, useRef, useState } from 'react';
import { Api, ApiError, type InviteInfo, type Pairing } from '../lib/api';
import type { Auth } from '../lib/auth';

function browserName(): string {
  const ua = navigator.userAgent;
  const what = /iPhone|iPad/.test(ua) ? 'iPhone/iPad' : /Android/.test(ua) ? 'Android' : /Mac/.test(ua) ? 'Mac' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : 'a computer';
  return `Browser on ${what}`;
}

/** Set after the first sign-in in this browser: pairing leads from then on (a device to
 * approve from exists); before it, the token or the setup leads. */
const SEEN = 'jarvis.signed-in-before';
export function rememberSignedIn(): void { try { localStorage.setItem(SEEN, '1'); } catch { /* private mode */ } }
/** The setup screen asked for the "Get started" guide after the owner is made. */
export const GETTING_STARTED = 'jarvis.getting-started';

function inviteFromUrl(): string | null {
  const m = /^\/invite\/(ji_[0-9a-f]{32})\/?$/.exec(location.pathname);
  return m ? m[1] : null;
}

function setupCodeFromUrl(): string {
  const m = /(?:^#|&)setup=([A-Za-z0-9-]{4,16})/.exec(location.hash);
  return m ? m[1] : '';
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** The first visit to a fresh server: the owner account, guarded by the printed setup code. */
function SetupOwner({ onSignedIn, onSkip }: { onSignedIn: (a: Auth) => void; onSkip: () => void }) {
  const [code, setCode] = useState(setupCodeFromUrl);
  const [name, setName] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const submit = async (ev: React.FormEvent) => {
    ev.preventDefault();
    setBusy(true); setError(null);
    try {
      const r = await new Api(null).setup(code.trim(), name.trim());
      history.replaceState(null, '', '/');
      sessionStorage.setItem(GETTING_STARTED, '1');
      onSignedIn({ token: r.token, device: null });
    } catch (e) { setError(message(e)); setBusy(false); }
  };
  return (
    <form className="stack" onSubmit={submit} data-testid="setup-form">
      <h1>Create the owner account</h1>
      <p>This server is new. The setup code was printed where it was started (the line <code>first start: open …</code>).</p>
      <label htmlFor="setup-code">Setup code</label>
      <input id="setup-code" className="code-input" value={code} onChange={(e) => setCode(e.target.value)} placeholder="ABCD-EFGH" autoComplete="off" data-testid="setup-code" required />
      <label htmlFor="setup-name">Your name</label>
      <input id="setup-name" value={name} onChange={(e) => setName(e.target.value)} placeholder="Ada" autoComplete="name" data-testid="setup-name" required maxLength={64} />
      <button className="btn primary wide" disabled={busy || !code.trim() || !name.trim()} data-testid="setup-submit">Create the owner account</button>
      {error && <p className="error" role="alert">{error}</p>}
      <button type="button" className="link small" onClick={onSkip} data-testid="setup-skip">I already have a token</button>
    </form>
  );
}

/** An invitation link: who invited, to what, and a name to sign up with. */
function AcceptInvite({ code, onSignedIn }: { code: string; onSignedIn: (a: Auth) => void }) {
  const api = useRef(new Api(null)).current;
  const [info, setInfo] = useState<InviteInfo | null>(null);
  const [name, setName] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => { api.inviteInfo(code).then(setInfo).catch((e) => setError(message(e))); }, [api, code]);
  const submit = async (ev: React.FormEvent) => {
    ev.preventDefault();
    setBusy(true); setError(null);
    try {
      const r = await api.acceptInvite(code, name.trim());
      history.replaceState(null, '', '/');
      onSignedIn({ token: r.token, device: null });
    } catch (e) { setError(message(e)); setBusy(false); }
  };
  return (
    <form className="stack" onSubmit={submit} data-testid="invite-form">
      <h1>Join My Jarvis</h1>
      {info && (
        <p data-testid="invite-info">
          <b>{info.invited_by || 'Someone'}</b> invited you{info.workspace ? <> to the workspace <b>{info.workspace}</b> as {info.role === 'viewer' ? 'a viewer' : `an ${info.role}`}</> : ''}{info.admin ? ' as an admin of this server' : ''}.
        </p>
      )}
      <label htmlFor="invite-name">Your name</label>
      <input id="invite-name" value={name} onChange={(e) => setName(e.target.value)} autoComplete="name" data-testid="invite-name" required maxLength={64} disabled={!info} />
      <button className="btn primary wide" disabled={busy || !info || !name.trim()} data-testid="invite-submit">Sign up</button>
      {error && <p className="error" role="alert">{error}</p>}
    </form>
  );
}

/**
 * Sign in: on a fresh server, the owner's setup; with an invitation link, the sign-up; else a
 * token or pairing (a code approved where you are already signed in) — the token first in a
 * browser that never signed in (there may be no device to approve from yet).
 */
export function SignIn({ onSignedIn, notice }: { onSignedIn: (a: Auth) => void; notice: string | null }) {
  const [pairing, setPairing] = useState<Pairing | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [setupNeeded, setSetupNeeded] = useState<boolean | null>(null);
  const invite = inviteFromUrl();
  const api = useRef(new Api(null)).current;
  const pairFirst = (() => { try { return localStorage.getItem(SEEN) === '1'; } catch { return false; } })();
  // Time to interactive, as ui/scripts/measure.mjs reads it: the first screen has rendered and
  // its handlers are attached.
  useEffect(() => { performance.mark('jarvis:interactive'); }, []);
  useEffect(() => {
    if (invite) return;
    api.setupStatus().then((s) => setSetupNeeded(s.needed)).catch(() => setSetupNeeded(false));
  }, [api, invite]);

  useEffect(() => {
    if (!pairing) return;
    let live = true;
    const started = Date.now();
    const poll = async () => {
      if (!live) return;
      try {
        const r = await api.pairPoll(pairing.device_code);
        if (live) onSignedIn({ token: r.token, device: r.device.id });
        return;
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 428) {
          if (live) { setError(message(e)); setPairing(null); }
          return;
        }
      }
      if (Date.now() - started > pairing.expires_in * 1000) {
        if (live) { setError('The code expired. Start again.'); setPairing(null); }
        return;
      }
      setTimeout(poll, Math.max(500, pairing.interval * 1000));
    };
    poll();
    return () => { live = false; };
  }, [pairing, api, onSignedIn]);

  const startPairing = async () => {
    setBusy(true); setError(null);
    try { setPairing(await api.pairStart(browserName())); } catch (e) { setError(message(e)); }
    setBusy(false);
  };

  const useToken = async (ev: React.FormEvent) => {
    ev.preventDefault();
    setBusy(true); setError(null);
    const t = token.trim();
    try {
      // A probe: a wrong token is this form's error, never a "your sign-in has ended".
      const me = await new Api(t, null, true).me();
      onSignedIn({ token: t, device: me.device });
    } catch (e) {
      setError(e instanceof ApiError && e.status === 401 ? 'That token is not valid. Check that you copied all of it (it starts with jt_).' : message(e));
    }
    setBusy(false);
  };

  const card = (content: React.ReactNode) => (
    <main className="signin">
      <div className="signin-card">
        <div className="brand"><span className="brand-dot" />My Jarvis</div>
        {content}
      </div>
    </main>
  );
  if (invite) return card(<AcceptInvite code={invite} onSignedIn={onSignedIn} />);
  // The owner's setup leads in a browser that never signed in here; one that did (or was just
  // signed out) gets its sign-in, with the setup a click away.
  if (setupNeeded && !pairFirst && !notice) return card(<SetupOwner onSignedIn={onSignedIn} onSkip={() => setSetupNeeded(false)} />);
  if (setupNeeded === null) return card(<p className="muted">Loading…</p>);

  const tokenForm = (
    <form className="token-signin stack" onSubmit={useToken} key="token">
      <label htmlFor="token">Sign in with a token</label>
      <input id="token" type="password" autoComplete="off" value={token} onChange={(e) => setToken(e.target.value)} placeholder="jt_…" data-testid="token-input" />
      <button className={`btn ${pairFirst ? '' : 'primary'}`} disabled={busy || !token.trim()} data-testid="token-submit">Sign in</button>
    </form>
  );
  const pairSection = !pairing ? (
    <div className="stack" key="pair">
      <p className="muted">{pairFirst ? 'Pair this browser with your account: you approve a short code from a device where you are signed in.' : 'Or, if you are signed in on another device: pair this browser with a short code you approve there.'}</p>
      <button className={`btn ${pairFirst ? 'primary wide' : ''}`} onClick={startPairing} disabled={busy} data-testid="pair-start">Pair this browser</button>
    </div>
  ) : (
    <div className="pairing" data-testid="pairing" key="pair">
      <p>Approve this code where you are signed in (My Jarvis › <em>Approve a device</em>, or <code>POST /api/pair/approve</code>):</p>
      <div className="pair-code" data-testid="pair-code">{pairing.code}</div>
      <p className="muted"><span className="spinner" /> Waiting for approval…</p>
      <button className="btn ghost" onClick={() => setPairing(null)}>Cancel</button>
    </div>
  );
  return card(
    <>
      <h1>Sign in</h1>
      {notice && <p className="notice">{notice}</p>}
      {pairFirst ? [pairSection, tokenForm] : [tokenForm, pairSection]}
      {!pairFirst && <p className="muted small">No token? The owner of this server can send you an invitation link.</p>}
      {setupNeeded && pairFirst && <button type="button" className="link small" onClick={() => { try { localStorage.removeItem(SEEN); } catch { /* private mode */ } location.reload(); }} data-testid="setup-show">Set up this server (first visit)</button>}
      {error && <p className="error" role="alert">{error}</p>}
    </>,
  );
}
