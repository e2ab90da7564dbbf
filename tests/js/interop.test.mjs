// Interop with the real JS stack: the official `yjs` and `@hocuspocus/provider` against
// `jarvis-cloud serve`, started on port 0 for every test. Every wait has a deadline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import * as Y from 'yjs';
import { HocuspocusProvider } from '@hocuspocus/provider';

const here = dirname(fileURLToPath(import.meta.url));
const targetDir = process.env.CARGO_TARGET_DIR
  ? resolve(process.env.CARGO_TARGET_DIR)
  : resolve(here, '../../target');
const BIN = process.env.JARVIS_CLOUD_BIN ?? join(targetDir, 'debug', 'jarvis-cloud');
const RUST_PEER = process.env.JARVIS_SYNC_TEXT_BIN ?? join(targetDir, 'debug', 'examples', 'sync_text');
const DEADLINE_MS = 20_000;

function until(what, cond, ms = DEADLINE_MS) {
  return new Promise((resolvePromise, reject) => {
    const started = Date.now();
    const tick = () => {
      let ok = false;
      try { ok = cond(); } catch { ok = false; }
      if (ok) return resolvePromise();
      if (Date.now() - started > ms) return reject(new Error(`timed out after ${ms} ms waiting for: ${what}`));
      setTimeout(tick, 10);
    };
    tick();
  });
}

function token(dataDir, scope, readOnly = false) {
  const args = ['token', 'create', '--data-dir', dataDir, '--scope', scope];
  if (readOnly) args.push('--read-only');
  const out = execFileSync(BIN, args, { encoding: 'utf8' }).trim().split('\n');
  return out[out.length - 1];
}

async function startServer(dataDir, port = 0) {
  assert.ok(existsSync(BIN), `${BIN} is missing: run cargo build --workspace --bins --examples first`);
  const child = spawn(BIN, ['serve', '--host', '127.0.0.1', '--port', String(port), '--data-dir', dataDir], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  let buffered = '';
  const listening = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error('jarvis-cloud did not start')), DEADLINE_MS);
    child.stdout.on('data', (chunk) => {
      buffered += chunk;
      const m = buffered.match(/listening on 127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolvePromise(Number(m[1])); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`jarvis-cloud exited with ${code}`)); });
  });
  return {
    port: listening,
    url: `ws://127.0.0.1:${listening}/sync`,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.on('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

function provider(url, name, tokenValue, extra = {}) {
  const doc = new Y.Doc();
  const p = new HocuspocusProvider({ url, name, document: doc, token: tokenValue, WebSocketPolyfill: WebSocket, ...extra });
  return { doc, p, text: doc.getText('content') };
}

function withEnv(fn) {
  return async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'jarvis-js-'));
    const cleanup = [];
    try {
      await fn(dataDir, cleanup);
    } finally {
      for (const c of cleanup.reverse()) {
        try { await c(); } catch { /* best effort */ }
      }
      rmSync(dataDir, { recursive: true, force: true });
    }
  };
}

test('js ↔ js through jarvis-cloud, and persistence across a restart', withEnv(async (dataDir, cleanup) => {
  const rw = token(dataDir, 'session/*');
  let server = await startServer(dataDir);
  cleanup.push(() => server.stop());
  const a = provider(server.url, 'session/js1', rw);
  const b = provider(server.url, 'session/js1', rw);
  cleanup.push(() => a.p.destroy(), () => b.p.destroy());
  await until('both synced', () => a.p.synced && b.p.synced);
  a.text.insert(0, 'hello from js');
  await until('b sees a', () => b.text.toString() === 'hello from js');
  b.text.insert(b.text.length, ' + reply');
  await until('a sees b', () => a.text.toString() === 'hello from js + reply');
  // Every change acknowledged by the hub (SyncStatus) before we restart it.
  await until('a acknowledged', () => !a.p.hasUnsyncedChanges);
  await until('b acknowledged', () => !b.p.hasUnsyncedChanges);
  a.p.destroy();
  b.p.destroy();
  const port = server.port;
  await server.stop();

  server = await startServer(dataDir, port);
  const c = provider(server.url, 'session/js1', rw);
  cleanup.push(() => c.p.destroy());
  await until('fresh provider synced after restart', () => c.p.synced);
  assert.equal(c.text.toString(), 'hello from js + reply');
}));

test('rust → js and js → rust', withEnv(async (dataDir, cleanup) => {
  assert.ok(existsSync(RUST_PEER), `${RUST_PEER} is missing: run cargo build --workspace --examples first`);
  const rw = token(dataDir, 'session/*');
  const server = await startServer(dataDir);
  cleanup.push(() => server.stop());
  execFileSync(RUST_PEER, [server.url, rw, 'session/mixed', '--append', 'from rust'], { encoding: 'utf8', timeout: DEADLINE_MS });
  const js = provider(server.url, 'session/mixed', rw);
  cleanup.push(() => js.p.destroy());
  await until('js sees the rust edit', () => js.text.toString() === 'from rust');
  js.text.insert(js.text.length, ' and js');
  await until('js edit acknowledged', () => !js.p.hasUnsyncedChanges);
  const seen = execFileSync(RUST_PEER, [server.url, rw, 'session/mixed', '--expect', 'from rust and js'], {
    encoding: 'utf8', timeout: DEADLINE_MS,
  });
  assert.equal(seen.trim(), 'from rust and js');
}));

test('wrong token fails authentication; read-only token cannot write', withEnv(async (dataDir, cleanup) => {
  const rw = token(dataDir, 'session/*');
  const ro = token(dataDir, 'session/shared', true);
  const server = await startServer(dataDir);
  cleanup.push(() => server.stop());

  let failure = null;
  const bad = provider(server.url, 'session/shared', 'jt_not_a_token', {
    onAuthenticationFailed: ({ reason }) => { failure = reason; },
  });
  cleanup.push(() => bad.p.destroy());
  await until('authentication failure reported', () => failure !== null);
  assert.equal(failure, 'unknown token');

  let foreign = null;
  const other = provider(server.url, 'ws/secret/index', rw, {
    onAuthenticationFailed: ({ reason }) => { foreign = reason; },
  });
  cleanup.push(() => other.p.destroy());
  await until('foreign document refused', () => foreign !== null);
  assert.match(foreign, /no access to ws\/secret\/index/);

  const writer = provider(server.url, 'session/shared', rw);
  const reader = provider(server.url, 'session/shared', ro);
  cleanup.push(() => writer.p.destroy(), () => reader.p.destroy());
  await until('both synced', () => writer.p.synced && reader.p.synced);
  writer.text.insert(0, 'written');
  await until('reader sees writer', () => reader.text.toString() === 'written');
  reader.text.insert(0, 'sneaky ');
  // The hub answers the read-only edit with SyncStatus(false): it stays unsynced.
  writer.text.insert(writer.text.length, '!');
  await until('writer edit acknowledged', () => !writer.p.hasUnsyncedChanges);
  await until('reader sees the later edit', () => reader.text.toString().endsWith('written!'));
  assert.equal(writer.text.toString(), 'written!');
  assert.ok(reader.p.hasUnsyncedChanges, 'read-only edit must not be acknowledged');
  const fresh = provider(server.url, 'session/shared', rw);
  cleanup.push(() => fresh.p.destroy());
  await until('fresh synced', () => fresh.p.synced);
  assert.equal(fresh.text.toString(), 'written!');
}));
