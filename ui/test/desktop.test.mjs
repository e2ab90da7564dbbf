// The desktop transport (src/lib/desktop.ts) against a fake core: the module is bundled by
// Vite with `@tauri-apps/api` replaced by test/fake-tauri.mjs, which records every command and
// lets the test send `jarvis://event`s. What must hold: the window's replica starts from the
// core's whole state, applies the core's updates without sending them back, sends each of its
// own edits once, and errors arrive as `{code, message}` ApiErrors.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as Y from 'yjs';
import { build } from 'vite';
import { fake } from './fake-tauri.mjs';

const here = dirname(fileURLToPath(import.meta.url));
let desktop;

before(async () => {
  // Inside ui/ so the bundle's `import 'yjs'` resolves to ui/node_modules.
  const out = mkdtempSync(join(here, '../node_modules/.desktop-test-'));
  await build({
    configFile: false,
    logLevel: 'silent',
    resolve: { alias: { '@tauri-apps/api/core': join(here, 'fake-tauri.mjs'), '@tauri-apps/api/event': join(here, 'fake-tauri.mjs') } },
    build: {
      outDir: out, emptyOutDir: true, minify: false,
      lib: { entry: join(here, '../src/lib/desktop.ts'), formats: ['es'], fileName: 'desktop' },
      // One copy of these for the test and the module under test.
      rollupOptions: { external: ['yjs', /fake-tauri\.mjs$/] },
    },
  });
  globalThis.window = { __TAURI_INTERNALS__: {} };
  desktop = await import(pathToFileURL(join(out, 'desktop.js')).href);
  rmSync(out, { recursive: true, force: true });
});

const b64 = (u) => Buffer.from(u).toString('base64');
const settle = () => new Promise((r) => setTimeout(r, 0));

test('a document replica: core state in, core updates not echoed, own edits out once', async () => {
  // The core's copy, with something in it already.
  const core = new Y.Doc();
  core.getMap('meta').set('title', 'from the core');
  fake.reset({
    status: () => ({ hub: 'http://hub', connection: 'online', device: 'd1', keychain: { available: true }, folders: [], running: [], unsynced: [], provider: true }),
    doc_open: ({ name }) => (name === 'session/s1' ? b64(Y.encodeStateAsUpdate(core)) : Promise.reject({ code: 'invalid', message: `no ${name}` })),
    doc_apply: ({ update }) => { Y.applyUpdate(core, Buffer.from(update, 'base64'), 'window'); },
    doc_close: () => null,
  });
  const peer = new desktop.DesktopPeer();
  await settle();
  assert.equal(peer.status, 'connected');
  const entry = peer.open('session/s1');
  await settle(); await settle();
  assert.equal(entry.synced, true);
  assert.equal(entry.doc.getMap('meta').get('title'), 'from the core');
  assert.equal(fake.calls('doc_apply').length, 0, 'the initial state is not sent back');

  // Someone else's change, as the core's event: applied, never echoed.
  const before = Y.encodeStateVector(core);
  core.getMap('meta').set('status', 'running');
  fake.emit('jarvis://event', { type: 'doc_update', name: 'session/s1', update: b64(Y.encodeStateAsUpdate(core, before)) });
  assert.equal(entry.doc.getMap('meta').get('status'), 'running');
  await settle();
  assert.equal(fake.calls('doc_apply').length, 0, 'a core update is not echoed');

  // An edit made in the window: sent once, and the core has it.
  entry.doc.getMap('meta').set('title', 'renamed in the window');
  await settle();
  assert.equal(fake.calls('doc_apply').length, 1);
  assert.equal(fake.calls('doc_apply')[0].name, 'session/s1');
  assert.equal(core.getMap('meta').get('title'), 'renamed in the window');

  // Updates for documents the window has not open are ignored; a shared open is counted.
  fake.emit('jarvis://event', { type: 'doc_update', name: 'session/other', update: b64(Y.encodeStateAsUpdate(core)) });
  assert.equal(peer.open('session/s1'), entry);
  peer.release('session/s1');
  assert.equal(fake.calls('doc_close').length, 0);
  peer.release('session/s1');
  await settle();
  assert.deepEqual(fake.calls('doc_close').map((c) => c.name), ['session/s1']);

  // A document the core refuses says why.
  const denied = peer.open('session/nope');
  await settle(); await settle();
  assert.equal(denied.denied, 'no session/nope');
});

test('status events drive the peer status and the status line', async () => {
  fake.reset({ status: () => ({ hub: null, connection: 'signed_out', device: null, keychain: { available: true }, folders: [], running: [], unsynced: [], provider: false }) });
  const peer = new desktop.DesktopPeer();
  await settle();
  assert.equal(peer.status, 'disconnected');
  assert.equal(desktop.statusLine(peer.core).text, 'Signed out');
  const s = { hub: 'http://hub', connection: 'offline', device: 'd1', keychain: { available: true }, folders: [], running: [], unsynced: [], provider: true };
  fake.emit('jarvis://event', { type: 'status', ...s });
  assert.equal(peer.status, 'disconnected');
  assert.match(desktop.statusLine(peer.core).text, /^Offline: working locally, will sync with http:\/\/hub/);
  fake.emit('jarvis://event', { type: 'status', ...s, connection: 'online' });
  assert.equal(peer.status, 'connected');
  assert.match(desktop.statusLine(peer.core).text, /^Online/);
  fake.emit('jarvis://event', { type: 'status', ...s, keychain: { available: false, message: 'no Secret Service' } });
  assert.equal(desktop.statusLine(peer.core).text, 'Keychain unavailable: no Secret Service');
});

test('the hub API through the core: arguments, and errors as ApiError {code, message, status}', async () => {
  fake.reset({
    hub_api: ({ method, path, body }) => (path === '/api/me'
      ? { method, path, body }
      : Promise.reject({ code: 'not_found', message: 'no such session', status: 404 })),
  });
  assert.deepEqual(await desktop.hubApi('GET', '/api/me'), { method: 'GET', path: '/api/me', body: null });
  assert.deepEqual(await desktop.hubApi('POST', '/api/me', { a: 1 }), { method: 'POST', path: '/api/me', body: { a: 1 } });
  await assert.rejects(desktop.hubApi('GET', '/api/sessions/x'), (e) => e.code === 'not_found' && e.message === 'no such session' && e.status === 404);
  await assert.rejects(desktop.call('nothing_like_it'), (e) => e.code === 'internal');
});
