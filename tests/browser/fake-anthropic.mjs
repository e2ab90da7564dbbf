// A fake Anthropic Messages API for the browser tests: real HTTP, real server-sent events sent
// event by event with pauses (message_start, content_block_start, content_block_delta with
// text_delta / input_json_delta, content_block_stop, message_delta, message_stop), so the web
// view sees a reply stream in. The reply is chosen from the conversation by a script.
import http from 'node:http';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function lastUserContent(body) {
  const msgs = body.messages ?? [];
  const last = msgs[msgs.length - 1];
  if (!last || last.role !== 'user') return { text: '', toolResults: [] };
  const content = typeof last.content === 'string' ? [{ type: 'text', text: last.content }] : last.content ?? [];
  return {
    text: content.filter((c) => c.type === 'text').map((c) => c.text).join('\n'),
    toolResults: content.filter((c) => c.type === 'tool_result'),
  };
}

/**
 * script(body, lastUser) → { thinking, text, tools: [{id, name, input}], deltaMs }
 * options.key: the only `x-api-key` accepted (others get the API's 401); `setMode('overloaded')`
 * answers every request with the API's 529 (retry-after 0, so the client's own retries end
 * quickly) until `setMode('ok')`.
 */
export async function startFakeAnthropic(script, options = {}) {
  const requests = [];
  const refused = [];
  let mode = 'ok';
  const server = http.createServer(async (req, res) => {
    let raw = '';
    for await (const chunk of req) raw += chunk;
    if (req.method !== 'POST' || !req.url.startsWith('/v1/messages')) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ type: 'error', error: { type: 'not_found_error', message: req.url } }));
      return;
    }
    let body;
    try { body = JSON.parse(raw); } catch {
      res.writeHead(400); res.end(); return;
    }
    if (options.key && req.headers['x-api-key'] !== options.key) {
      refused.push({ status: 401, body });
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' } }));
      return;
    }
    if (mode === 'overloaded') {
      refused.push({ status: 529, body });
      res.writeHead(529, { 'content-type': 'application/json', 'retry-after': '0' });
      res.end(JSON.stringify({ type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
      return;
    }
    requests.push(body);
    const reply = script(body, lastUserContent(body));
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    // A client that hangs up (an interrupted run) ends the stream here.
    let gone = false;
    res.on('close', () => { gone = true; });
    const send = async (type, data, pause = 0) => {
      if (gone) throw new Error('client went away');
      res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
      if (pause) await sleep(pause);
    };
    const gap = reply.deltaMs ?? 30;
    try {
      await send('message_start', {
        message: {
          id: `msg_${requests.length}`, type: 'message', role: 'assistant', model: body.model, content: [],
          stop_reason: null, stop_sequence: null,
          usage: { input_tokens: 1800 + 400 * requests.length, output_tokens: 1, cache_creation_input_tokens: 0, cache_read_input_tokens: 0 },
        },
      });
      let index = 0;
      if (reply.thinking) {
        await send('content_block_start', { index, content_block: { type: 'thinking', thinking: '' } });
        for (const w of reply.thinking.match(/\S+\s*/g) ?? []) await send('content_block_delta', { index, delta: { type: 'thinking_delta', thinking: w } });
        await send('content_block_delta', { index, delta: { type: 'signature_delta', signature: 'fake-signature' } });
        await send('content_block_stop', { index });
        index += 1;
      }
      if (reply.text) {
        await send('content_block_start', { index, content_block: { type: 'text', text: '' } });
        await send('ping', {});
        const words = reply.text.match(/\S+\s*/g) ?? [reply.text];
        for (const w of words) await send('content_block_delta', { index, delta: { type: 'text_delta', text: w } }, gap);
        await send('content_block_stop', { index });
        index += 1;
      }
      for (const t of reply.tools ?? []) {
        await send('content_block_start', { index, content_block: { type: 'tool_use', id: t.id, name: t.name, input: {} } });
        const json = JSON.stringify(t.input);
        const cut = Math.floor(json.length / 2);
        await send('content_block_delta', { index, delta: { type: 'input_json_delta', partial_json: json.slice(0, cut) } }, gap);
        await send('content_block_delta', { index, delta: { type: 'input_json_delta', partial_json: json.slice(cut) } });
        await send('content_block_stop', { index });
        index += 1;
      }
      await send('message_delta', {
        delta: { stop_reason: reply.tools?.length ? 'tool_use' : 'end_turn', stop_sequence: null },
        usage: { output_tokens: 40 + (reply.text?.length ?? 0) },
      });
      await send('message_stop', {});
      res.end();
    } catch {
      res.destroy();
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    refused,
    setMode: (m) => { mode = m; },
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  };
}
