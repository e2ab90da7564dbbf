// Where the hub is: in the web view, this page's own origin. The desktop window never talks to
// the hub itself; it goes through the app's core (lib/desktop.ts).

/** The hub's HTTP origin with no trailing slash; '' for this page's origin. */
export function hubBase(): string {
  return '';
}

/** The sync socket's URL. */
export function syncUrl(): string {
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${proto}://${location.host}/sync`;
}
