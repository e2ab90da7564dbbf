// Shared by the first-hour browser test and the sync-visibility benchmark: the real binaries
// started as scripts/run.sh starts them, and `jarvis sync` measured until the web view shows
// the folder's files.
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const run = promisify(execFile);
export const here = dirname(fileURLToPath(import.meta.url));
export const repo = resolve(here, '../..');
export const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(repo, 'target');
export const CLOUD = process.env.JARVIS_CLOUD_BIN ?? join(targetDir, 'debug', 'jarvis-cloud');
export const CLI = process.env.JARVIS_BIN ?? join(targetDir, 'debug', 'jarvis');
export const UI_DIST = join(repo, 'ui', 'dist');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
/**
 * Where the first hour's screenshots go: tests/browser/screenshots/ on an ordinary run, so a
 * test run never dirties the checkout; docs/screenshots/ (the README's) with
 * JARVIS_UPDATE_SCREENSHOTS=1.
 */
export const SHOTS = process.env.JARVIS_UPDATE_SCREENSHOTS === '1' ? join(repo, 'docs', 'screenshots') : join(here, 'screenshots');
export const RESULTS = join(here, 'results');
export const T = 20_000;
/** The promise: a synced folder is in the web view within this. */
export const SYNC_VISIBLE_MS = 10_000;
export const GOOD_KEY = 'sk-ant-test-good-key';
export const GIT_TOKEN = 'ghp_test_token_123';

export function until(what, cond, ms = T) {
  return new Promise((ok, fail) => {
    const start = Date.now();
    const tick = async () => {
      let v = false;
      try { v = await cond(); } catch { v = false; }
      if (v) return ok(v);
      if (Date.now() - start > ms) return fail(new Error(`timed out after ${ms} ms waiting for: ${what}`));
      setTimeout(tick, 25);
    };
    tick();
  });
}

/**
 * `jarvis-cloud serve` on `port` (0: any), as scripts/run.sh runs it: no provider from this
 * environment (`provider`: a fake Anthropic server's address to use instead), commands of
 * cloud sessions unsandboxed by opt-in unless `unsandboxed` is false, clones from 127.0.0.1
 * allowed unless `allowGitHost` is false. Returns its address, port, the printed admin token
 * and output, and `stop()`.
 */
export async function startCloud(dataDir, { port = 0, provider, unsandboxed = true, allowGitHost = true } = {}) {
  const env = { ...process.env, RUST_LOG: 'warn', JARVIS_SANDBOX: 'limits' };
  for (const k of Object.keys(env)) if (/^(ANTHROPIC_|CLAUDE_CODE_|AWS_|OPENAI_|JARVIS_OPENAI|CLOUD_ML)/.test(k)) delete env[k];
  if (provider) Object.assign(env, { ANTHROPIC_BASE_URL: provider, ANTHROPIC_API_KEY: 'test-key' });
  if (unsandboxed) env.JARVIS_ALLOW_UNSANDBOXED = '1';
  const args = ['serve', '--host', '127.0.0.1', '--port', String(port), '--data-dir', dataDir, '--ui-dir', UI_DIST];
  if (allowGitHost) args.push('--test-allow-git-host', '127.0.0.1');
  const child = spawn(CLOUD, args, { stdio: ['ignore', 'pipe', 'inherit'], env });
  let out = '';
  const bound = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`jarvis-cloud did not start: ${out}`)), T);
    child.stdout.on('data', (c) => {
      out += c;
      const m = out.match(/listening on 127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); ok(Number(m[1])); }
    });
    child.on('exit', (code) => { clearTimeout(timer); fail(new Error(`jarvis-cloud exited with ${code}`)); });
  });
  return {
    base: `http://127.0.0.1:${bound}`,
    port: bound,
    admin: out.match(/admin token[^:]*: (jt_\S+)/)?.[1],
    output: () => out,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.on('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

export async function call(base, token, method, path, body) {
  const r = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const v = await r.json().catch(() => null);
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(v)}`);
  return v;
}

export function cliEnv(home) {
  return { PATH: process.env.PATH, JARVIS_HOME: home, RUST_LOG: 'warn' };
}

export function spawnSync(home, folder) {
  const child = spawn(CLI, ['sync', folder], { stdio: ['ignore', 'pipe', 'pipe'], env: cliEnv(home) });
  let out = '';
  child.stdout.on('data', (c) => { out += c; });
  child.stderr.on('data', (c) => { out += c; });
  return {
    output: () => out,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.on('exit', r));
      child.kill('SIGINT');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(t);
    },
  };
}

export const launchArgs = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

export const tokenOf = (page) => page.evaluate(() => JSON.parse(localStorage.getItem('jarvis.auth.v1') ?? 'null')?.token);

/**
 * Starts `jarvis sync` of a new folder as the device of `token`; returns ms until `page` (no
 * session open) lists one of its files, choosing the workspace in the picker.
 */
export async function syncVisible(log, tmp, base, token, page, name, cleanup) {
  const folder = join(tmp, name);
  mkdirSync(join(folder, 'notes'), { recursive: true });
  writeFileSync(join(folder, 'notes', `${name}.md`), `# ${name}\n\nSynced from a laptop.\n`);
  writeFileSync(join(folder, 'todo.txt'), 'buy milk\n');
  const home = join(tmp, `${name}-home`);
  await run(CLI, ['login', base, '--token', token], { env: cliEnv(home) });
  const started = Date.now();
  const sync = spawnSync(home, folder);
  cleanup.push(() => sync.stop());
  await until(`workspace ${name} offered in the web view`, async () => {
    const options = await page.getByTestId('workspace-picker').locator('option').allTextContents().catch(() => []);
    return options.includes(name);
  }, SYNC_VISIBLE_MS).catch((e) => { throw new Error(`${e.message}\njarvis sync said: ${sync.output()}`); });
  await page.getByTestId('workspace-picker').selectOption(name);
  await page.getByTestId(`file-notes/${name}.md`).waitFor({ timeout: Math.max(1, SYNC_VISIBLE_MS - (Date.now() - started)) });
  const ms = Date.now() - started;
  assert.ok(ms <= SYNC_VISIBLE_MS, `${name}: visible after ${ms} ms`);
  log(`jarvis sync → files in the web view (${name}): ${ms} ms`);
  return { ms, sync };
}

