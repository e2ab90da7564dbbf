// Unit tests of the pure parts of the UI: inert Markdown/MDX and the session diff.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { renderMarkdown, renderMdx, safeUrl } from '../src/lib/markdown.js';
import { sessionChanges, changeLines, unnumber } from '../src/lib/session-diff.js';

const hostile = [
  '<script>window.__pwned = 1</script>',
  '<img src=x onerror="window.__pwned=2">',
  '[click](javascript:window.__pwned=3)',
  '[click2](JaVaScRiPt:alert(1))',
  '[click3](javascript&#58;alert(1))',
  '[click4](java%73cript:alert(1))',
  '[d](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)',
  '<a href="javascript:alert(1)">raw</a>',
  '<iframe src="https://evil.example"></iframe>',
  '![img](javascript:alert(1))',
  '<svg onload=alert(1)>',
].join('\n\n');

test('hostile Markdown renders inert', () => {
  const html = renderMarkdown(hostile);
  assert.doesNotMatch(html, /<script/i);
  assert.doesNotMatch(html, /<img/i);
  assert.doesNotMatch(html, /<iframe/i);
  assert.doesNotMatch(html, /<svg/i);
  assert.doesNotMatch(html, /href="\s*(javascript|data|vbscript)/i);
  assert.doesNotMatch(html, /<[^>]+\son\w+=/i);
  // The text is still there, escaped, for the reader.
  assert.match(html, /&lt;script&gt;window.__pwned = 1&lt;\/script&gt;/);
});

test('MDX is shown, never evaluated', () => {
  const src = "import Evil from './evil.js'\nexport const x = fetch('/api/me')\n\n# Title\n\n<Evil onClick={() => alert(1)} />\n\n{window.__pwned = 4}\n";
  const html = renderMdx(src);
  assert.match(html, /<h1>Title<\/h1>/);
  assert.match(html, /import Evil from/);
  assert.match(html, /&lt;Evil onClick=\{\(\) =&gt; alert\(1\)\} \/&gt;/);
  assert.doesNotMatch(html, /<Evil/);
  assert.doesNotMatch(html, /<script/i);
});

test('ordinary links keep working', () => {
  const html = renderMarkdown('[site](https://example.com) [rel](docs/a.md) [top](#top) [mail](mailto:a@b.c)');
  assert.match(html, /href="https:\/\/example.com" target="_blank" rel="noopener noreferrer nofollow"/);
  assert.match(html, /href="docs\/a.md"/);
  assert.match(html, /href="#top"/);
  assert.match(html, /href="mailto:a@b.c"/);
  for (const bad of ['javascript:x', ' javascript:x', 'vbscript:x', 'file:///etc/passwd', 'data:text/html,x', 'java\tscript:x']) {
    assert.equal(safeUrl(bad), false, bad);
  }
});

test('session changes: writes, edits, reads as the base, failed calls ignored', () => {
  const tool = (id, name, input) => ({ type: 'tool_use', id, name, input: JSON.stringify(input), status: 'done' });
  const result = (id, content, is_error = false) => ({ type: 'tool_result', tool_use_id: id, content, is_error });
  const messages = [
    { blocks: [tool('r1', 'read', { path: 'a.txt' })] },
    { blocks: [result('r1', '     1\tone\n     2\ttwo\n')] },
    { blocks: [tool('w1', 'write', { path: 'a.txt', content: 'one\nTWO\n' }), tool('w2', 'write', { path: 'new.md', content: '# New\n' })] },
    { blocks: [result('w1', 'wrote 8 bytes'), result('w2', 'wrote 6 bytes')] },
    { blocks: [tool('e1', 'edit', { path: 'a.txt', old_string: 'one', new_string: 'uno' }), tool('e2', 'edit', { path: 'b.txt', old_string: 'x', new_string: 'y' })] },
    { blocks: [result('e1', 'replaced 1 occurrence(s)'), result('e2', 'old_string not found', true)] },
    { blocks: [tool('w3', 'write', { path: 'pending.txt', content: 'not run yet' })] },
  ];
  const files = sessionChanges(messages);
  assert.deepEqual(files.map((f) => f.path), ['a.txt', 'new.md']);
  const [a, n] = files;
  assert.equal(a.changes.length, 2);
  assert.equal(a.changes[0].before, 'one\ntwo\n');
  assert.deepEqual(changeLines(a.changes[0]), [
    { sign: ' ', text: 'one' }, { sign: '-', text: 'two' }, { sign: '+', text: 'TWO' },
  ]);
  assert.deepEqual(changeLines(a.changes[1]), [{ sign: '-', text: 'one' }, { sign: '+', text: 'uno' }]);
  assert.equal(n.changes[0].before, null);
  assert.deepEqual(changeLines(n.changes[0]), [{ sign: '+', text: '# New' }]);
  assert.equal(unnumber('not numbered'), null);
});

test('relative links inside a workspace file resolve inside the workspace', async () => {
  const { workspaceLink } = await import('../src/lib/markdown.js');
  assert.equal(workspaceLink('docs/guide.md', 'intro.md'), 'docs/intro.md');
  assert.equal(workspaceLink('docs/guide.md', './img/a.png#x'), 'docs/img/a.png');
  assert.equal(workspaceLink('docs/guide.md', '../README.md'), 'README.md');
  assert.equal(workspaceLink('docs/guide.md', '/src/main.rs'), 'src/main.rs');
  assert.equal(workspaceLink('docs/guide.md', '../../etc/passwd'), null);
  assert.equal(workspaceLink('README.md', 'https://example.com'), null);
  assert.equal(workspaceLink('README.md', 'javascript:alert(1)'), null);
  assert.equal(workspaceLink('README.md', '#top'), null);
  assert.equal(workspaceLink('README.md', 'a%20b.md'), 'a b.md');
});

import { explainFailure, lastFailure } from '../src/lib/failure.js';

test('provider failures in plain words, with Retry where it can help', () => {
  const cases = [
    ['The cloud agent has no model provider configured: no provider configured: set ANTHROPIC_API_KEY', 'missing_provider'],
    ['The model request failed: provider answered 401: {"type":"error","error":{"type":"authentication_error"}}. Send a message to try again.', 'bad_key'],
    ['The model request failed: provider answered 429: {"type":"error"}. Send a message to try again.', 'busy'],
    ['The model request failed: provider error overloaded_error: Overloaded. Send a message to try again.', 'busy'],
    ['The model request failed: HTTP request failed: error sending request for url (http://127.0.0.1:9/v1/messages). Send a message to try again.', 'unreachable'],
    ['Stopped: the prompt is too long for the model even after compaction.', 'too_long'],
    ['Something else entirely', 'other'],
  ];
  for (const [text, kind] of cases) {
    const f = explainFailure(text);
    assert.equal(f.kind, kind, text);
    // Plain words: no JSON, no variable names.
    assert.doesNotMatch(f.title + f.what, /[{}]|ANTHROPIC_|HTTP request/);
  }
  assert.equal(explainFailure(cases[5][0]).retry, false);
});

test('the failure that ended a session is the system text after the last turn', () => {
  const sys = (b) => ({ role: 'system', blocks: [b] });
  const user = { role: 'user', blocks: [{ type: 'text', text: 'hi' }] };
  assert.equal(lastFailure([user, sys({ type: 'notice', kind: 'request_failed', text: 'boom' })]), 'boom');
  assert.equal(lastFailure([user]), null);
  // After a Retry notice, the old failure no longer stands.
  assert.equal(lastFailure([user, sys({ type: 'notice', kind: 'request_failed', text: 'boom' }), sys({ type: 'notice', kind: 'retry', text: 'Retry asked by Olga.' })]), null);
});
