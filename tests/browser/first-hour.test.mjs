// The first hour, end to end, with no terminal after the server's start: Chromium (desktop
// 1280x800 and a phone 390x844) against the real `jarvis-cloud serve` started on an empty data
// dir exactly as scripts/run.sh does (its debug build; no provider in its environment). The
// owner is made with the setup code the server printed, the provider (a fake Anthropic server
// on loopback) is tested and saved in the browser, a workspace is cloned from a loopback git
// server (real `git http-backend`, token required), another is uploaded (a text file and an
// image), a session answers, an invited user signs
// up by link and sees only what they were given. Then `jarvis sync` of a folder shows up in the
// web view within 10 s for that admin and for the non-admin, a provider failure reads in plain
// words and Retry works, and a server restart runs no failed session again. Screenshots are
// saved into tests/browser/screenshots/ (docs/screenshots/, the README's, with
// JARVIS_UPDATE_SCREENSHOTS=1); measured times into
// tests/browser/results/first-hour.json.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { startFakeAnthropic } from './fake-anthropic.mjs';
import { makeRepo, startGitServer } from './git-http.mjs';
import {
  CHROMIUM, CLI, CLOUD, GIT_TOKEN, GOOD_KEY, RESULTS, SHOTS, T, UI_DIST,
  call, launchArgs, startCloud, syncVisible, tokenOf, until,
} from './harness.mjs';

function script(_body, last) {
  if (/what is in this repository/i.test(last.text)) return { text: 'It holds a README and a plan in docs/plan.md.' };
  if (/next step/i.test(last.text)) return { text: 'Next: write the summary.' };
  if (/after the restart/i.test(last.text)) return { text: 'Still here after the restart.' };
  return { text: 'OK.' };
}

function watch(page, sink) {
  page.on('pageerror', (e) => sink.errors.push(String(e)));
  page.on('dialog', (d) => { sink.dialogs.push(d.message()); d.dismiss().catch(() => {}); });
}

