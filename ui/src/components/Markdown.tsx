import { useMemo } from 'react';
import { renderMarkdown, renderMdx, workspaceLink } from '../lib/markdown.js';

/**
 * Markdown rendered inert (see lib/markdown.js): no raw HTML, no script URLs, MDX as text.
 * A relative link opens that file of the workspace (`onOpenFile`) instead of leaving the app.
 */
export function Markdown({ source, mdx = false, testId, path = null, onOpenFile }: {
  source: string; mdx?: boolean; testId?: string; path?: string | null; onOpenFile?: (path: string) => void;
}) {
  const html = useMemo(() => (mdx ? renderMdx(source) : renderMarkdown(source)), [source, mdx]);
  const onClick = (e: React.MouseEvent) => {
    const a = (e.target as HTMLElement).closest('a');
    const href = a?.getAttribute('href');
    if (!a || !href || href.startsWith('#') || /^(https?:|mailto:)/i.test(href)) return;
    e.preventDefault();
    const target = workspaceLink(path, href);
    if (target && onOpenFile) onOpenFile(target);
  };
  return <div className="md" data-testid={testId} onClick={onClick} dangerouslySetInnerHTML={{ __html: html }} />;
}
