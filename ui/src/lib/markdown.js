// Markdown and MDX from a workspace, rendered inert. Workspace files come from any device
// and may be hostile, so:
// - raw HTML is never passed through (markdown-it `html: false` escapes every tag);
// - links and images keep only http(s), mailto, in-page and relative targets (no
//   `javascript:`, `data:`, `vbscript:`, `file:`; entities and percent escapes are decoded
//   before the check, so `javascript&#58;` is caught too);
// - MDX is shown as Markdown text: `import`/`export` lines, JSX and `{expressions}` are text,
//   never compiled or evaluated.
// The page's Content-Security-Policy (script-src 'self') is the second wall.
import MarkdownIt from 'markdown-it';

const SAFE_URL = /^(https?:|mailto:|#|\/|\.{1,2}\/)/i;

/** Whether a (decoded) link target may become an href/src. */
export function safeUrl(url) {
  const u = String(url).trim();
  if (u === '') return false;
  // No scheme at all (a relative path): fine unless control characters could smuggle one.
  if (/[\u0000-\u001f\u007f]/.test(u)) return false;
  const colon = u.indexOf(':');
  const slash = u.search(/[/?#]/);
  const hasScheme = colon !== -1 && (slash === -1 || colon < slash);
  return hasScheme ? SAFE_URL.test(u) : true;
}

const md = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: false });
md.validateLink = (url) => {
  let decoded = url;
  try { decoded = decodeURIComponent(url); } catch { return false; }
  return safeUrl(decoded);
};
// External links open in a new tab without access to this page.
const defaultLinkOpen = md.renderer.rules.link_open
  ?? ((tokens, idx, options, _env, self) => self.renderToken(tokens, idx, options));
md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
  const t = tokens[idx];
  const href = t.attrGet('href') ?? '';
  if (/^https?:/i.test(href)) {
    t.attrSet('target', '_blank');
    t.attrSet('rel', 'noopener noreferrer nofollow');
  }
  return defaultLinkOpen(tokens, idx, options, env, self);
};
// Remote images would let a file make the viewer's browser call out; show them as links.
md.renderer.rules.image = (tokens, idx) => {
  const t = tokens[idx];
  const src = t.attrGet('src') ?? '';
  const alt = md.utils.escapeHtml(t.content || 'image');
  return `<span class="md-image">[image: ${alt}] <code>${md.utils.escapeHtml(src)}</code></span>`;
};

/** HTML for a Markdown source; every tag in the source comes out escaped. */
export function renderMarkdown(source) {
  return md.render(String(source ?? ''));
}

/** MDX as Markdown text: nothing is imported, compiled or evaluated. */
export function renderMdx(source) {
  return renderMarkdown(source);
}

/**
 * Where a link inside a workspace file points in that workspace, or null when it is not a
 * relative link (external, in-page, or leaving the workspace).
 */
export function workspaceLink(fromPath, href) {
  if (!href || /^[a-z][a-z0-9+.-]*:/i.test(href) || href.startsWith('#') || href.startsWith('//')) return null;
  const clean = href.split('#')[0].split('?')[0];
  if (!clean) return null;
  let decoded;
  try { decoded = decodeURIComponent(clean); } catch { return null; }
  const parts = decoded.startsWith('/') ? [] : (fromPath ?? '').split('/').slice(0, -1);
  for (const seg of decoded.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') { if (!parts.length) return null; parts.pop(); } else parts.push(seg);
  }
  return parts.length ? parts.join('/') : null;
}
