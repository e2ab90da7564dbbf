export interface Change { kind: 'write' | 'edit'; before: string | null; after: string; toolUseId: string }
export interface FileChanges { path: string; changes: Change[] }
export function unnumber(readOutput: string): string | null;
export function sessionChanges(messages: unknown[]): FileChanges[];
export function changeLines(change: Change): { sign: '+' | '-' | ' '; text: string }[];
