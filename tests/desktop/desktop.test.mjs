// The desktop window end to end: the real `jarvis-desktop` (debug build, ui/dist inside) under
// Xvfb, driven over WebDriver (tauri-driver → WebKitWebDriver), signed in to a real
// `jarvis-cloud serve` on port 0 whose cloud runner, like the app's local runner, talks to the
// fake Anthropic server of the browser suite over real SSE. The hub token goes to a real
// Secret Service keychain (gnome-keyring in a private D-Bus session): run through `run.sh`.
//
// The story: sign in, open a folder by path, run a session here, approve its write in the
// window, press Continue in cloud while the second reply streams, approve the cloud's write,
// see it finish in the cloud, Continue here, one more local turn (approved), and the folder on
// disk equals the cloud's copy. Then the hub stops: the window shows offline and a session
// still runs here (approved in the window); the hub comes back and gets that session and its
// file. Last, sign out and pair this computer by a code. Every wait polls a condition with a deadline; screenshots land
// in tests/desktop/screenshots/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, readFileSync, readdirSync, existsSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { isDeepStrictEqual } from 'node:util';
import { startFakeAnthropic } from '../browser/fake-anthropic.mjs';
import { WebDriver } from './webdriver.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(repo, 'target');
const CLOUD = process.env.JARVIS_CLOUD_BIN ?? join(targetDir, 'debug', 'jarvis-cloud');
const DESKTOP = process.env.JARVIS_DESKTOP_BIN ?? join(targetDir, 'debug', 'jarvis-desktop');
const TAURI_DRIVER = process.env.TAURI_DRIVER_BIN ?? 'tauri-driver';
const SHOTS = join(here, 'screenshots');
const T = 30_000;
// A 2×2 PNG: a binary file travels as a blob, and the window shows it through the core.
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGNgYPj/n4GBgYGJgYGBAQAcBgMBmZ0jvQAAAABJRU5ErkJggg==', 'base64');

function until(what, cond, ms = T) {
  return new Promise((ok, fail) => {
    const start = Date.now();
    let last = null;
    const tick = async () => {
      let v = false;
      try { v = await cond(); } catch (e) { v = false; last = e; }
      if (v) return ok(v);
      if (Date.now() - start > ms) return fail(new Error(`timed out after ${ms} ms waiting for: ${what}${last ? ` (last error: ${last.message})` : ''}`));
      setTimeout(tick, 100);
    };
    tick();
  });
}

function freePort() {
  return new Promise((ok, fail) => {
    const s = net.createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
  });
}

/** Starts a child whose stderr and stdout are kept (printed when the test fails). */
function start(bin, args, env, log) {
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  const keep = (c) => { out += c; if (out.length > 400_000) out = out.slice(-200_000); };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  log.push(() => `--- ${bin.split('/').pop()} ---\n${out.slice(-8000)}`);
  return {
    child,
    output: () => out,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((r) => child.on('exit', r));
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
      // A grandchild that outlives it (an accessibility bus the window started, say) may hold
      // these pipes open; they must not keep the test process alive.
      child.stdout.destroy();
      child.stderr.destroy();
    },
  };
}

/** Every file under `dir` (relative path → its bytes as latin1), skipping the app's own folders. */
function tree(dir) {
  const out = {};
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      if (name === '.jarvis' || name === '.git') continue;
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out[relative(dir, p)] = readFileSync(p, 'latin1');
    }
  };
  if (existsSync(dir)) walk(dir);
  return out;
}

