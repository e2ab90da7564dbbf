import { useEffect, useState, useSyncExternalStore, createContext, useContext } from 'react';
import * as Y from 'yjs';
import type { Peer, OpenDoc } from './sync';
import type { Api, Me } from './api';

/** `signedOut`: the desktop window used on this computer only (no hub); `signOut` then goes to sign-in. */
export interface Ctx { api: Api; peer: Peer; me: Me; signOut: () => void; signedOut?: boolean }
export const AppCtx = createContext<Ctx | null>(null);
export function useApp(): Ctx {
  const c = useContext(AppCtx);
  if (!c) throw new Error('no app context');
  return c;
}

/** A shared document for as long as the component shows it. */
export function useDoc(name: string | null): OpenDoc | null {
  const { peer } = useApp();
  const [entry, setEntry] = useState<OpenDoc | null>(null);
  useEffect(() => {
    if (!name) { setEntry(null); return; }
    const e = peer.open(name);
    setEntry(e);
    return () => { peer.release(name); };
  }, [name, peer]);
  useSyncExternalStore((cb) => peer.onChange(cb), () => (entry ? `${entry.synced}:${entry.denied}` : ''));
  return entry;
}

/** Re-renders on every change of `doc`, at most once per animation frame. */
export function useDocVersion(doc: Y.Doc | undefined): number {
  const [v, setV] = useState(0);
  useEffect(() => {
    if (!doc) return;
    let frame = 0;
    const on = () => {
      if (frame) return;
      frame = requestAnimationFrame(() => { frame = 0; setV((x) => x + 1); });
    };
    doc.on('update', on);
    setV((x) => x + 1);
    return () => { doc.off('update', on); if (frame) cancelAnimationFrame(frame); };
  }, [doc]);
  return v;
}

export function usePeerStatus(): string {
  const { peer } = useApp();
  return useSyncExternalStore((cb) => peer.onChange(cb), () => peer.status);
}

/** Calls `fn` now and every `ms` while mounted (and the page is visible). */
export function usePoll(fn: () => void, ms: number, deps: unknown[]) {
  useEffect(() => {
    fn();
    const t = setInterval(() => { if (document.visibilityState !== 'hidden') fn(); }, ms);
    return () => clearInterval(t);
  }, deps);
}
