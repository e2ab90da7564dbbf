// Syntax highlighting, loaded on first use (a separate chunk, not in the initial bundle).
// highlight.js escapes the source; its output is spans of classes only.
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import css from 'highlight.js/lib/languages/css';
import go from 'highlight.js/lib/languages/go';
import java from 'highlight.js/lib/languages/java';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import python from 'highlight.js/lib/languages/python';
import rust from 'highlight.js/lib/languages/rust';
import sql from 'highlight.js/lib/languages/sql';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';
import ini from 'highlight.js/lib/languages/ini';
import c from 'highlight.js/lib/languages/c';
import cpp from 'highlight.js/lib/languages/cpp';

const langs = { bash, css, go, java, javascript, json, python, rust, sql, typescript, xml, yaml, ini, c, cpp };
for (const [name, lang] of Object.entries(langs)) hljs.registerLanguage(name, lang);

const byExt: Record<string, string> = {
  sh: 'bash', bash: 'bash', zsh: 'bash', css: 'css', go: 'go', java: 'java', js: 'javascript', mjs: 'javascript',
  cjs: 'javascript', jsx: 'javascript', json: 'json', py: 'python', rs: 'rust', sql: 'sql', ts: 'typescript',
  tsx: 'typescript', html: 'xml', xml: 'xml', svg: 'xml', yml: 'yaml', yaml: 'yaml', toml: 'ini', ini: 'ini',
  c: 'c', h: 'c', cc: 'cpp', cpp: 'cpp', hpp: 'cpp',
};

export function languageOf(path: string): string | null {
  const ext = path.split('.').pop()?.toLowerCase() ?? '';
  return byExt[ext] ?? null;
}

export function highlight(code: string, path: string): string | null {
  const lang = languageOf(path);
  if (!lang || code.length > 400_000) return null;
  return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
}