/** What the fake model says, from the conversation. */
function makeScript(state) {
  return (_body, last) => {
    const results = last.toolResults.map((r) => r.tool_use_id);
    if (results.includes('toolu_early')) return { text: 'Early turn done: early.txt is written.' };
    if (/add early\.txt/i.test(last.text)) {
      return { text: 'Writing early.txt before any sign-in.', tools: [{ id: 'toolu_early', name: 'write', input: { path: 'early.txt', content: 'written signed out\n' } }] };
    }
    if (results.includes('toolu_offline')) return { text: 'Offline turn done: offline.txt is written.' };
    if (/add offline\.txt/i.test(last.text)) {
      return { text: 'Writing offline.txt with no hub around.', tools: [{ id: 'toolu_offline', name: 'write', input: { path: 'offline.txt', content: 'written offline\n' } }] };
    }
    if (results.includes('toolu_local')) return { text: 'Local turn done: local.txt is written on this computer.' };
    if (/add local\.txt/i.test(last.text)) {
      return { text: 'Writing local.txt here.', tools: [{ id: 'toolu_local', name: 'write', input: { path: 'local.txt', content: 'written on the desktop\n' } }] };
    }
    if (results.includes('toolu_notes')) return { text: 'All done in the cloud: notes.md is written.' };
    if (results.includes('toolu_hello')) {
      state.second += 1;
      // The first time (on the desktop) the reply streams slowly so the window can move the
      // session to the cloud in the middle of it; the cloud's retry of the cut reply is quick.
      return {
        text: 'Now I will write the notes, carefully, one line at a time, so that nothing is lost on the way. '.repeat(state.second === 1 ? 6 : 1),
        deltaMs: state.second === 1 ? 200 : 5,
        tools: [{ id: 'toolu_notes', name: 'write', input: { path: 'notes.md', content: '# Notes\n\nwritten in the cloud\n' } }],
      };
    }
    return { text: 'I will write hello.txt first.', tools: [{ id: 'toolu_hello', name: 'write', input: { path: 'hello.txt', content: 'hello from the desktop\n' } }] };
  };
}

