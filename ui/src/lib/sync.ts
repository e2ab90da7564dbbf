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

/**
 * What every peer shares: documents opened by reference count (one Y.Doc per name however
 * many views show it) and change listeners. A peer says how a document starts syncing
 * (`attach`) and stops (`detach`).
 */
export abstract class DocPeer implements Peer {
  protected docs = new Map<string, OpenDoc>();
  private listeners = new Set<Listener>();
  status: 'connecting' | 'connected' | 'disconnected' = 'connecting';

  protected abstract attach(name: string, entry: OpenDoc): void;
  protected abstract detach(name: string, entry: OpenDoc): void;
  /** Whatever the peer holds beyond its documents (a socket, an event subscription). */
  protected abstract close(): void;

  onChange(l: Listener): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  protected emit() { for (const l of this.listeners) l(); }

  /** Opens (or shares) a document; call `release` when done with it. */
  open(name: string): OpenDoc {
    const have = this.docs.get(name);
    if (have) { have.refs += 1; return have; }
    const entry: OpenDoc = { doc: new Y.Doc(), provider: null, refs: 1, synced: false, denied: null };
    this.docs.set(name, entry);
    this.attach(name, entry);
    return entry;
  }

  release(name: string) {
    const e = this.docs.get(name);
    if (!e) return;
    e.refs -= 1;
    if (e.refs > 0) return;
    // Let a quick re-open (React strict re-mounts, tab switches) reuse nothing stale.
    this.docs.delete(name);
    this.detach(name, e);
    e.doc.destroy();
  }

  destroy() {
    for (const [name, e] of this.docs) { this.detach(name, e); e.doc.destroy(); }
    this.docs.clear();
    this.close();
  }
}

export class SyncPeer extends DocPeer {
  private socket: HocuspocusProviderWebsocket;

  constructor(private token: string) {
    super();
    this.socket = new HocuspocusProviderWebsocket({ url: syncUrl() });
    this.socket.on('status', ({ status }: { status: string }) => {
      this.status = status as SyncPeer['status'];
      this.emit();
    });
  }

  protected attach(name: string, entry: OpenDoc) {
    const provider = new HocuspocusProvider({ websocketProvider: this.socket, name, document: entry.doc, token: this.token });
    entry.provider = provider;
    provider.on('synced', () => { entry.synced = true; this.emit(); });
    provider.on('authenticationFailed', ({ reason }: { reason: string }) => { entry.denied = reason || 'permission denied'; this.emit(); });
    provider.attach();
  }

  protected detach(_name: string, entry: OpenDoc) { entry.provider?.destroy(); }

  protected close() { this.socket.destroy(); }
}
