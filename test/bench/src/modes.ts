/** The modes of the seed's table plus the two of DESIGN §6, in table order. */
export interface Mode {
  id: string;
  label: string;
  format: 'legacy' | 'sparse';
  channels: number;
  directIo: boolean;
  /** Legacy through a pipe into an O_DIRECT dd writer: raw QEMU only (vmsave does not offer it). */
  pipeDirect?: boolean;
}

export const MODES: readonly Mode[] = [
  { id: 'legacy', label: 'legacy', format: 'legacy', channels: 1, directIo: false },
  { id: 'sparse', label: 'sparse (mapped-ram), 1 channel', format: 'sparse', channels: 1, directIo: false },
  { id: 'legacy-direct', label: 'legacy + direct IO (pipe → dd O_DIRECT, raw QEMU only)', format: 'legacy', channels: 1, directIo: false, pipeDirect: true },
  { id: 'sparse-direct', label: 'sparse + direct IO', format: 'sparse', channels: 1, directIo: true },
  { id: 'sparse-direct-8', label: 'sparse + direct IO + 8 channels', format: 'sparse', channels: 8, directIo: true },
  { id: 'sparse-8', label: 'sparse + 8 channels (buffered)', format: 'sparse', channels: 8, directIo: false },
  { id: 'sparse-direct-2', label: 'sparse + direct IO + 2 channels', format: 'sparse', channels: 2, directIo: true },
];

/** Modes named in a comma-separated list (all when empty); unknown names are an error. */
export function selectModes(list: string | undefined): Mode[] {
  if (!list || list === 'true') return [...MODES];
  const ids = list
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const unknown = ids.filter((id) => !MODES.some((m) => m.id === id));
  if (unknown.length) throw new Error(`unknown mode(s) ${unknown.join(', ')}; known: ${MODES.map((m) => m.id).join(', ')}`);
  return MODES.filter((m) => ids.includes(m.id));
}
