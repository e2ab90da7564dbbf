// The browser as a sync peer: one WebSocket to `/sync` (Hocuspocus protocol) carrying every
// open document, each a Y.Doc with the device token sent in the per-document Auth message.
import * as Y from 'yjs';
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider';
import { syncUrl } from './hub';

/** `provider` is null in the desktop window, whose documents come from the core (desktop.ts). */
export interface OpenDoc { doc: Y.Doc; provider: HocuspocusProvider | null; refs: number; synced: boolean; denied: string | null }

/** What the views need of a sync peer: `SyncPeer` here, `DesktopPeer` in the desktop window. */
export interface Peer {
  status: 'connecting' | 'connected' | 'disconnected';
  onChange(l: () => void): () => void;
  open(name: string): OpenDoc;
  release(name: string): void;
  destroy(): void;
}

type Listener = () => void;

export class SyncPeer implements Peer {
  private socket: HocuspocusProviderWebsocket;
  private docs = new Map<string, OpenDoc>();
  private listeners = new Set<Listener>();
  status: 'connecting' | 'connected' | 'disconnected' = 'connecting';

  constructor(private token: string) {
    this.socket = new HocuspocusProviderWebsocket({ url: syncUrl() });
    this.socket.on('status', ({ status }: { status: string }) => {
      this.status = status as SyncPeer['status'];
      this.emit();
    });
  }

  onChange(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  private emit() { for (const l of this.listeners) l(); }

  /** Opens (or shares) a document; call `release` when done with it. */
  open(name: string): OpenDoc {
    const have = this.docs.get(name);
    if (have) { have.refs += 1; return have; }
    const doc = new Y.Doc();
    const provider = new HocuspocusProvider({ websocketProvider: this.socket, name, document: doc, token: this.token });
    const entry: OpenDoc = { doc, provider, refs: 1, synced: false, denied: null };
    provider.on('synced', () => { entry.synced = true; this.emit(); });
    provider.on('authenticationFailed', ({ reason }: { reason: string }) => { entry.denied = reason || 'permission denied'; this.emit(); });
    provider.attach();
    this.docs.set(name, entry);
    return entry;
  }

  release(name: string) {
    const e = this.docs.get(name);
    if (!e) return;
    e.refs -= 1;
    if (e.refs > 0) return;
    this.docs.delete(name);
    // Let a quick re-open (React strict re-mounts, tab switches) reuse nothing stale.
    e.provider?.destroy();
    e.doc.destroy();
  }

  destroy() {
    for (const e of this.docs.values()) { e.provider?.destroy(); e.doc.destroy(); }
    this.docs.clear();
    this.socket.destroy();
  }
}
