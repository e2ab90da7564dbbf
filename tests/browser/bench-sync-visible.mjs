// Benchmark: how long from `jarvis sync <folder>` (a new folder, the CLI started cold) until the
// web view lists the folder's files, for an admin and for a member (non-admin), each in its own
// Chromium page signed in with a token. One jarvis-cloud (debug build, as the browser tests),
// BENCH_RUNS folders per user (default 5). Prints a Markdown table row per user.
//   cd tests/browser && node bench-sync-visible.mjs
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { CHROMIUM, T, call, launchArgs, startCloud, syncVisible } from './harness.mjs';

const runs = Number(process.env.BENCH_RUNS ?? 5);
const tmp = mkdtempSync(join(tmpdir(), 'jarvis-bench-sync-'));
const cleanup = [];
try {
  const cloud = await startCloud(join(tmp, 'data'));
  cleanup.push(() => cloud.stop());
  const admin = cloud.output().match(/admin token[^:]*: (jt_\S+)/)?.[1];
  if (!admin) throw new Error(`no admin token printed:\n${cloud.output()}`);
  const member = (await call(cloud.base, admin, 'POST', '/api/users', { name: 'member' })).token;
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: launchArgs });
  cleanup.push(() => browser.close());
  const results = {};
  for (const [who, token] of [['admin', admin], ['member', member]]) {
    const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    await page.goto(cloud.base);
    await page.getByTestId('setup-skip').click();
    await page.getByTestId('token-input').fill(token);
    await page.getByTestId('token-submit').click();
    await page.getByTestId('new-session').waitFor({ timeout: T });
    results[who] = [];
    for (let i = 0; i < runs; i++) {
      const { ms, sync } = await syncVisible(() => {}, tmp, cloud.base, token, page, `${who}-${i}`, cleanup);
      results[who].push(ms);
      await sync.stop();
    }
  }
  const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
  console.log('| user | runs | median | max |');
  console.log('|---|---|---|---|');
  for (const [who, xs] of Object.entries(results)) {
    console.log(`| ${who} | ${xs.length} | ${(pct(xs, 0.5) / 1000).toFixed(1)} s | ${(Math.max(...xs) / 1000).toFixed(1)} s |`);
  }
} finally {
  for (const c of cleanup.reverse()) { try { await c(); } catch { /* best effort */ } }
  rmSync(tmp, { recursive: true, force: true });
}
