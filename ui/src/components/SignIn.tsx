import { useEffect, useRef, useState } from 'react';
import { Api, ApiError, type Pairing } from '../lib/api';
import type { Auth } from '../lib/auth';

function browserName(): string {
  const ua = navigator.userAgent;
  const what = /iPhone|iPad/.test(ua) ? 'iPhone/iPad' : /Android/.test(ua) ? 'Android' : /Mac/.test(ua) ? 'Mac' : /Windows/.test(ua) ? 'Windows' : /Linux/.test(ua) ? 'Linux' : 'a computer';
  return `Browser on ${what}`;
}

/** Sign in by pairing (a code approved where you are already signed in) or with a token. */
export function SignIn({ onSignedIn, notice }: { onSignedIn: (a: Auth) => void; notice: string | null }) {
  const [pairing, setPairing] = useState<Pairing | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const api = useRef(new Api(null)).current;
  // Time to interactive, as ui/scripts/measure.mjs reads it: the first screen has rendered and
  // its handlers are attached.
  useEffect(() => { performance.mark('jarvis:interactive'); }, []);

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
          if (live) { setError(e instanceof Error ? e.message : String(e)); setPairing(null); }
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
    try { setPairing(await api.pairStart(browserName())); } catch (e) { setError(e instanceof Error ? e.message : String(e)); }
    setBusy(false);
  };

  const useToken = async (ev: React.FormEvent) => {
    ev.preventDefault();
    setBusy(true); setError(null);
    const t = token.trim();
    try {
      const me = await new Api(t).me();
      onSignedIn({ token: t, device: me.device });
    } catch (e) {
      setError(e instanceof ApiError && e.status === 401 ? 'That token is not valid.' : e instanceof Error ? e.message : String(e));
    }
    setBusy(false);
  };

  return (
    <main className="signin">
      <div className="signin-card">
        <div className="brand"><span className="brand-dot" />My Jarvis</div>
        <h1>Sign in</h1>
        {notice && <p className="notice">{notice}</p>}
        {!pairing ? (
          <>
            <p>Pair this browser with your account. You will get a short code to approve from a device where you are already signed in.</p>
            <button className="btn primary wide" onClick={startPairing} disabled={busy} data-testid="pair-start">Pair this browser</button>
          </>
        ) : (
          <div className="pairing" data-testid="pairing">
            <p>Approve this code where you are signed in (My Jarvis › <em>Approve a device</em>, or <code>POST /api/pair/approve</code>):</p>
            <div className="pair-code" data-testid="pair-code">{pairing.code}</div>
            <p className="muted"><span className="spinner" /> Waiting for approval…</p>
            <button className="btn ghost" onClick={() => setPairing(null)}>Cancel</button>
          </div>
        )}
        <details className="token-signin">
          <summary>Sign in with a token instead</summary>
          <form onSubmit={useToken}>
            <label htmlFor="token">Device token</label>
            <input id="token" type="password" autoComplete="off" value={token} onChange={(e) => setToken(e.target.value)} placeholder="jt_…" data-testid="token-input" />
            <button className="btn" disabled={busy || !token.trim()} data-testid="token-submit">Sign in</button>
          </form>
        </details>
        {error && <p className="error" role="alert">{error}</p>}
      </div>
    </main>
  );
}
