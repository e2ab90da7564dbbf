// A failed turn in plain words. The runner records why a turn failed as a system message
// (`notice` request_failed, or the cloud's "no model provider configured" text); this turns it
// into what happened, what to do, and whether Retry can help. Pure, so it is unit-tested.

/** @param {string} text the failure as recorded */
export function explainFailure(text) {
  const t = String(text ?? '');
  const status = /answered (\d{3})|HTTP (\d{3})/.exec(t);
  const code = status ? Number(status[1] ?? status[2]) : 0;
  if (/no model provider configured|no provider configured/i.test(t)) {
    return {
      kind: 'missing_provider',
      title: 'No AI provider is set up on this server yet.',
      what: 'An admin adds one under Set up › AI provider (an API key, Bedrock, Vertex, a gateway or an OpenAI-compatible server). Then press Retry.',
      retry: true,
    };
  }
  if (code === 401 || code === 403 || /authentication_error|invalid x-api-key|permission_error/i.test(t)) {
    return {
      kind: 'bad_key',
      title: 'The AI provider refused the key.',
      what: 'The key may be mistyped, revoked or out of credit. An admin can enter a new one under Set up › AI provider. Then press Retry.',
      retry: true,
    };
  }
  if (code === 429 || code === 529 || code === 503 || /overloaded|rate.?limit/i.test(t)) {
    return {
      kind: 'busy',
      title: 'The AI provider is busy right now.',
      what: 'It is overloaded or limiting this key. Wait a minute, then press Retry.',
      retry: true,
    };
  }
  if (/HTTP request failed|error sending request|connect|connection|dns|timed out|unreachable/i.test(t)) {
    return {
      kind: 'unreachable',
      title: 'The AI provider could not be reached.',
      what: 'The server could not connect to it (network, address or firewall). Check the provider settings, then press Retry.',
      retry: true,
    };
  }
  if (/context window|prompt is too long/i.test(t)) {
    return {
      kind: 'too_long',
      title: 'The conversation is too long for the model.',
      what: 'Start a new session, or choose a model with a larger window.',
      retry: false,
    };
  }
  return {
    kind: 'other',
    title: 'The last turn failed.',
    what: 'Press Retry to ask again, or send a new message.',
    retry: true,
  };
}

/**
 * The failure that ended a failed session: the last system text after the last user or
 * assistant message, if any. `messages` as readMessages returns them.
 */
export function lastFailure(messages) {
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m.role !== 'system') return null;
    for (const b of m.blocks) {
      if (b.type === 'notice' && b.kind === 'retry') return null;
      if ((b.type === 'notice' && b.kind !== 'retry') || b.type === 'text') return b.text;
    }
  }
  return null;
}
