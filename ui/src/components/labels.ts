import type { Device } from '../lib/api';
import { inDesktop } from '../lib/desktop';

export const STATUS: Record<string, { label: string; tone: string }> = {
  running: { label: 'Running', tone: 'run' },
  waiting_approval: { label: 'Waiting for approval', tone: 'wait' },
  done: { label: 'Done', tone: 'done' },
  failed: { label: 'Failed', tone: 'fail' },
  interrupted: { label: 'Stopped', tone: 'idle' },
  idle: { label: 'Idle', tone: 'idle' },
};
export const statusOf = (s: string) => STATUS[s] ?? { label: s, tone: 'idle' };

/** Where a session runs, from the lease holder's device id. */
export function whereLabel(runner: string | null | undefined, myDevice: string, devices: Device[]): { label: string; kind: string } {
  if (!runner) return { label: 'Not running', kind: 'nowhere' };
  if (runner === 'cloud') return { label: 'Cloud', kind: 'cloud' };
  if (runner === myDevice) return { label: 'This device', kind: 'here' };
  const d = devices.find((x) => x.id === runner);
  return { label: d ? d.name : 'Another device', kind: 'device' };
}

export function timeAgo(ms: number): string {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

/** A device id as a person would say it. */
export function deviceName(id: string, myDevice: string, devices: Device[]): string {
  if (id === myDevice) return inDesktop ? 'you (this computer)' : 'you (this browser)';
  if (id === 'cloud') return 'the cloud';
  const d = devices.find((x) => x.id === id);
  return d ? d.name : 'another device';
}
