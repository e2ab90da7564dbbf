// The desktop window as a transport: the same bundle, but everything that the web view does
// over HTTP and the sync socket goes through the app's Tauri commands and its one event
// (`jarvis://event`). The window's CSP allows nothing else, and the hub token stays in the
// core (the OS keychain): the window never sees it.
//
// Never imported for its side effects: in a browser `desktop` is null and nothing here runs.
import * as Y from 'yjs';
import { useSyncExternalStore } from 'react';
import { invoke } from '@tauri-apps/api/core';
import { listen } from '@tauri-apps/api/event';
import { ApiError, type ErrorBody } from './api';
import { DocPeer, type OpenDoc } from './sync';

declare global {
  interface Window { __TAURI_INTERNALS__?: unknown }
}

/** What the core says about this device (`Status` in src-tauri/src/core.rs). */
export interface DesktopStatus {
  hub: string | null;
  connection: 'signed_out' | 'connecting' | 'online' | 'offline';
  device: string | null;
  keychain: { available: boolean; message?: string | null } | Record<string, unknown>;
  folders: { workspace: string; path: string }[];
  running: { session: string; workspace: string; title: string }[];
  /** Sessions started here that the hub does not know yet. */
  unsynced: { session: string; workspace: string; title: string }[];
  provider: boolean;
}

type CoreEvent =
  | ({ type: 'status' } & DesktopStatus)
  | { type: 'doc_update'; name: string; update: string }
  | { type: 'run'; session: string; event: unknown }
  | { type: 'attention'; session: string; title: string; body: string };

/** A command's error as the app's `ApiError` (`{code, message}`, plus the hub's status). */
function asApiError(e: unknown): ApiError {
  if (e && typeof e === 'object' && 'code' in e) {
    // The core answers `{code, message}` like the hub (its own codes beside the hub's), plus the
    // hub's status when the hub refused.
    const v = e as Partial<ErrorBody> & { code: string; status?: number };
    return new ApiError(v.status ?? 0, v.code, v.message ?? v.code);
  }
  return new ApiError(0, 'internal', e instanceof Error ? e.message : String(e));
}

export async function call<T>(cmd: string, args?: Record<string, unknown>): Promise<T> {
  try {
    return await invoke<T>(cmd, args);
  } catch (e) {
    throw asApiError(e);
  }
}

function fromB64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function toB64(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
}

/** Updates that came from the core carry this origin, so they are never sent back. */
const CORE = 'core';

/**
 * The window's documents as replicas of the core's offline-first ones: the whole state at
 * open, then the core's `doc_update` events applied with the `core` origin; only edits made in
 * the window go back through `doc_apply`. Same interface as `SyncPeer`.
 */
export class DesktopPeer extends DocPeer {
  /** The latest status from the core; null until the first arrives. */
  core: DesktopStatus | null = null;
  private unlisten: Promise<() => void>;

  constructor() {
    super();
    this.unlisten = listen<CoreEvent>('jarvis://event', ({ payload }) => this.onEvent(payload));
    call<DesktopStatus>('status').then((s) => this.setStatus(s)).catch(() => {});
  }

  private onEvent(e: CoreEvent) {
    if (e.type === 'status') this.setStatus(e);
    else if (e.type === 'doc_update') {
      const entry = this.docs.get(e.name);
      if (entry) Y.applyUpdate(entry.doc, fromB64(e.update), CORE);
    }
  }

  setStatus(s: DesktopStatus) {
    this.core = s;
    this.status = s.connection === 'online' ? 'connected' : s.connection === 'connecting' ? 'connecting' : 'disconnected';
    this.emit();
  }

  protected attach(name: string, entry: OpenDoc) {
    const doc = entry.doc;
    doc.on('update', (update: Uint8Array, origin: unknown) => {
      if (origin === CORE) return;
      call('doc_apply', { name, update: toB64(update) }).catch((e) => console.warn(`saving ${name}:`, e));
    });
    call<string>('doc_open', { name }).then((state) => {
      if (this.docs.get(name) !== entry) return;
      Y.applyUpdate(doc, fromB64(state), CORE);
      entry.synced = true;
      this.emit();
    }).catch((e: ApiError) => {
      entry.denied = e.message;
      this.emit();
    });
  }

  protected detach(name: string) { call('doc_close', { name }).catch(() => {}); }

  protected close() { this.unlisten.then((f) => f()).catch(() => {}); }
}

/** The hub's HTTP API through the core, which adds the device token. */
export function hubApi<T>(method: string, path: string, body?: unknown): Promise<T> {
  return call<T>('hub_api', { method, path, body: body === undefined ? null : body });
}

export async function blobUrl(workspace: string, hash: string, type: string): Promise<string> {
  const b64 = await call<string>('blob', { workspace, hash });
  return URL.createObjectURL(new Blob([fromB64(b64) as BlobPart], { type }));
}

/** Listens to the core's events of one kind while mounted; returns the unsubscribe. */
export function onCoreEvent(kind: CoreEvent['type'], fn: (e: any) => void): () => void {
  const p = listen<CoreEvent>('jarvis://event', ({ payload }) => { if (payload.type === kind) fn(payload); });
  return () => { p.then((f) => f()).catch(() => {}); };
}

/** A session picked in the tray menu (`jarvis://open-session`, its id); returns the unsubscribe. */
export function onTrayOpen(fn: (session: string) => void): () => void {
  const p = listen<string>('jarvis://open-session', ({ payload }) => fn(payload));
  return () => { p.then((f) => f()).catch(() => {}); };
}

/** True inside the Tauri window. */
export const inDesktop: boolean = typeof window !== 'undefined' && !!window.__TAURI_INTERNALS__;

/** One line about sync and connection, for the status bar. */
export function statusLine(s: DesktopStatus | null): { tone: string; text: string } {
  if (!s) return { tone: 'muted', text: 'Starting…' };
  const kc = s.keychain as { available?: boolean; message?: string | null };
  if (kc && kc.available === false) {
    return { tone: 'bad', text: `Keychain unavailable: ${kc.message ?? 'secrets cannot be stored'}` };
  }
  switch (s.connection) {
    case 'signed_out': return { tone: 'muted', text: 'Signed out' };
    case 'connecting': return { tone: 'warn', text: `Connecting to ${s.hub}…` };
    case 'online': return { tone: 'good', text: `Online: synced with ${s.hub}` };
    default: return { tone: 'warn', text: `Offline: working locally, will sync with ${s.hub} when reachable` };
  }
}

/** `Api`'s transport in the window. */
export const desktopTransport = { call: hubApi, blobUrl };

let shared: DesktopPeer | null = null;
/** The window's one peer (it lives as long as the window). */
export function desktopPeer(): DesktopPeer {
  if (!shared) shared = new DesktopPeer();
  return shared;
}

/** The core's latest status, re-rendering on each change (null outside the desktop window). */
export function useCoreStatus(): DesktopStatus | null {
  return useSyncExternalStore(
    (cb) => (inDesktop ? desktopPeer().onChange(cb) : () => {}),
    () => (inDesktop ? desktopPeer().core : null),
  );
}
