export function safeUrl(url: string): boolean;
export function renderMarkdown(source: string): string;
export function renderMdx(source: string): string;
export function workspaceLink(fromPath: string | null, href: string): string | null;
