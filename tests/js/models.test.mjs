// The default model is current by the official SDK's own deprecation table: a pinned
// @anthropic-ai/sdk ships `internal/data/deprecated-models` (model id -> retirement date), and its
// client warns on every id in it. The default is read from the file the Rust binaries compile in
// (crates/agent/DEFAULT_MODEL), so this test and `jarvis` agree by construction.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const sdk = join(here, 'node_modules', '@anthropic-ai', 'sdk');
const ourDefault = readFileSync(join(here, '..', '..', 'crates', 'agent', 'DEFAULT_MODEL'), 'utf8');

// The package's exports map does not list internal/, so it is imported by path.
const { DEPRECATED_MODELS } = await import(
  pathToFileURL(join(sdk, 'internal', 'data', 'deprecated-models.mjs')).href
);

test('the pinned SDK is the one this test was written against', () => {
  const pkg = JSON.parse(readFileSync(join(sdk, 'package.json'), 'utf8'));
  assert.equal(pkg.version, '1.14.0');
  // The table is real data, with the previous default in it.
  assert.equal(DEPRECATED_MODELS['claude-sonnet-4-5'], 'November 30th, 2026');
});

test('the default model is not deprecated by the official SDK', () => {
  assert.equal(ourDefault, ourDefault.trim(), 'DEFAULT_MODEL has no whitespace');
  assert.ok(ourDefault.startsWith('claude-'), ourDefault);
  assert.equal(DEPRECATED_MODELS[ourDefault], undefined, `${ourDefault} is deprecated: ${DEPRECATED_MODELS[ourDefault]}`);
});

test('the default model is a model id the SDK knows', () => {
  const types = readFileSync(join(sdk, 'resources', 'messages', 'messages.d.ts'), 'utf8');
  const union = types.match(/export type Model = ([^;]+);/);
  assert.ok(union, 'the SDK declares its Model union');
  assert.ok(union[1].includes(`'${ourDefault}'`), `${ourDefault} is not in the SDK's Model union`);
});
