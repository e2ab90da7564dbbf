import { useMemo } from 'react';
import { renderMarkdown, renderMdx } from '../lib/markdown.js';

/** Markdown rendered inert (see lib/markdown.js): no raw HTML, no script URLs, MDX as text. */
export function Markdown({ source, mdx = false, testId }: { source: string; mdx?: boolean; testId?: string }) {
  const html = useMemo(() => (mdx ? renderMdx(source) : renderMarkdown(source)), [source, mdx]);
  return <div className="md" data-testid={testId} dangerouslySetInnerHTML={{ __html: html }} />;
}