test('the first hour: owner, provider, clone, session, invitation, sync, plain failure and Retry, restart', async (t) => {
  for (const [what, p] of [['jarvis-cloud', CLOUD], ['jarvis', CLI], ['ui/dist (cd ui && npm run build)', join(UI_DIST, 'index.html')], ['chromium', CHROMIUM]]) {
    assert.ok(existsSync(p), `${what} is missing at ${p}`);
  }
  mkdirSync(SHOTS, { recursive: true });
  mkdirSync(RESULTS, { recursive: true });
  const tmp = mkdtempSync(join(tmpdir(), 'jarvis-first-hour-'));
  const cleanup = [];
  t.after(async () => {
    for (const c of cleanup.reverse()) { try { await c(); } catch { /* best effort */ } }
    rmSync(tmp, { recursive: true, force: true });
  });

  const fake = await startFakeAnthropic(script, { key: GOOD_KEY });
  cleanup.push(() => fake.close());
  const gitRoot = join(tmp, 'git');
  mkdirSync(gitRoot);
  makeRepo(gitRoot, 'team-notes', { 'README.md': '# Team notes\n\nWhat we know.\n', 'docs/plan.md': '# Plan\n\n1. Read\n2. Write\n' });
  const git = await startGitServer(gitRoot, { token: GIT_TOKEN });
  cleanup.push(() => git.close());

  const data = join(tmp, 'data');
  let cloud = await startCloud(data);
  cleanup.push(() => cloud.stop());
  const printed = cloud.output().match(/first start: open (http:\/\/\S+)\/#setup=([A-Z0-9]{4}-[A-Z0-9]{4}) /);
  assert.ok(printed, `the first start prints the address and the setup code:\n${cloud.output()}`);
  assert.equal(printed[1], cloud.base);

  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: launchArgs });
  cleanup.push(() => browser.close());
  const desk = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
  const a = await desk.newPage();
  const seen = { errors: [], dialogs: [] };
  watch(a, seen);

  // --- 1. The owner, with the printed code (the address carries it).
  await a.goto(`${printed[1]}/#setup=${printed[2]}`);
  await a.getByTestId('setup-form').waitFor({ timeout: T });
  assert.equal(await a.getByTestId('setup-code').inputValue(), printed[2]);
  await a.getByTestId('setup-name').fill('Olga');
  await a.screenshot({ path: join(SHOTS, 'first-hour-1-owner.png') });
  await a.getByTestId('setup-submit').click();

  // --- 2. The provider: a wrong key is refused in plain words and saves nothing; the right one
  // is tested with one request and saved.
  await a.getByTestId('provider-form').waitFor({ timeout: T });
  // Closed without a provider: the owner is told at once, with the way back.
  await a.getByTestId('setup-close').click();
  await a.getByTestId('no-provider').waitFor({ timeout: T });
  await a.getByTestId('no-provider').getByRole('button').click();
  await a.getByTestId('provider-form').waitFor({ timeout: T });
  const owner = await tokenOf(a);
  assert.match(owner, /^jt_/);
  await a.getByTestId('provider-api_key').fill('sk-ant-wrong');
  await a.getByTestId('provider-base_url').fill(fake.url);
  await a.getByTestId('provider-save').click();
  await a.getByTestId('provider-result').filter({ hasText: 'refused the key' }).waitFor({ timeout: T });
  await a.screenshot({ path: join(SHOTS, 'first-hour-2-provider-refused.png') });
  assert.equal((await call(cloud.base, owner, 'GET', '/api/server/provider')).configured, false);
  await a.getByTestId('provider-api_key').fill(GOOD_KEY);
  await a.getByTestId('provider-base_url').fill(fake.url);
  await a.getByTestId('provider-save').click();
  await a.getByTestId('provider-result').filter({ hasText: 'Saved' }).waitFor({ timeout: T });
  assert.equal(fake.requests.length, 1, 'one test request reached the provider with the right key');
  const shown = await call(cloud.base, owner, 'GET', '/api/server/provider');
  assert.deepEqual([shown.configured, shown.source, shown.kind], [true, 'browser', 'anthropic']);
  assert.ok(!JSON.stringify(shown).includes(GOOD_KEY), 'the key is never shown again');

  // --- 3. A workspace cloned from the loopback git server, with the token.
  await a.getByTestId('step-workspace').click();
  await a.getByTestId('workspace-id').fill('team-notes');
  await a.getByTestId('workspace-source-git').check();
  await a.getByTestId('workspace-git-url').fill(`${git.url}/team-notes.git`);
  await a.getByTestId('workspace-git-token').fill(GIT_TOKEN);
  await a.screenshot({ path: join(SHOTS, 'first-hour-3-clone.png') });
  await a.getByTestId('workspace-create').click();
  await a.getByTestId('workspace-result').filter({ hasText: 'is ready with' }).waitFor({ timeout: 60_000 });
  assert.ok(git.requests.length > 0 && git.requests.every((r) => r.authorized), 'every git request carried the token');
  // A second, private workspace the invited user is not given: files uploaded from this computer.
  await a.getByTestId('workspace-id').fill('private');
  await a.getByTestId('workspace-source-files').check();
  await a.getByTestId('workspace-files').setInputFiles([
    { name: 'salaries.md', mimeType: 'text/markdown', buffer: Buffer.from('# Salaries\n\nNot for everyone.\n') },
    { name: 'logo.png', mimeType: 'image/png', buffer: Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGNgYPj/n4GBgYGJgYGBAQAcBgMBmZ0jvQAAAABJRU5ErkJggg==', 'base64') },
  ]);
  await a.getByTestId('workspace-create').click();
  await a.getByTestId('workspace-result').filter({ hasText: 'private is ready with 2 files' }).waitFor({ timeout: T });
  const uploaded = (await call(cloud.base, owner, 'GET', '/api/workspaces/private')).files.map((f) => f.path).sort();
  assert.deepEqual(uploaded, ['logo.png', 'salaries.md']);
  await a.getByTestId('setup-close').click();
  await a.getByTestId('no-provider').waitFor({ state: 'detached', timeout: T });

  // --- 4. A session in the cloned workspace answers.
  await a.getByTestId('new-session').click();
  await a.getByTestId('ns-workspace').fill('team-notes');
  await a.getByTestId('ns-message').fill('What is in this repository?');
  await a.getByTestId('ns-start').click();
  await a.getByText('It holds a README and a plan in docs/plan.md.').waitFor({ timeout: T });
  await a.getByTestId('file-docs/plan.md').waitFor({ timeout: T });
  await a.screenshot({ path: join(SHOTS, 'first-hour-4-answer.png') });
  const sessionId = new URL(a.url()).pathname.split('/')[2];
  // Done: nothing to continue in the cloud.
  await a.locator('[data-testid=chat-status]', { hasText: 'Done' }).waitFor({ timeout: T });
  assert.equal(await a.getByTestId('continue-cloud').count(), 0, 'a finished session offers no Continue in cloud');
  // A session in the private workspace, for the invited user not to see.
  const hidden = (await call(cloud.base, owner, 'POST', '/api/sessions', { workspace: 'private', title: 'Private plans' })).session.id;

  // --- 5. An invitation: Ed signs up by link on his phone as an editor of team-notes only.
  await a.getByTestId('setup-open').click();
  await a.getByTestId('step-invite').click();
  await a.getByTestId('invite-workspace').selectOption('team-notes');
  await a.getByTestId('invite-role').selectOption('editor');
  await a.getByTestId('invite-create').click();
  const link = await a.getByTestId('invite-link').inputValue({ timeout: T });
  assert.match(link, new RegExp(`^${cloud.base}/invite/ji_[0-9a-f]{32}$`));
  await a.screenshot({ path: join(SHOTS, 'first-hour-5-invite.png') });
  await a.getByTestId('setup-close').click();

  const b = await phone.newPage();
  watch(b, seen);
  // A wrong token, on a phone that never signed in: the token comes first, and the mistake is
  // said once, plainly (not as an ended sign-in).
  await b.goto(cloud.base);
  await b.getByTestId('token-input').fill('jt_not_a_real_token');
  await b.getByTestId('token-submit').click();
  await b.getByText('That token is not valid.').waitFor({ timeout: T });
  assert.equal(await b.getByText('sign-in has ended').count(), 0, 'no contradictory banner');
  await b.goto(link);
  await b.getByTestId('invite-info').filter({ hasText: 'Olga invited you to the workspace team-notes as an editor' }).waitFor({ timeout: T });
  await b.getByTestId('invite-name').fill('Ed');
  await b.screenshot({ path: join(SHOTS, 'first-hour-6-phone-invited.png') });
  await b.getByTestId('invite-submit').click();
  await b.getByTestId(`session-${sessionId}`).waitFor({ timeout: T });
  assert.equal(await b.getByTestId(`session-${hidden}`).count(), 0, 'the private session is not shown');
  const ed = await tokenOf(b);
  const edSees = (await call(cloud.base, ed, 'GET', '/api/workspaces')).workspaces.map((w) => w.id);
  assert.deepEqual(edSees, ['team-notes'], 'Ed sees only what he was given');
  assert.equal((await fetch(`${cloud.base}/api/users`, { headers: { authorization: `Bearer ${ed}` } })).status, 403);
  await b.screenshot({ path: join(SHOTS, 'first-hour-7-phone-sessions.png') });
  // Every action of the top bar fits the phone's width.
  const signOut = await b.getByTestId('sign-out').boundingBox();
  assert.ok(signOut && signOut.x + signOut.width <= 390, `Sign out is on screen: ${JSON.stringify(signOut)}`);
  assert.ok(await b.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'nothing overflows the phone width');
  // The link was for one person.
  const again = await fetch(`${cloud.base}/api${new URL(link).pathname.replace('/invite/', '/invites/')}`);
  assert.equal(again.status, 410, "a used invitation is gone (invite_not_valid)");

  // --- 6. `jarvis sync` of a folder: its files are in the web view within 10 s, for the admin
  // (desktop) and for the non-admin (phone).
  await a.goto(cloud.base);
  const olgaSync = await syncVisible((m) => t.diagnostic(m), tmp, cloud.base, owner, a, 'olga-laptop', cleanup);
  await a.screenshot({ path: join(SHOTS, 'first-hour-8-synced-folder.png') });
  await b.goto(cloud.base);
  await b.getByTestId('tab-files').click();
  const edSync = await syncVisible((m) => t.diagnostic(m), tmp, cloud.base, ed, b, 'ed-laptop', cleanup);
  await b.screenshot({ path: join(SHOTS, 'first-hour-9-phone-synced-folder.png') });
  assert.deepEqual((await call(cloud.base, ed, 'GET', '/api/workspaces')).workspaces.map((w) => w.id).sort(), ['ed-laptop', 'team-notes']);

  // --- 7. A provider failure in plain words, and a Retry that works.
  await a.goto(`${cloud.base}/s/${sessionId}`);
  await a.getByText('It holds a README').waitFor({ timeout: T });
  fake.setMode('overloaded');
  await a.getByTestId('composer').fill('What is the next step?');
  await a.getByTestId('send').click();
  const failure = a.getByTestId('failure');
  await failure.waitFor({ timeout: 60_000 });
  assert.equal(await failure.getAttribute('data-kind'), 'busy');
  assert.match(await failure.textContent(), /The AI provider is busy right now\..*Wait a minute, then press Retry/);
  await a.screenshot({ path: join(SHOTS, 'first-hour-10-provider-busy.png') });
  fake.setMode('ok');
  const answered = fake.requests.length;
  await a.getByTestId('retry').click();
  await a.getByText('Next: write the summary.').waitFor({ timeout: T });
  await failure.waitFor({ state: 'detached', timeout: T });
  assert.equal(fake.requests.length, answered + 1, 'Retry ran the failed turn once');
  await a.screenshot({ path: join(SHOTS, 'first-hour-11-retried.png') });

  // --- 8. A failed session stays failed across a restart: nothing asks the provider again.
  fake.setMode('overloaded');
  await a.getByTestId('composer').fill('And the step after that?');
  await a.getByTestId('send').click();
  await failure.waitFor({ timeout: 60_000 });
  fake.setMode('ok');
  const beforeRestart = fake.requests.length + fake.refused.length;
  await olgaSync.sync.stop();
  await edSync.sync.stop();
  const port = cloud.port;
  await cloud.stop();
  cloud = await startCloud(data, { port });
  assert.doesNotMatch(cloud.output(), /first start/, 'a restart after the setup prints no setup code');
  // The restarted runner is working (a new session answers), and the failed one was not run.
  await call(cloud.base, owner, 'POST', '/api/sessions', { workspace: 'team-notes', message: 'Hello after the restart', run: 'cloud' });
  await until('a new session answers after the restart', () => fake.requests.some((r) => JSON.stringify(r.messages).includes('Hello after the restart')));
  assert.equal(fake.requests.length + fake.refused.length, beforeRestart + 1, 'the restart ran no failed session again');
  await a.reload();
  await failure.waitFor({ timeout: T });
  assert.equal((await call(cloud.base, owner, 'GET', `/api/sessions/${sessionId}`)).status, 'failed');

  writeFileSync(join(RESULTS, 'first-hour.json'), `${JSON.stringify({ sync_visible_ms: { admin: olgaSync.ms, member: edSync.ms } }, null, 2)}\n`);
  assert.deepEqual(seen.errors, [], 'no script errors in the pages');
  assert.deepEqual(seen.dialogs, [], 'no dialogs were opened');
});
