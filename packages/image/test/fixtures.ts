/**
 * Real images made by real QEMU for the tests: a small paused VM with a known pattern in RAM,
 * saved with QMP `migrate` to `file:PATH,offset=N`.
 */
import { spawn } from 'node:child_process';
import { accessSync, constants as C, promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { createImage, finalizeImage, encodeLibvirtHeader, sealImage, type ImageDescriptorInput } from '../src/node/index.ts';
import { TinyQmp } from './qmp.ts';

export const PATTERN_ADDR = 0x1000000; // 16 MiB into guest RAM
export const PATTERN_BYTES = 1024 * 1024;
/** Where `dirtyMiB` of pseudo-random data goes in guest RAM (32 MiB in: after the pattern). */
export const DIRTY_ADDR = 0x2000000;

export function accel(): 'kvm' | 'tcg' {
  try {
    accessSync('/dev/kvm', C.R_OK | C.W_OK);
    return 'kvm';
  } catch {
    return 'tcg';
  }
}

export interface SaveOptions {
  dir: string;
  memMiB?: number;
  format: 'legacy' | 'sparse';
  channels?: number;
  /** Capabilities to add (e.g. background-snapshot). */
  extraCaps?: string[];
  /** MiB of pseudo-random data (the same for a given size) loaded at DIRTY_ADDR: pages a legacy stream carries whole. */
  dirtyMiB?: number;
  target: string;
  offset: number;
  /** QEMU's max-bandwidth in bytes/s (default 0: unlimited); a slow save for tests that follow it. */
  maxBandwidth?: number;
}

/** `mib` MiB of pseudo-random bytes (xorshift32, fixed seed: the same file every time), for `-device loader`. */
export async function dirtyFile(dir: string, mib: number): Promise<string> {
  const p = join(dir, `dirty-${mib}.bin`);
  const b = Buffer.alloc(mib * 1024 * 1024);
  let x = 0x9e3779b9;
  for (let i = 0; i < b.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  await fsp.writeFile(p, b);
  return p;
}

/** Deterministic non-zero pattern file for `-device loader`. */
export async function patternFile(dir: string): Promise<string> {
  const p = join(dir, 'pattern.bin');
  const b = Buffer.alloc(PATTERN_BYTES);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((i * 2654435761) >>> 0 || 1, i);
  await fsp.writeFile(p, b);
  return p;
}

/** Start a paused VM, save it with QMP migrate into `target` at `offset`, quit it. */
export async function qemuSave(o: SaveOptions): Promise<void> {
  const sock = join(o.dir, `qmp-${process.pid}-${Math.random().toString(36).slice(2)}.sock`);
  const pattern = await patternFile(o.dir);
  const dirty = o.dirtyMiB ? ['-device', `loader,file=${await dirtyFile(o.dir, o.dirtyMiB)},addr=0x${DIRTY_ADDR.toString(16)},force-raw=on`] : [];
  const proc = spawn(
    'qemu-system-x86_64',
    [
      '-nodefaults',
      '-display',
      'none',
      '-S',
      '-machine',
      `q35,accel=${accel()}`,
      '-m',
      String(o.memMiB ?? 64),
      '-qmp',
      `unix:${sock},server=on,wait=off`,
      '-device',
      `loader,file=${pattern},addr=0x${PATTERN_ADDR.toString(16)}`,
      ...dirty,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  let qmp: TinyQmp | undefined;
  try {
    qmp = await TinyQmp.connect(sock);
    const caps = [{ capability: 'events', state: true }];
    if (o.format === 'sparse') caps.push({ capability: 'mapped-ram', state: true }, { capability: 'multifd', state: true });
    for (const c of o.extraCaps ?? []) caps.push({ capability: c, state: true });
    await qmp.execute('migrate-set-capabilities', { capabilities: caps });
    await qmp.execute(
      'migrate-set-parameters',
      o.format === 'sparse' ? { 'max-bandwidth': o.maxBandwidth ?? 0, 'multifd-channels': o.channels ?? 2 } : { 'max-bandwidth': o.maxBandwidth ?? 0 },
    );
    await qmp.execute('migrate', { uri: `file:${o.target},offset=${o.offset}` });
    const deadline = Date.now() + 60_000;
    for (;;) {
      const st = (await qmp.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
      if (st.status === 'completed') break;
      if (st.status === 'failed' || Date.now() > deadline) throw new Error(`migrate ${st.status}: ${st['error-desc'] ?? ''} ${stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    await qmp.execute('quit').catch(() => {});
  } finally {
    qmp?.close();
    if (proc.exitCode === null) {
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      if (!qmp) proc.kill('SIGTERM');
      await exited;
      clearTimeout(t);
    }
    await fsp.rm(sock, { force: true });
  }
}

export function descriptorFor(format: 'legacy' | 'sparse', memoryMiB = 64): ImageDescriptorInput {
  return {
    descriptorVersion: 1,
    vm: { name: 'fixture', uuid: '6f1c2a4e-7d1b-4e8a-9c3f-2b5d8e9a1f00', machine: 'pc-q35-10.0', memoryMiB, vcpus: 1, args: [] },
    format,
    qemu: {
      version: '10.0.2',
      capabilities: format === 'sparse' ? { 'mapped-ram': true, multifd: true } : {},
      parameters: format === 'sparse' ? { 'multifd-channels': 2, 'max-bandwidth': 0 } : { 'max-bandwidth': 0 },
    },
    host: 'test-host',
    jobId: 'job-1',
    createdAt: new Date('2025-01-01T00:00:00Z').toISOString(),
    labels: { purpose: 'test' },
  };
}

/** createImage → QEMU writes at streamOffset → sealImage (unless `seal: false`) → finalizeImage (unless `finalize: false`). */
export async function makeVmsaveImage(
  dir: string,
  name: string,
  format: 'legacy' | 'sparse',
  o: { memMiB?: number; channels?: number; finalize?: boolean; seal?: boolean; extraCaps?: string[]; dirtyMiB?: number } = {},
): Promise<string> {
  const path = join(dir, name);
  const { streamOffset } = await createImage(path, {
    format,
    channels: format === 'sparse' ? (o.channels ?? 2) : 0,
    directIo: false,
    wasRunning: false,
    descriptor: descriptorFor(format, o.memMiB ?? 64),
  });
  await qemuSave({
    dir,
    format,
    target: path,
    offset: streamOffset,
    memMiB: o.memMiB ?? 64,
    ...(o.channels ? { channels: o.channels } : {}),
    ...(o.extraCaps ? { extraCaps: o.extraCaps } : {}),
    ...(o.dirtyMiB ? { dirtyMiB: o.dirtyMiB } : {}),
  });
  if (o.finalize !== false) {
    if (o.seal !== false) await sealImage(path);
    await finalizeImage(path);
  }
  return path;
}

export const DOMAIN_XML = `<domain type='kvm'>
  <name>fixture</name>
  <uuid>6f1c2a4e-7d1b-4e8a-9c3f-2b5d8e9a1f00</uuid>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os>
</domain>
`;

/** A libvirt-layout image: 92-byte header + XML + NUL + cookie + NUL + padding, then QEMU's stream at an unaligned offset. */
export async function makeLibvirtImage(dir: string, name: string, format: 'legacy' | 'sparse', o: { complete?: boolean } = {}): Promise<string> {
  const path = join(dir, name);
  const xml = Buffer.from(`${DOMAIN_XML}\0`);
  const cookie = Buffer.from("<qemu-migration><cpu mode='custom'/></qemu-migration>\n\0");
  const dataLength = xml.length + cookie.length + 4099; // libvirt pads 64 KiB; any size keeps the stream unaligned
  const header = encodeLibvirtHeader({ complete: o.complete ?? true, dataLength, wasRunning: false, formatCode: format === 'sparse' ? 6 : 0, cookieOffset: xml.length });
  const data = Buffer.alloc(dataLength);
  xml.copy(data, 0);
  cookie.copy(data, xml.length);
  await fsp.writeFile(path, Buffer.concat([header, data]));
  await qemuSave({ dir, format, target: path, offset: 92 + dataLength });
  return path;
}