test('desktop window: open a folder, run here, approve, Continue in cloud, Continue here, files on disk', { timeout: 240_000 }, async (t) => {
  assert.ok(process.env.DISPLAY, 'needs an X display: run tests/desktop/run.sh (Xvfb + a private D-Bus session with gnome-keyring)');
  assert.ok(process.env.DBUS_SESSION_BUS_ADDRESS, 'needs a D-Bus session with a Secret Service: run tests/desktop/run.sh');
  assert.ok(existsSync(DESKTOP), `${DESKTOP} is missing: cargo build -p jarvis-desktop (after cd ui && npm run build)`);
  // Only this run's screenshots in the folder.
  rmSync(SHOTS, { recursive: true, force: true });
  mkdirSync(SHOTS, { recursive: true });
  const root = mkdtempSync(join(tmpdir(), 'jarvis-desktop-e2e-'));
  const logs = [];
  const cleanups = [];
  t.after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
    rmSync(root, { recursive: true, force: true });
  });
  let step = 'start';
  let shot = 0;
  const wd = new WebDriver('');
  const snap = async (name) => {
    shot += 1;
    const file = join(SHOTS, `${String(shot).padStart(2, '0')}-${name}.png`);
    writeFileSync(file, await wd.screenshot());
    return file;
  };
  try {
    const state = { second: 0 };
    const fake = await startFakeAnthropic(makeScript(state));
    cleanups.push(() => fake.close());

    // The hub: a user and its token, then `serve` on port 0.
    step = 'start the hub';
    const data = join(root, 'hub');
    const token = execFileSync(CLOUD, ['user', 'add', 'dana', '--data-dir', data], { encoding: 'utf8', env: { ...process.env, RUST_LOG: 'warn' } })
      .trim().split('\n').pop().trim();
    assert.match(token, /^jt_/);
    const hubEnv = { ...process.env, RUST_LOG: 'warn', ANTHROPIC_BASE_URL: fake.url, ANTHROPIC_API_KEY: 'test-key', JARVIS_SANDBOX: 'limits', JARVIS_ALLOW_UNSANDBOXED: '1' };
    let hub = start(CLOUD, ['serve', '--host', '127.0.0.1', '--port', '0', '--data-dir', data], hubEnv, logs);
    cleanups.push(() => hub.stop());
    const port = await until('jarvis-cloud listening', () => Number(hub.output().match(/listening on 127\.0\.0\.1:(\d+)/)?.[1] ?? 0));
    const base = `http://127.0.0.1:${port}`;

    // The window: tauri-driver starts WebKitWebDriver, which starts the app with this
    // environment (its own data dir and keychain entry, the fake provider for local runs).
    step = 'start the window';
    const [wdPort, nativePort] = [await freePort(), await freePort()];
    const appEnv = {
      ...process.env,
      RUST_LOG: 'info,jarvis_sync=warn',
      JARVIS_DESKTOP_DATA: join(root, 'desktop'),
      JARVIS_KEYCHAIN_SERVICE: `jarvis-desktop-e2e-${process.pid}`,
      ANTHROPIC_BASE_URL: fake.url,
      ANTHROPIC_API_KEY: 'test-key',
    };
    const driver = start(TAURI_DRIVER, ['--port', String(wdPort), '--native-port', String(nativePort)], appEnv, logs);
    cleanups.push(() => driver.stop());
    wd.base = `http://127.0.0.1:${wdPort}`;
    await until('tauri-driver answering', async () => (await fetch(`${wd.base}/status`)).ok);
    await wd.start(DESKTOP);
    cleanups.push(() => wd.quit());
    const q = (sel, what = 'textContent') => wd.exec(`const e = document.querySelector(arguments[0]); return e ? (arguments[1] === 'html' ? e.outerHTML : e.getAttribute(arguments[1]) ?? e[arguments[1]]) : null;`, sel, what);
    const has = async (sel) => (await q(sel, 'tagName')) !== null;
    const text = async (sel) => (await q(sel)) ?? '';

    // Signed out at first: the window's own sign-in, with the keychain status line.
    step = 'sign in';
    await until('the desktop sign-in screen', () => has('[data-testid=desk-signin]'));
    assert.equal(await q('[data-testid=desktop-status]', 'data-connection'), 'signed_out');
    await snap('sign-in');

    // First on this computer only: a folder and a session with no hub at all.
    step = 'use on this computer only';
    const workspace = `proj${process.pid}`;
    const folder = join(root, workspace);
    mkdirSync(folder);
    writeFileSync(join(folder, 'README.md'), '# A project\n');
    writeFileSync(join(folder, 'pixel.png'), PNG);
    await wd.click('[data-testid=desk-local]');
    await until('the workbench, signed out', () => has('[data-testid=folder-path]'));
    await wd.type('[data-testid=folder-path]', folder);
    await wd.click('[data-testid=folder-open]');
    await until('the folder listed', () => has(`[data-testid=folder-${workspace}]`));
    await wd.type('[data-testid=local-prompt]', 'Please add early.txt');
    await wd.click('[data-testid=local-start]');
    await until('the signed-out write waiting for approval', () => has('[data-testid=tool-card][data-state=waiting] [data-testid=allow]'));
    const early = (await wd.exec('return location.pathname')).replace(/^\/s\//, '');
    assert.match(await text('[data-testid=chat-where]'), /This device/);
    await wd.click('[data-testid=tool-card][data-state=waiting] [data-testid=allow]');
    await until('early.txt written here', () => existsSync(join(folder, 'early.txt')));
    await until('the signed-out turn finished', async () =>
      /Early turn done/.test(await text('[data-testid=chat-scroll]')) && (await text('[data-testid=chat-status]')) === 'Done');
    assert.ok(await has(`[data-testid=unsynced-${early}]`), 'listed as not on the cloud agent yet');
    await snap('signed-out-session');
    await wd.click('[data-testid=sign-in]');
    step = 'sign in';
    await until('the sign-in screen again', () => has('[data-testid=desk-signin]'));
    await wd.type('[data-testid=desk-hub]', base);
    await wd.type('[data-testid=desk-token]', token);
    await wd.click('[data-testid=desk-signin]');
    await until('online and the workbench shown', async () =>
      (await q('[data-testid=desktop-status]', 'data-connection')) === 'online' && (await has('[data-testid=desktop-panel]')));
    assert.match(await text('[data-testid=desktop-status]'), /Online/);
    // The token went to the keychain, not to a file in the app's data dir.
    for (const f of readdirSync(appEnv.JARVIS_DESKTOP_DATA)) {
      if (statSync(join(appEnv.JARVIS_DESKTOP_DATA, f)).isFile()) assert.ok(!readFileSync(join(appEnv.JARVIS_DESKTOP_DATA, f)).includes(token), `the token is in ${f}`);
    }

    // The session made before signing in reaches the hub, with its messages.
    const hubApi = async (path) => {
      const r = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${token}` } });
      return r.ok ? r.json() : null;
    };
    await until('the signed-out session registered with the hub', async () =>
      JSON.stringify((await hubApi(`/api/sessions/${early}`))?.messages ?? null).includes('Early turn done'));
    await until('no longer listed as unsynced', async () => !(await has('[data-testid=unsynced]')));

    // Open the folder again by its path (the native dialog cannot be driven): nothing changes.
    step = 'open a folder';
    await wd.type('[data-testid=folder-path]', folder);
    await wd.click('[data-testid=folder-open]');
    await until('the folder listed', () => has(`[data-testid=folder-${workspace}]`));
    assert.equal(await wd.exec('return document.querySelectorAll("[data-testid=folders] li").length'), 1);

    // A session here, in ask mode: its first write needs an approval, given in the window.
    step = 'run a session here';
    await until('the local session form', () => has('[data-testid=local-prompt]'));
    assert.equal(await q('[data-testid=local-mode]', 'value'), 'ask');
    await wd.type('[data-testid=local-prompt]', 'Write hello.txt, then the notes');
    await wd.click('[data-testid=local-start]');
    await until('the write of hello.txt waiting for approval', async () => (await has('[data-testid=tool-card][data-state=waiting] [data-testid=allow]')));
    assert.match(await text('[data-testid=chat-where]'), /This device/);
    assert.match(await text('[data-testid=assistant-text]'), /hello\.txt first/);
    await snap('approval-here');
    await wd.click('[data-testid=tool-card][data-state=waiting] [data-testid=allow]');
    await until('hello.txt written in the folder', () => existsSync(join(folder, 'hello.txt')));
    assert.equal(readFileSync(join(folder, 'hello.txt'), 'utf8'), 'hello from the desktop\n');

    // The second reply streams slowly; Continue in cloud in the middle of it.
    step = 'stream, then Continue in cloud';
    await until('the second reply streaming in the window', async () => {
      const all = await wd.exec(`return [...document.querySelectorAll('[data-testid=assistant-text]')].map((e) => e.textContent).join('\\n');`);
      return /write the notes/.test(all);
    });
    assert.equal(state.second, 1);
    await snap('streaming-here');
    await wd.click('[data-testid=continue-cloud]');
    await until('the cloud asking to write notes.md', async () =>
      /Cloud/.test(await text('[data-testid=chat-where]')) && (await has('[data-testid=tool-card][data-state=waiting] [data-testid=allow]')), 60_000);
    assert.ok(state.second >= 2, 'the cloud asked the model again after the handoff');
    assert.ok(!existsSync(join(folder, 'notes.md')), 'nothing was written here after the handoff');
    await snap('approval-in-cloud');
    await wd.click('[data-testid=tool-card][data-state=waiting] [data-testid=allow]');
    await until('the session done in the cloud', async () =>
      (await text('[data-testid=chat-status]')) === 'Done' && /Cloud/.test(await text('[data-testid=chat-where]')), 60_000);
    const cloudDir = join(data, 'workspaces', workspace);
    await until('notes.md in the cloud\'s copy', () => existsSync(join(cloudDir, 'notes.md')));
    await snap('done-in-cloud');

    // Continue here: the cloud yields, the folder gets the cloud's changes.
    step = 'Continue here';
    await wd.click('[data-testid=continue-here]');
    await until('notes.md on disk here', () => existsSync(join(folder, 'notes.md')), 60_000);
    assert.equal(readFileSync(join(folder, 'notes.md'), 'utf8'), '# Notes\n\nwritten in the cloud\n');
    await until('the cloud no longer runs it', async () => !/Cloud/.test(await text('[data-testid=chat-where]')), 60_000);

    // One more turn, run on this computer (its write approved in the window).
    step = 'a local turn';
    await wd.type('[data-testid=composer]', 'Please add local.txt');
    await wd.click('[data-testid=send]');
    await until('the write of local.txt waiting for approval', async () =>
      (await has('[data-testid=tool-card][data-state=waiting] [data-testid=allow]')) && /This device/.test(await text('[data-testid=chat-where]')), 60_000);
    await wd.click('[data-testid=tool-card][data-state=waiting] [data-testid=allow]');
    await until('local.txt written here', () => existsSync(join(folder, 'local.txt')), 60_000);
    await until('the local turn finished', async () => {
      const all = await wd.exec(`return [...document.querySelectorAll('[data-testid=assistant-text]')].map((e) => e.textContent).join('\\n');`);
      return /Local turn done/.test(all) && (await text('[data-testid=chat-status]')) === 'Done';
    }, 60_000);
    await snap('local-turn-done');

    // The files panel: a Markdown file from the workspace documents, an image from the blob
    // store, both through the core.
    step = 'files and preview';
    await until('notes.md in the tree', () => has('[data-testid="file-notes.md"]'));
    await wd.click('[data-testid="file-notes.md"]');
    await until('notes.md previewed', async () => /written in the cloud/.test(await text('[data-testid=preview-body]')));
    await wd.click('[data-testid="file-pixel.png"]');
    await until('the PNG shown from its blob', async () =>
      (await wd.exec('const i = document.querySelector("[data-testid=image]"); return i && i.complete ? i.naturalWidth : 0;')) === 2);
    await snap('image-preview');

    // The folder here and the cloud's copy hold the same files.
    step = 'compare the folders';
    const want = {
      'README.md': '# A project\n',
      'early.txt': 'written signed out\n',
      'pixel.png': PNG.toString('latin1'),
      'hello.txt': 'hello from the desktop\n',
      'notes.md': '# Notes\n\nwritten in the cloud\n',
      'local.txt': 'written on the desktop\n',
    };
    await until('the cloud\'s copy equal to the folder here', () => {
      const a = tree(folder);
      const b = tree(cloudDir);
      return isDeepStrictEqual(a, want) && isDeepStrictEqual(b, want);
    }, 60_000).catch((e) => {
      throw new Error(`${e.message}\nhere: ${JSON.stringify(tree(folder))}\ncloud: ${JSON.stringify(tree(cloudDir))}`);
    });

    // The hub goes away: the window says so, and a session still runs here, approved in the
    // window, on the device's own copy.
    step = 'offline';
    await hub.stop();
    await until('the status line offline', async () =>
      (await q('[data-testid=desktop-status]', 'data-connection')) === 'offline' && /Offline/.test(await text('[data-testid=desktop-status]')));
    await wd.type('[data-testid=local-prompt]', 'Please add offline.txt');
    await wd.click('[data-testid=local-start]');
    await until('the offline write waiting for approval', () => has('[data-testid=tool-card][data-state=waiting] [data-testid=allow]'));
    const offline = (await wd.exec('return location.pathname')).replace(/^\/s\//, '');
    assert.match(offline, /^[0-9a-f]{16}$/);
    assert.ok(await has(`[data-testid=unsynced-${offline}]`), 'listed as not on the cloud agent yet');
    await wd.click('[data-testid=tool-card][data-state=waiting] [data-testid=allow]');
    await until('offline.txt written here', () => existsSync(join(folder, 'offline.txt')));
    await until('the offline turn finished', async () =>
      /Offline turn done/.test(await wd.exec(`return [...document.querySelectorAll('[data-testid=assistant-text]')].map((e) => e.textContent).join('\\n');`))
      && (await text('[data-testid=chat-status]')) === 'Done');
    assert.equal(await q('[data-testid=desktop-status]', 'data-connection'), 'offline');
    assert.equal(await has('.msg-author'), false, 'the offline prompt is shown as this computer\'s own');
    await snap('offline-session');

    // The hub is back on the same address: the window goes online by itself, and the session
    // and the file made offline reach the hub.
    step = 'back online';
    hub = start(CLOUD, ['serve', '--host', '127.0.0.1', '--port', String(port), '--data-dir', data], hubEnv, logs);
    cleanups.push(() => hub.stop());
    await until('online again', async () => (await q('[data-testid=desktop-status]', 'data-connection')) === 'online', 60_000);
    const api = hubApi;
    await until('the offline session known to the hub with its messages', async () => {
      const v = await api(`/api/sessions/${offline}`);
      return v && JSON.stringify(v.messages).includes('Offline turn done') && v.workspace === workspace;
    }, 60_000);
    await until('offline.txt in the hub\'s workspace index', async () =>
      ((await api(`/api/workspaces/${workspace}`))?.files ?? []).some((f) => f.path === 'offline.txt'), 60_000);
    await until('the offline session in the window\'s list', () => has(`[data-testid=session-${offline}]`));
    await snap('back-online');

    // Sign out (the window goes back to its sign-in), then pair this computer by a code that
    // the person approves where they are signed in (here: the API with their token).
    step = 'sign out, pair';
    await wd.click('[data-testid=sign-out]');
    await until('signed out', async () =>
      (await has('[data-testid=desk-pair]')) && (await q('[data-testid=desktop-status]', 'data-connection')) === 'signed_out');
    await wd.type('[data-testid=desk-hub]', base);
    await wd.click('.token-signin summary');
    await wd.type('[data-testid=desk-name]', 'E2E desktop');
    await wd.click('[data-testid=desk-pair]');
    const code = await until('a pairing code shown', async () => (await text('[data-testid=pair-code]')).trim());
    await snap('pairing');
    const approved = await fetch(`${base}/api/pair/approve`, {
      method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ code }),
    });
    assert.equal(approved.status, 200, await approved.text());
    await until('online as the paired device', async () =>
      (await q('[data-testid=desktop-status]', 'data-connection')) === 'online' && (await has('[data-testid=desktop-panel]')), 60_000);
    assert.ok(((await api('/api/devices'))?.devices ?? []).some((d) => d.name === 'E2E desktop' && !d.revoked));
    await until('the folder and the sessions still there', async () =>
      (await has(`[data-testid=folder-${workspace}]`)) && (await has(`[data-testid=session-${offline}]`)));
  } catch (e) {
    if (wd.id) await snap(`failed-${step.replace(/\W+/g, '-')}`).catch(() => {});
    const html = wd.id ? await wd.exec('return document.body.innerText').catch(() => '') : '';
    throw new Error(`desktop e2e failed at "${step}": ${e.message}\n--- window text ---\n${String(html).slice(0, 3000)}\n${logs.map((l) => l()).join('\n')}`);
  }
});

test('desktop window without a keychain: it says so and keeps no token', { timeout: 120_000 }, async (t) => {
  assert.ok(process.env.DISPLAY, 'needs an X display: run tests/desktop/run.sh');
  mkdirSync(SHOTS, { recursive: true });
  const root = mkdtempSync(join(tmpdir(), 'jarvis-desktop-nokeychain-'));
  const logs = [];
  const cleanups = [];
  t.after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
    rmSync(root, { recursive: true, force: true });
  });
  const wd = new WebDriver('');
  try {
    const data = join(root, 'hub');
    const token = execFileSync(CLOUD, ['user', 'add', 'erin', '--data-dir', data], { encoding: 'utf8', env: { ...process.env, RUST_LOG: 'warn' } })
      .trim().split('\n').pop().trim();
    const hub = start(CLOUD, ['serve', '--host', '127.0.0.1', '--port', '0', '--data-dir', data], { ...process.env, RUST_LOG: 'warn' }, logs);
    cleanups.push(() => hub.stop());
    const port = await until('jarvis-cloud listening', () => Number(hub.output().match(/listening on 127\.0\.0\.1:(\d+)/)?.[1] ?? 0));
    // No Secret Service on this bus: the keychain is unavailable.
    const appEnv = {
      ...process.env,
      DBUS_SESSION_BUS_ADDRESS: `unix:path=${join(root, 'no-bus')}`,
      JARVIS_DESKTOP_DATA: join(root, 'desktop'),
      JARVIS_KEYCHAIN_SERVICE: `jarvis-desktop-e2e-nokc-${process.pid}`,
    };
    const [wdPort, nativePort] = [await freePort(), await freePort()];
    const driver = start(TAURI_DRIVER, ['--port', String(wdPort), '--native-port', String(nativePort)], appEnv, logs);
    cleanups.push(() => driver.stop());
    wd.base = `http://127.0.0.1:${wdPort}`;
    await until('tauri-driver answering', async () => (await fetch(`${wd.base}/status`)).ok);
    await wd.start(DESKTOP);
    cleanups.push(() => wd.quit());
    const text = (sel) => wd.exec('const e = document.querySelector(arguments[0]); return e ? e.textContent : "";', sel);
    await until('the status line names the keychain', async () => /^Keychain unavailable: /.test(await text('[data-testid=desktop-status]')));
    await wd.type('[data-testid=desk-hub]', `http://127.0.0.1:${port}`);
    await wd.type('[data-testid=desk-token]', token);
    await wd.click('[data-testid=desk-signin]');
    await until('the sign-in refused with the keychain\'s reason', async () => /keychain/i.test(await text('[data-testid=desk-error]')));
    assert.ok(await wd.exec('return !!document.querySelector("[data-testid=desk-signin]")'), 'still on the sign-in screen');
    writeFileSync(join(SHOTS, '12-no-keychain.png'), await wd.screenshot());
    // Nothing of the token anywhere in the app's data dir.
    const files = tree(appEnv.JARVIS_DESKTOP_DATA);
    for (const [f, body] of Object.entries(files)) assert.ok(!body.includes(token), `the token is in ${f}`);
  } catch (e) {
    const html = wd.id ? await wd.exec('return document.body.innerText').catch(() => '') : '';
    throw new Error(`${e.message}\n--- window text ---\n${String(html).slice(0, 2000)}\n${logs.map((l) => l()).join('\n')}`);
  }
});
