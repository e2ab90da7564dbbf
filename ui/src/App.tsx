import { useEffect, useMemo, useState } from 'react';
import { Api, ApiError, type Me } from './lib/api';
import { clearAuth, loadAuth, saveAuth, type Auth } from './lib/auth';
import { SyncPeer } from './lib/sync';
import { AppCtx } from './lib/hooks';
import { SignIn, rememberSignedIn } from './components/SignIn';
import { Workbench } from './components/Workbench';

export function App() {
  const [auth, setAuth] = useState<Auth | null>(() => loadAuth());
  const [me, setMe] = useState<Me | null>(null);
  const [error, setError] = useState<string | null>(null);
  const api = useMemo(() => new Api(auth?.token ?? null), [auth]);
  const peer = useMemo(() => (auth ? new SyncPeer(auth.token) : null), [auth]);
  useEffect(() => () => peer?.destroy(), [peer]);

  useEffect(() => {
    if (!auth) return;
    let live = true;
    api.me().then((m) => { if (live) { setMe(m); setError(null); } }).catch((e) => {
      if (!live) return;
      if (e instanceof ApiError && e.status === 401) { clearAuth(); setAuth(null); setError('Your sign-in has ended. Please sign in again.'); }
      else setError(`Cannot reach My Jarvis: ${e.message}`);
    });
    return () => { live = false; };
  }, [api, auth]);

  useEffect(() => {
    const on = () => { clearAuth(); setMe(null); setAuth(null); setError('Your sign-in has ended (this browser was signed out or revoked). Please sign in again.'); };
    addEventListener('jarvis:unauthorized', on);
    return () => removeEventListener('jarvis:unauthorized', on);
  }, []);

  const signIn = (a: Auth) => { saveAuth(a); rememberSignedIn(); setError(null); setAuth(a); };
  const signOut = () => { clearAuth(); setMe(null); setAuth(null); };

  if (!auth) return <SignIn onSignedIn={signIn} notice={error} />;
  if (!me || !peer) {
    return (
      <div className="center-screen">
        <p className="muted">{error ?? 'Signing in…'}</p>
        {error && <button className="btn" onClick={signOut}>Sign in again</button>}
      </div>
    );
  }
  return (
    <AppCtx.Provider value={{ api, peer, me, signOut }}>
      <Workbench />
    </AppCtx.Provider>
  );
}
