// The web view end to end: Debian's Chromium (headless, through playwright-core) against the
// real `jarvis-cloud serve` on port 0 serving ui/dist, with the cloud runner talking to a fake
// Anthropic server over real SSE, and the real `jarvis` CLI as a second device. Every wait has
// a deadline; screenshots land in tests/browser/screenshots/.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startFakeAnthropic } from './fake-anthropic.mjs';
import { CHROMIUM, CLI, CLOUD, T, UI_DIST, call, here, launchArgs, startCloud, until } from './harness.mjs';

const SHOTS = join(here, 'screenshots');

const HOSTILE_MD = `# Notes that bite

<script>window.__pwned = 'script'</script>

<img src="x" onerror="window.__pwned = 'onerror'">

[a link](javascript:window.__pwned='link')
[entity link](javascript&#58;window.__pwned='entity')
[data link](data:text/html,<script>parent.__pwned='data'</script>)
<a href="javascript:window.__pwned='raw-a'">raw anchor</a>
<iframe src="javascript:parent.__pwned='iframe'"></iframe>

![pixel](javascript:window.__pwned='img')
`;
const HOSTILE_MDX = `import Evil from './evil.js'
export const steal = fetch('/api/me').then(() => { window.__pwned = 'mdx-export' })

# MDX title

<Evil onClick={() => { window.__pwned = 'jsx' }} />

{(() => { window.__pwned = 'expression' })()}
`;
// A 2×2 PNG.
const PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGNgYPj/n4GBgYGJgYGBAQAcBgMBmZ0jvQAAAABJRU5ErkJggg==', 'base64');

function cli(home, fakeUrl, args) {
  return execFileSync(CLI, args, {
    encoding: 'utf8',
    env: { PATH: process.env.PATH, JARVIS_HOME: home, ANTHROPIC_BASE_URL: fakeUrl, ANTHROPIC_API_KEY: 'test-key', RUST_LOG: 'warn' },
  });
}

