// Where the hub is. In the web view that is this page's own origin. The desktop window loads
// the same bundle from the app itself and says where its hub is through `window.jarvisDesktop`.
declare global {
  interface Window { jarvisDesktop?: { canRun?: boolean; hub?: string } }
}

/** The hub's HTTP origin with no trailing slash; '' for this page's origin. */
export function hubBase(): string {
  return (window.jarvisDesktop?.hub ?? '').replace(/\/+$/, '');
}

/** The sync socket's URL. */
export function syncUrl(): string {
  const base = hubBase();
  if (base) return `${base.replace(/^http/, 'ws')}/sync`;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${proto}://${location.host}/sync`;
}
