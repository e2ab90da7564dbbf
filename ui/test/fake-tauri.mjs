// Stands in for `@tauri-apps/api/core` and `/event` in test/desktop.test.mjs: commands answered
// by handlers the test sets, every call recorded, events sent by the test.
const state = { handlers: {}, calls: [], listeners: new Map() };

export const fake = {
  reset(handlers) { state.handlers = handlers; state.calls = []; },
  calls(cmd) { return state.calls.filter((c) => c.cmd === cmd).map((c) => c.args); },
  emit(event, payload) { for (const l of state.listeners.get(event) ?? []) l({ event, payload }); },
};

export async function invoke(cmd, args = {}) {
  state.calls.push({ cmd, args });
  const h = state.handlers[cmd];
  if (!h) throw new Error(`no command ${cmd}`);
  return h(args);
}

export async function listen(event, fn) {
  if (!state.listeners.has(event)) state.listeners.set(event, new Set());
  state.listeners.get(event).add(fn);
  return () => state.listeners.get(event).delete(fn);
}