function spawnCli(home, fakeUrl, args) {
  const child = spawn(CLI, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env.PATH, JARVIS_HOME: home, ANTHROPIC_BASE_URL: fakeUrl, ANTHROPIC_API_KEY: 'test-key', RUST_LOG: 'warn' },
  });
  let out = '';
  child.stdout.on('data', (c) => { out += c; });
  child.stderr.on('data', (c) => { out += c; });
  return {
    output: () => out,
    exited: new Promise((r) => child.on('exit', r)),
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

/** The conversation the fake model holds with each session. */
let cliRequests = 0;
function script(_body, last) {
  if (last.toolResults.some((r) => r.tool_use_id === 'toolu_plan')) {
    return { text: 'Done: plan.md is written. Have a look in the Changes tab.' };
  }
  if (last.toolResults.some((r) => r.tool_use_id === 'toolu_tests')) {
    return { text: 'Noted: a step about tests is in the plan.' };
  }
  if (/write the plan/i.test(last.text)) {
    return {
      thinking: 'The person wants a plan. A short numbered list in plan.md will do.',
      text: "Sure. I'll write a short plan into plan.md so that everyone can follow along, step by step, without any surprises.",
      deltaMs: 60,
      tools: [{ id: 'toolu_plan', name: 'write', input: { path: 'plan.md', content: '# Plan\n\n1. Read the notes\n2. Write the summary\n' } }],
    };
  }
  if (/that is all/i.test(last.text)) return { text: 'You are welcome. The plan is ready.' };
  if (/long story/i.test(last.text)) return { text: 'Once upon a time, '.repeat(200), deltaMs: 50 };
  if (/about tests/i.test(last.text)) {
    return {
      text: 'Adding it.',
      tools: [{ id: 'toolu_tests', name: 'edit', input: { path: 'plan.md', old_string: '2. Write the summary\n', new_string: '2. Write the summary\n3. Run the tests\n' } }],
    };
  }
  if (/from the cli/i.test(last.text)) {
    cliRequests += 1;
    // The device's reply streams slowly, so the browser can move the session to the cloud
    // in the middle of it; the cloud's retry of the cut reply is quick.
    return cliRequests === 1
      ? { text: 'Hello from the command line. '.repeat(12), deltaMs: 150 }
      : { text: 'Finished in the cloud after the handoff.' };
  }
  return { text: 'OK.' };
}


/** Fails the test on any script error in the page, and records dialogs (alert() would be one). */
function watch(page, sink) {
  page.on('pageerror', (e) => sink.errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') sink.console.push(`${m.type()}: ${m.text()}`); });
  page.on('dialog', (d) => { sink.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
}

test('web view: sign in, start, stream, approve, files and diff, follow-up, a CLI session live, hostile files inert, phone', async (t) => {
  for (const [what, p] of [['jarvis-cloud', CLOUD], ['jarvis', CLI], ['ui/dist (cd ui && npm run build)', join(UI_DIST, 'index.html')], ['chromium', CHROMIUM]]) {
    assert.ok(existsSync(p), `${what} is missing at ${p}`);
  }
  mkdirSync(SHOTS, { recursive: true });
  const tmp = mkdtempSync(join(tmpdir(), 'jarvis-web-'));
  const cleanup = [];
  t.after(async () => {
    for (const c of cleanup.reverse()) { try { await c(); } catch { /* best effort */ } }
    rmSync(tmp, { recursive: true, force: true });
  });

  const fake = await startFakeAnthropic(script);
  cleanup.push(() => fake.close());
  let cloud = await startCloud(join(tmp, 'data'), { provider: fake.url, allowGitHost: false });
  cleanup.push(() => cloud.stop());
  assert.ok(cloud.admin, 'the first start prints an admin token');
  const alice = (await call(cloud.base, cloud.admin, 'POST', '/api/users', { name: 'alice' })).token;

  // A workspace with ordinary and hostile files, mirrored by a headless CLI device.
  await call(cloud.base, alice, 'POST', '/api/workspaces', { id: 'notes', name: 'Notes' });
  const folder = join(tmp, 'notes');
  mkdirSync(join(folder, 'src'), { recursive: true });
  writeFileSync(join(folder, 'README.md'), '# Team notes\n\nWelcome. This folder holds **our notes**.\n\n- one\n- two\n\n[Site](https://example.com) and [the program](src/main.rs)\n');
  writeFileSync(join(folder, 'hostile.md'), HOSTILE_MD);
  writeFileSync(join(folder, 'hostile.mdx'), HOSTILE_MDX);
  writeFileSync(join(folder, 'src', 'main.rs'), 'fn main() {\n    let greeting = "hello";\n    println!("{greeting}");\n}\n');
  writeFileSync(join(folder, 'pixel.png'), PNG);
  // An agent synced from a device: it waits for an owner's approval in the web view.
  mkdirSync(join(folder, '.jarvis', 'agents'), { recursive: true });
  writeFileSync(join(folder, '.jarvis', 'agents', 'tidy.md'), '---\ntrigger: webhook\n---\nTidy the notes.\n');
  const cliHome = join(tmp, 'cli-home');
  cli(cliHome, fake.url, ['login', cloud.base, '--token', alice]);
  const mirror = spawnCli(cliHome, fake.url, ['sync', folder, '--workspace', 'notes']);
  cleanup.push(() => mirror.stop());
  await until('the workspace index lists the seeded files', async () => {
    const w = await call(cloud.base, alice, 'GET', '/api/workspaces/notes');
    return w.files.length >= 5;
  });

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: launchArgs });
  cleanup.push(() => browser.close());
  const desk = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const a = await desk.newPage();
  const b = await phone.newPage();
  const seen = { errors: [], dialogs: [], console: [] };
  watch(a, seen);
  watch(b, seen);

  // --- sign in. The phone signs in with a token; the desktop browser pairs by a code that the
  // phone approves (device-code approval).
  await b.goto(cloud.base);
  // A fresh server offers its owner's setup first; these browsers have tokens already.
  await b.getByTestId('setup-skip').click();
  await b.getByTestId('token-input').fill(alice);
  await b.getByTestId('token-submit').click();
  await b.getByTestId('tab-sessions').waitFor({ timeout: T });

  await a.goto(cloud.base);
  await a.getByTestId('setup-skip').click();
  await a.screenshot({ path: join(SHOTS, 'desktop-0-sign-in.png') });
  await a.getByTestId('pair-start').click();
  const code = (await a.getByTestId('pair-code').textContent({ timeout: T })).trim();
  assert.match(code, /^[A-Z0-9]{4}-[A-Z0-9]{4}$/);
  await b.getByTestId('approve-device-open').click();
  await b.getByTestId('approve-code').fill(code);
  await b.getByTestId('approve-submit').click();
  await b.getByText('is now signed in as you').waitFor({ timeout: T });
  await b.keyboard.press('Escape');
  await a.getByTestId('new-session').waitFor({ timeout: T });
  await a.locator('[data-testid=conn]', { hasText: 'Live' }).waitFor({ timeout: T });
  const stored = await a.evaluate(() => JSON.parse(localStorage.getItem('jarvis.auth.v1')));
  assert.match(stored.token, /^jt_/, 'the paired browser keeps its own device token');
  assert.notEqual(stored.token, alice);
  const devices = await call(cloud.base, alice, 'GET', '/api/devices');
  assert.ok(devices.devices.some((d) => d.id === stored.device && d.name.startsWith('Browser on')), JSON.stringify(devices));

  // --- with no session open, a workspace can be browsed.
  await a.getByTestId('workspace-picker').selectOption('notes');
  await a.getByTestId('file-README.md').waitFor({ timeout: T });

  // --- the synced agent waits for an owner; alice (the owner) approves it in the web view.
  await a.getByTestId('config-open').click();
  await a.locator('[data-testid=config-file]', { hasText: 'waits for an owner' }).waitFor({ timeout: T });
  await a.getByTestId('config-approve').click();
  await a.locator('[data-testid=config-file]', { hasText: 'approved' }).waitFor({ timeout: T });
  const config = await call(cloud.base, alice, 'GET', '/api/workspaces/notes/config');
  assert.equal(config.config[0].approved, true, JSON.stringify(config));
  await a.getByTestId('config-close').click();

  // --- start a session in the cloud from the desktop browser.
  await a.getByTestId('new-session').click();
  await a.getByTestId('ns-workspace').fill('notes');
  await a.getByTestId('ns-message').fill('Please write the plan');
  await a.getByTestId('ns-start').click();
  await a.waitForURL(/\/s\/[0-9a-f]+$/, { timeout: T });
  const sessionId = a.url().split('/s/')[1];

  // --- watch the reply stream in: record every length the text takes in the DOM.
  await a.evaluate(() => {
    window.__lengths = [];
    const probe = () => {
      const el = document.querySelector('[data-testid=assistant-text]');
      const n = el ? el.textContent.length : 0;
      if (n && window.__lengths.at(-1) !== n) window.__lengths.push(n);
    };
    new MutationObserver(probe).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await a.getByTestId('approval').waitFor({ timeout: T });
  const lengths = await a.evaluate(() => window.__lengths);
  assert.ok(lengths.length >= 4, `the text arrived in pieces, got lengths ${JSON.stringify(lengths)}`);
  assert.ok(lengths[0] < lengths.at(-1) / 2, `the first piece was shown before the rest: ${JSON.stringify(lengths)}`);
  await until('the session shows as waiting for approval, in the cloud', async () =>
    (await a.getByTestId('chat-status').textContent()) === 'Waiting for approval'
    && (await a.getByTestId('chat-where').textContent()) === 'Cloud');
  await a.screenshot({ path: join(SHOTS, 'desktop-1-approval.png') });
  const thinking = a.locator('details.thinking');
  assert.equal(await thinking.count(), 1, 'the thinking block is shown');
  assert.equal(await thinking.evaluate((d) => d.open), false, 'thinking starts collapsed');
  assert.equal(await thinking.locator('.thinking-text').isVisible(), false);
  await thinking.locator('summary').click();
  await thinking.getByText('A short numbered list in plan.md will do.').waitFor({ timeout: T });
  await thinking.locator('summary').click();

  // --- approve; the tool runs in the cloud, the file appears in the tree, live.
  await a.getByTestId('allow').click();
  await a.locator('[data-testid=tool-card][data-state=done]').waitFor({ timeout: T });
  await a.getByText('Done: plan.md is written.').waitFor({ timeout: T });
  await a.getByTestId('file-plan.md').waitFor({ timeout: T });
  await a.locator('[data-testid="file-plan.md"] [data-testid=changed-dot]').waitFor({ timeout: T });
  await a.getByTestId('file-plan.md').click();
  await a.locator('[data-testid=markdown] h1', { hasText: 'Plan' }).waitFor({ timeout: T });
  await until('the status is done', async () => (await a.getByTestId('chat-status').textContent()) === 'Done');
  assert.match(await a.getByTestId('cost').textContent(), /^\$\d/);
  await a.getByTestId('mode-changes').click();
  const diff = a.getByTestId('diff-plan.md');
  await diff.waitFor({ timeout: T });
  const added = await diff.locator('.dl.add').allTextContents();
  assert.deepEqual(added.map((s) => s.slice(1)), ['# Plan', '', '1. Read the notes', '2. Write the summary']);
  await a.screenshot({ path: join(SHOTS, 'desktop-2-diff.png') });

  // --- a follow-up message; its edit is approved with "Always allow".
  await a.getByTestId('composer').fill('Now add a step about tests');
  await a.getByTestId('composer').press('Enter');
  await a.locator('[data-testid=approval][data-decision=""]').waitFor({ timeout: T });
  await a.getByTestId('always-allow').click();
  await a.getByText('Noted: a step about tests is in the plan.').waitFor({ timeout: T });
  assert.equal(await a.getByTestId('msg-user').count(), 2);
  assert.equal(await a.getByTestId('composer').inputValue(), '', 'the composer is cleared after sending');
  await until('the diff has the edit as a second hunk', async () => (await diff.locator('.hunk').count()) === 2);
  assert.deepEqual(await diff.locator('.hunk').nth(1).locator('.dl.add').allTextContents(), ['+3. Run the tests']);
  await a.getByTestId('mode-file').click();
  await a.locator('[data-testid=markdown] li', { hasText: 'Run the tests' }).waitFor({ timeout: T });

  // --- Stop: a long reply in a second cloud session is interrupted from the browser.
  await a.getByTestId('new-session').click();
  await a.getByTestId('ns-workspace').fill('notes');
  await a.getByTestId('ns-message').fill('Tell me a long story');
  await a.getByTestId('ns-start').click();
  await a.waitForURL((u) => !u.pathname.endsWith(sessionId) && /\/s\//.test(u.pathname), { timeout: T });
  await a.getByText('Once upon a time,').first().waitFor({ timeout: T });
  await a.getByTestId('interrupt').click();
  await until('the story session is stopped', async () => (await a.getByTestId('chat-status').textContent()) === 'Stopped');
  const told = (await a.getByTestId('assistant-text').textContent()).length;
  assert.ok(told > 0 && told < 'Once upon a time, '.length * 200, `the reply was cut short (${told} characters), its text kept`);

  // --- a session started by the headless CLI device appears live, running on that device.
  const cliFolder = join(tmp, 'cli-project');
  mkdirSync(cliFolder);
  const run = spawnCli(cliHome, fake.url, ['run', '--session', 'cli-1', '--workspace', 'cliproj', '--permission-mode', 'allow-all', '--dir', cliFolder, 'Say hello from the CLI']);
  cleanup.push(() => run.stop());
  const item = a.getByTestId('session-cli-1');
  await item.waitFor({ timeout: T });
  await until('the CLI session shows as running on another device', async () =>
    (await item.getAttribute('data-status')) === 'running' && (await item.getByTestId('where').textContent()) === 'Another device');
  await item.click();
  await a.getByText('Hello from the command line.').first().waitFor({ timeout: T });
  await a.screenshot({ path: join(SHOTS, 'desktop-3-cli-session.png') });

  // --- Continue in cloud, from the browser, while the device is streaming.
  assert.equal(await a.getByTestId('chat-where').textContent(), 'Another device');
  await a.getByTestId('continue-cloud').click();
  await until('the session now runs in the cloud', async () => (await a.getByTestId('chat-where').textContent()) === 'Cloud');
  const code2 = await run.exited;
  assert.equal(code2, 0, run.output());
  assert.match(run.output(), /handed_to|cloud/, run.output());
  await a.getByText('Finished in the cloud after the handoff.').waitFor({ timeout: T });
  await until('the CLI session is done', async () => (await item.getAttribute('data-status')) === 'done');

  // --- hostile workspace content renders inert.
  await a.goto(`${cloud.base}/s/${sessionId}`);
  await a.getByTestId('file-hostile.md').click();
  const md = a.getByTestId('markdown');
  await md.locator('h1', { hasText: 'Notes that bite' }).waitFor({ timeout: T });
  await md.getByText("<script>window.__pwned = 'script'</script>").waitFor({ timeout: T });
  const hostileState = async () => a.evaluate(() => ({
    pwned: window.__pwned ?? null,
    scripts: document.querySelectorAll('[data-testid=markdown] script, [data-testid=markdown] iframe, [data-testid=markdown] img').length,
    badHrefs: [...document.querySelectorAll('a[href]')].map((x) => x.getAttribute('href')).filter((h) => /^\s*(javascript|data|vbscript):/i.test(h)),
    handlers: [...document.querySelectorAll('[data-testid=markdown] *')].filter((el) => [...el.attributes].some((at) => at.name.startsWith('on'))).length,
  }));
  assert.deepEqual(await hostileState(), { pwned: null, scripts: 0, badHrefs: [], handlers: 0 });
  await a.getByTestId('file-hostile.mdx').click();
  await md.locator('h1', { hasText: 'MDX title' }).waitFor({ timeout: T });
  await md.getByText("import Evil from './evil.js'").waitFor({ timeout: T });
  assert.equal(await md.locator('evil').count(), 0);
  assert.deepEqual(await hostileState(), { pwned: null, scripts: 0, badHrefs: [], handlers: 0 });
  await a.screenshot({ path: join(SHOTS, 'desktop-4-hostile-mdx.png') });

  // --- the other previews: Markdown, code with highlighting, an image blob.
  await a.getByTestId('file-README.md').click();
  await md.locator('h1', { hasText: 'Team notes' }).waitFor({ timeout: T });
  assert.equal(await md.locator('a[href="https://example.com"][rel~=noopener]').count(), 1);
  // A relative link opens that file of the workspace, inside the app.
  await md.getByRole('link', { name: 'the program' }).click();
  await a.locator('[data-testid=code] .hljs-keyword').first().waitFor({ timeout: T });
  assert.match(a.url(), /\/s\/[0-9a-f]+$/, 'the link did not navigate away');
  assert.equal(await a.locator('[data-testid="file-src/main.rs"].selected').count(), 1);
  await a.getByTestId('file-pixel.png').click();
  await until('the image blob is shown', () => a.getByTestId('image').evaluate((img) => img.complete && img.naturalWidth === 2));

  // --- a live edit from the CLI device's folder reaches the open preview.
  await a.getByTestId('file-README.md').click();
  writeFileSync(join(folder, 'README.md'), '# Team notes, edited on the laptop\n');
  await md.locator('h1', { hasText: 'edited on the laptop' }).waitFor({ timeout: T });

  // --- the three panels resize by dragging the splitters (and remember it).
  const leftWidth = () => a.locator('.panel.left').evaluate((el) => el.getBoundingClientRect().width);
  const chatWidth = () => a.locator('.panel.right').evaluate((el) => el.getBoundingClientRect().width);
  const [l0, c0] = [await leftWidth(), await chatWidth()];
  const drag = async (i, dx) => {
    const box = await a.getByRole('separator').nth(i).boundingBox();
    await a.mouse.move(box.x + box.width / 2, box.y + 200);
    await a.mouse.down();
    await a.mouse.move(box.x + box.width / 2 + dx / 2, box.y + 200);
    await a.mouse.move(box.x + box.width / 2 + dx, box.y + 200);
    await a.mouse.up();
  };
  await drag(0, 80);
  await drag(1, -60);
  await until('the panels took the new widths', async () =>
    Math.abs((await leftWidth()) - (l0 + 80)) <= 2 && Math.abs((await chatWidth()) - (c0 + 60)) <= 2);
  await a.reload();
  await a.locator('.panel.left').waitFor({ timeout: T });
  assert.ok(Math.abs((await leftWidth()) - (l0 + 80)) <= 2, 'the widths survive a reload');

  // --- the phone: one panel at a time, tabs to switch.
  await b.getByTestId('tab-sessions').click();
  await b.getByTestId(`session-${sessionId}`).click();
  await b.getByText('Noted: a step about tests is in the plan.').waitFor({ timeout: T });
  assert.equal(await b.locator('.panels').count(), 0, 'no three-panel grid on a phone');
  await b.screenshot({ path: join(SHOTS, 'phone-1-chat.png') });
  await b.getByTestId('tab-files').click();
  await b.getByTestId('file-plan.md').waitFor({ timeout: T });
  await b.screenshot({ path: join(SHOTS, 'phone-2-files.png') });
  await b.getByTestId('tab-sessions').click();
  await b.screenshot({ path: join(SHOTS, 'phone-0-sessions.png') });
  const wide = await b.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
  assert.ok(wide, 'nothing overflows the phone width');

  // The pairing poll's "not approved yet" is a 428 by design; Chromium logs every non-2xx load.
  assert.deepEqual(seen.console.filter((m) => !/status of 428/.test(m)), [], 'no other errors or warnings on the console');

  // --- revoking the desktop browser (from anywhere) signs it out, with a note, and forgets the token.
  await call(cloud.base, alice, 'DELETE', `/api/devices/${stored.device}`);
  await a.getByTestId('pair-start').waitFor({ timeout: T });
  await a.getByText('Your sign-in has ended').waitFor({ timeout: T });
  assert.equal(await a.evaluate(() => localStorage.getItem('jarvis.auth.v1')), null);

  // --- the hub restarts: the phone shows it is offline, reconnects by itself, and the open
  // session is intact (documents from the hub's disk).
  await b.getByTestId(`session-${sessionId}`).click();
  await b.getByText('Noted: a step about tests is in the plan.').waitFor({ timeout: T });
  const port = cloud.port;
  await cloud.stop();
  await b.locator('[data-testid=conn]', { hasText: 'Offline' }).or(b.locator('[data-testid=conn]', { hasText: 'Connecting' })).waitFor({ timeout: T });
  cloud = await startCloud(join(tmp, 'data'), { port, provider: fake.url, allowGitHost: false });
  await b.locator('[data-testid=conn]', { hasText: 'Live' }).waitFor({ timeout: 30_000 });
  await b.getByTestId('composer').fill('Thanks, that is all');
  await b.getByTestId('send').click();
  await b.getByText('You are welcome. The plan is ready.').waitFor({ timeout: T });
  assert.equal(await b.getByTestId('msg-user').count(), 3);

  assert.deepEqual(seen.errors, [], 'no script errors in the pages');
  assert.deepEqual(seen.dialogs, [], 'no dialogs (alert) were opened');
});
