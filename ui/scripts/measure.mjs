// Bundle size and time to interactive of the web view, as the README reports them.
//   node scripts/measure.mjs [--runs 15]
// Builds nothing: measures ui/dist as built (npm run build). Starts `jarvis-cloud serve` on port
// 0 (target/debug or JARVIS_CLOUD_BIN, with --ui-dir dist) and loads the page in Debian's
// Chromium, headless, through playwright-core, each run in a fresh browser context (cold HTTP
// cache). Time to interactive = navigation start → the first screen rendered with its handlers
// attached (performance mark `jarvis:interactive`); for a signed-in browser also → the session
// list loaded from the API (`jarvis:sessions`).
import { readFileSync, readdirSync, statSync, mkdtempSync, rmSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { spawn } from 'node:child_process';
import { tmpdir, cpus } from 'node:os';
import { createRequire } from 'node:module';

const here = dirname(fileURLToPath(import.meta.url));
const ui = resolve(here, '..');
const repo = resolve(ui, '..');
const dist = join(ui, 'dist');
const runs = Number(process.argv[process.argv.indexOf('--runs') + 1]) || 15;
const require = createRequire(join(repo, 'tests/browser/package.json'));
const { chromium } = require('playwright-core');

// --- sizes: what index.html loads at start, and what loads later.
const index = readFileSync(join(dist, 'index.html'), 'utf8');
const initial = new Set(['index.html', ...[...index.matchAll(/(?:src|href)="\/(assets\/[^"]+)"/g)].map((m) => m[1])]);
const gz = (p) => gzipSync(readFileSync(join(dist, p)), { level: 9 }).length;
const all = [];
const walk = (d, rel = '') => {
  for (const n of readdirSync(d)) {
    const p = join(d, n);
    if (statSync(p).isDirectory()) walk(p, `${rel}${n}/`);
    else if (!n.endsWith('.gz')) all.push(`${rel}${n}`);
  }
};
walk(dist);
const sum = (xs) => xs.reduce((a, b) => a + b, 0);
const initialGz = sum([...initial].map(gz));
const lazy = all.filter((p) => !initial.has(p));
const lazyGz = sum(lazy.map(gz));
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;

// --- the server.
const targetDir = process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(repo, 'target');
const BIN = process.env.JARVIS_CLOUD_BIN ?? join(targetDir, 'debug', 'jarvis-cloud');
const data = mkdtempSync(join(tmpdir(), 'jarvis-measure-'));
const child = spawn(BIN, ['serve', '--host', '127.0.0.1', '--port', '0', '--data-dir', data, '--ui-dir', dist], {
  stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'error' },
});
let out = '';
const base = await new Promise((ok, fail) => {
  const t = setTimeout(() => fail(new Error('jarvis-cloud did not start')), 20000);
  child.stdout.on('data', (c) => {
    out += c;
    const m = out.match(/listening on (127\.0\.0\.1:\d+)/);
    if (m && /admin token/.test(out)) { clearTimeout(t); ok(`http://${m[1]}`); }
  });
});
const admin = out.match(/admin token[^:]*: (jt_\S+)/)[1];

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium', headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
async function load(signedIn) {
  const ctx = await browser.newContext({ viewport: { width: 1360, height: 860 } });
  if (signedIn) await ctx.addInitScript((t) => localStorage.setItem('jarvis.auth.v1', JSON.stringify({ token: t })), admin);
  const page = await ctx.newPage();
  await page.goto(base, { waitUntil: 'commit' });
  const mark = signedIn ? 'jarvis:sessions' : 'jarvis:interactive';
  await page.waitForFunction((m) => performance.getEntriesByName(m).length > 0, mark, { timeout: 20000 });
  const tti = await page.evaluate((m) => performance.getEntriesByName(m)[0].startTime, mark);
  // The paint entry is queued after the frame is presented; wait for it (bounded).
  const fcp = await page.waitForFunction(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime, null, { timeout: 5000 })
    .then((h) => h.jsonValue()).catch(() => null);
  const r = { tti, fcp };
  await ctx.close();
  return r;
}
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const p = (xs) => `median ${median(xs).toFixed(0)} ms (min ${Math.min(...xs).toFixed(0)}, max ${Math.max(...xs).toFixed(0)})`;
await load(false); // warm the server's page cache, not the browser's
const cold = []; const warm = [];
for (let i = 0; i < runs; i++) cold.push(await load(false));
for (let i = 0; i < runs; i++) warm.push(await load(true));
const version = browser.version();
await browser.close();
child.kill('SIGTERM');
await new Promise((r) => child.on('exit', r));
rmSync(data, { recursive: true, force: true });

console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}; Chromium ${version}; loopback; ${runs} runs each, fresh browser context`);
console.log(`initial bundle (${[...initial].join(', ')}): ${kb(initialGz)} gzip`);
console.log(`loaded on demand (${lazy.join(', ')}): ${kb(lazyGz)} gzip`);
console.log(`sign-in screen interactive: ${p(cold.map((x) => x.tti))}; first contentful paint ${p(cold.map((x) => x.fcp ?? NaN))}`);
console.log(`signed in, session list loaded: ${p(warm.map((x) => x.tti))}`);
