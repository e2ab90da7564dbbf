// A workspace's Claude Code command from the web view: the `/` picker lists the commands the
// synced workspace defines, and `/review src/lib.rs` sent from the composer is expanded by the
// cloud runner into the command's text. Debian's Chromium through playwright-core, the real
// `jarvis-cloud serve` and `jarvis sync`, the fake Anthropic server; every wait has a deadline.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startFakeAnthropic } from './fake-anthropic.mjs';
import { CHROMIUM, CLI, CLOUD, T, UI_DIST, call, repo, startCloud, until } from './harness.mjs';

const FIXTURE = join(repo, 'crates', 'cli', 'tests', 'fixtures', 'claude-setup');

const cliEnv = (home, fakeUrl) => ({ PATH: process.env.PATH, JARVIS_HOME: home, ANTHROPIC_BASE_URL: fakeUrl, ANTHROPIC_API_KEY: 'test-key', RUST_LOG: 'warn' });

function script(_body, last) {
  if (last.text.includes('Review src/lib.rs for bugs and unclear names')) return { text: 'Reviewed through the workspace command.' };
  return { text: 'Hello from the cloud.' };
}

test('web view: the / picker lists workspace commands and /review expands in the cloud', async (t) => {
  for (const [what, p] of [['jarvis-cloud', CLOUD], ['jarvis', CLI], ['ui/dist (cd ui && npm run build)', join(UI_DIST, 'index.html')], ['chromium', CHROMIUM]]) {
    assert.ok(existsSync(p), `${what} is missing at ${p}`);
  }
  const tmp = mkdtempSync(join(tmpdir(), 'jarvis-commands-'));
  const cleanup = [];
  t.after(async () => {
    for (const c of cleanup.reverse()) { try { await c(); } catch { /* best effort */ } }
    rmSync(tmp, { recursive: true, force: true });
  });
  const fake = await startFakeAnthropic(script);
  cleanup.push(() => fake.close());
  const cloud = await startCloud(join(tmp, 'data'), { provider: fake.url, unsandboxed: false, allowGitHost: false });
  cleanup.push(() => cloud.stop());
  const alice = (await call(cloud.base, cloud.admin, 'POST', '/api/users', { name: 'alice' })).token;
  await call(cloud.base, alice, 'POST', '/api/workspaces', { id: 'proj', name: 'Project' });

  // The fixture project, mirrored by a headless CLI device.
  const folder = join(tmp, 'proj');
  cpSync(FIXTURE, folder, { recursive: true });
  const home = join(tmp, 'cli-home');
  execFileSync(CLI, ['login', cloud.base, '--token', alice], { env: cliEnv(home, fake.url) });
  const mirror = spawn(CLI, ['sync', folder, '--workspace', 'proj'], { stdio: 'ignore', env: cliEnv(home, fake.url) });
  cleanup.push(async () => { if (mirror.exitCode === null) { const e = new Promise((r) => mirror.on('exit', r)); mirror.kill('SIGINT'); await e; } });
  await until('the hub lists the command file', async () => {
    const w = await call(cloud.base, alice, 'GET', '/api/workspaces/proj');
    return w.files.some((f) => (f.path ?? f) === '.claude/commands/review.md');
  });

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'] });
  cleanup.push(() => browser.close());
  const page = await (await browser.newContext({ viewport: { width: 1280, height: 820 } })).newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(cloud.base);
  await page.getByTestId('setup-skip').click();
  await page.getByTestId('token-input').fill(alice);
  await page.getByTestId('token-submit').click();
  await page.getByTestId('new-session').click();
  await page.getByTestId('ns-workspace').fill('proj');
  await page.getByTestId('ns-message').fill('hello');
  await page.getByTestId('ns-start').click();
  await page.waitForURL(/\/s\/[0-9a-f]+$/, { timeout: T });
  await page.getByText('Hello from the cloud.').waitFor({ timeout: T });

  // Typing `/` offers the workspace's commands; picking one fills the composer.
  await page.getByTestId('composer').fill('/re');
  const pick = page.getByTestId('command-pick');
  await pick.first().waitFor({ timeout: T });
  assert.deepEqual(await pick.allTextContents(), ['/review']);
  await pick.first().click();
  assert.equal(await page.getByTestId('composer').inputValue(), '/review ');
  await page.getByTestId('composer').pressSequentially('src/lib.rs');
  assert.equal(await page.getByTestId('command-picker').count(), 0, 'the picker closes once arguments follow');
  await page.getByTestId('composer').press('Enter');
  await page.getByText('Reviewed through the workspace command.').waitFor({ timeout: T });

  // The model saw what was typed and the command's text, expanded with the argument.
  const last = fake.requests.at(-1);
  const user = last.messages.at(-1).content.filter((c) => c.type === 'text').map((c) => c.text);
  assert.equal(user[0], '/review src/lib.rs');
  assert.match(user[1], /Review src\/lib\.rs for bugs and unclear names/);
  assert.deepEqual(errors, []);
});
