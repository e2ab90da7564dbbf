// The browser's device token. Kept in localStorage, which the browser scopes to this origin:
// a paired browser stays signed in like any other device, and signing out (or revoking the
// device from another one) ends it. The page never renders workspace content as HTML and its
// CSP allows no inline or foreign script, which is what keeps the token from other code.
const KEY = 'jarvis.auth.v1';

export interface Auth {
  token: string;
  /** The device id this token belongs to (pairing), if any. */
  device?: string | null;
}

export function loadAuth(): Auth | null {
  try {
    const raw = localStorage.getItem(KEY);
    if (!raw) return null;
    const v = JSON.parse(raw);
    return typeof v?.token === 'string' && v.token ? v : null;
  } catch {
    return null;
  }
}

export function saveAuth(a: Auth): void {
  localStorage.setItem(KEY, JSON.stringify(a));
}

export function clearAuth(): void {
  localStorage.removeItem(KEY);
}
