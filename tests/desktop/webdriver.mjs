// A small W3C WebDriver client over fetch: just what the desktop suite needs, talking to
// tauri-driver (which forwards to WebKitWebDriver driving the real app window).
export class WebDriver {
  constructor(base) { this.base = base; this.id = null; }

  async req(method, path, body) {
    const r = await fetch(`${this.base}${path}`, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const v = await r.json().catch(() => ({}));
    if (!r.ok || v?.value?.error) {
      const e = v?.value ?? {};
      throw new Error(`WebDriver ${method} ${path}: ${r.status} ${e.error ?? ''} ${e.message ?? JSON.stringify(v)}`);
    }
    return v.value;
  }

  async start(application) {
    const v = await this.req('POST', '/session', {
      capabilities: { alwaysMatch: { browserName: 'wry', 'tauri:options': { application } } },
    });
    this.id = v.sessionId;
    return v;
  }

  s(path) { return `/session/${this.id}${path}`; }

  async quit() {
    if (!this.id) return;
    const id = this.id;
    this.id = null;
    await this.req('DELETE', `/session/${id}`).catch(() => {});
  }

  /** Runs `script` (a function body) in the window; `arguments` are `args`. */
  exec(script, ...args) { return this.req('POST', this.s('/execute/sync'), { script, args }); }

  async find(css) {
    const v = await this.req('POST', this.s('/element'), { using: 'css selector', value: css });
    return Object.values(v)[0];
  }

  /** Clicks as a person would: once the element is there and enabled (a click on a disabled
   * button is silently dropped, which a loaded machine turned into a lost step). */
  async click(css, { timeout = 30_000 } = {}) {
    const start = Date.now();
    for (;;) {
      const ready = await this.exec('const e = document.querySelector(arguments[0]); return !!e && !e.disabled;', css).catch(() => false);
      if (ready) break;
      if (Date.now() - start > timeout) throw new Error(`${css} not there and enabled after ${timeout} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
    const e = await this.find(css);
    await this.req('POST', this.s(`/element/${e}/click`), {});
  }

  /** Types into a field as a person would; with `clear`, first deletes what is there by
   * keyboard (WebDriver's own clear does not reach React's state in WebKitWebDriver). */
  async type(css, text, { clear = true } = {}) {
    const e = await this.find(css);
    if (clear) {
      const had = String(await this.req('GET', this.s(`/element/${e}/property/value`)) ?? '');
      if (had) await this.req('POST', this.s(`/element/${e}/value`), { text: `\uE010${'\uE003'.repeat(had.length)}` });
      const left = await this.req('GET', this.s(`/element/${e}/property/value`));
      if (left) throw new Error(`could not clear ${css}: ${JSON.stringify(left)} left`);
    }
    await this.req('POST', this.s(`/element/${e}/value`), { text });
  }

  /** The page as a PNG. */
  async screenshot() { return Buffer.from(await this.req('GET', this.s('/screenshot')), 'base64'); }
}
