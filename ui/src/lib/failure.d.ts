export interface Failure { kind: 'missing_provider' | 'bad_key' | 'busy' | 'unreachable' | 'too_long' | 'other'; title: string; what: string; retry: boolean }
export function explainFailure(text: string): Failure;
export function lastFailure(messages: { role: string; blocks: { type: string; kind?: string; text?: string }[] }[]): string | null;
