/**
 * `vmsave verify --json` on real images: `source` (who wrote the container) and `format` (vmsave:
 * legacy/sparse; libvirt: its compressor name), the checks, and the QEMU capability cache in the
 * state directory that spares later runs the probe.
 */
import { closeSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createImage, encodeLibvirtHeader, finalizeImage, openStreamFds } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu, saveToFds, type SaveFormat } from '@vmsave/qemu';
import { EXIT } from '../src/errors.ts';
import { vmsave } from './helpers.ts';

let dir: string;
let env: Record<string, string>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-cli-verify-'));
  env = { VMSAVE_STATE_DIR: path.join(dir, 'state') };
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** QEMU writes a paused 64 MiB VM's migration stream into `file` at `offset` (the file exists already). */
async function qemuStreamInto(file: string, offset: number, format: SaveFormat): Promise<void> {
  const vm = await launchVm(
    { name: 'verify-src', uuid: '6f1c2a4e-7d1b-4e8a-9c3f-2b5d8e9a1f00', machine: 'q35', memoryMiB: 64, vcpus: 1, args: [] },
    { qmpSocketPath: path.join(dir, `src-${format}-${offset}.qmp`), startPaused: true, accel: await detectAccel(), killWithParent: true },
  );
  try {
    const fds = await openStreamFds(file, { mode: 'save', directIo: false });
    try {
      await using qmp = await vm.connectQmp();
      await saveToFds(qmp, { fds, offset, format, channels: format === 'sparse' ? 2 : 1 });
    } finally {
      closeSync(fds.buffered);
    }
  } finally {
    await vm.kill().catch(() => undefined);
  }
}

async function vmsaveImage(name: string, format: SaveFormat): Promise<string> {
  const file = path.join(dir, name);
  const probe = await probeQemu();
  const { streamOffset } = await createImage(file, {
    format,
    channels: format === 'sparse' ? 2 : 0,
    directIo: false,
    wasRunning: false,
    descriptor: {
      descriptorVersion: 1,
      vm: { name: 'verify-src', uuid: '6f1c2a4e-7d1b-4e8a-9c3f-2b5d8e9a1f00', machine: probe.machineAliases.q35 ?? 'q35', memoryMiB: 64, vcpus: 1, args: [] },
      format,
      qemu: {
        version: probe.version,
        capabilities: format === 'sparse' ? { 'mapped-ram': true, multifd: true } : {},
        parameters: format === 'sparse' ? { 'multifd-channels': 2 } : {},
      },
      host: 'test-host',
      jobId: 'job-verify',
      createdAt: new Date().toISOString(),
    },
  });
  await qemuStreamInto(file, streamOffset, format);
  await finalizeImage(file);
  return file;
}

const DOMAIN_XML =
  "<domain type='kvm'><name>verify-src</name><uuid>6f1c2a4e-7d1b-4e8a-9c3f-2b5d8e9a1f00</uuid><memory unit='KiB'>65536</memory><os><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os></domain>\n";

/** A libvirt save image: 92-byte header, XML, padding; then the stream (`raw`: QEMU's own; `gzip`: any gzip data). */
async function libvirtImage(name: string, compressor: 'raw' | 'gzip'): Promise<string> {
  const file = path.join(dir, name);
  const xml = Buffer.from(`${DOMAIN_XML}\0`);
  const dataLength = xml.length + 4099;
  const header = encodeLibvirtHeader({ complete: true, dataLength, wasRunning: false, formatCode: compressor === 'raw' ? 0 : 1, cookieOffset: 0 });
  const data = Buffer.alloc(dataLength);
  xml.copy(data, 0);
  await writeFile(file, Buffer.concat([header, data, ...(compressor === 'gzip' ? [gzipSync(Buffer.from('QEVM not really'))] : [])]));
  if (compressor === 'raw') await qemuStreamInto(file, header.length + dataLength, 'legacy');
  return file;
}

interface VerifyJson {
  file: string;
  kind: string;
  source: string | null;
  format: string | null;
  ok: boolean;
  checks: { name: string; status: string; detail: string }[];
}

describe('vmsave verify --json', { timeout: 120_000 }, () => {
  it('a vmsave sparse image: source vmsave, format sparse; the QEMU probe is cached in the state directory', async () => {
    const image = await vmsaveImage('s.vmsave', 'sparse');
    const r = await vmsave(['verify', image, '--json'], env);
    expect(r.code, r.stderr).toBe(EXIT.ok);
    const v = r.json<VerifyJson>();
    expect(v).toMatchObject({ file: image, kind: 'vmsave', source: 'vmsave', format: 'sparse', ok: true });
    expect(v.checks.find((c) => c.name === 'format.restorable-here')?.status).toBe('pass');

    const cache = JSON.parse(await readFile(path.join(env.VMSAVE_STATE_DIR!, 'qemu-probe.json'), 'utf8')) as {
      key: { binary: string };
      probe: { version: string; mappedRam: boolean };
    };
    expect(cache.key.binary).toMatch(/qemu-system-x86_64$/);
    expect(cache.probe).toMatchObject({ version: (await probeQemu()).version, mappedRam: true });

    // A later run answers from the cache: a cache that claims no mapped-ram is believed while its key matches.
    await writeFile(path.join(env.VMSAVE_STATE_DIR!, 'qemu-probe.json'), JSON.stringify({ ...cache, probe: { ...cache.probe, mappedRam: false } }));
    const again = (await vmsave(['verify', image, '--json'], env)).json<VerifyJson>();
    expect(again.checks.find((c) => c.name === 'format.restorable-here')).toMatchObject({ status: 'fail' });
    // …and a cache whose key no longer matches the binary is probed again.
    await writeFile(
      path.join(env.VMSAVE_STATE_DIR!, 'qemu-probe.json'),
      JSON.stringify({ ...cache, key: { ...cache.key, mtimeMs: 1 }, probe: { ...cache.probe, mappedRam: false } }),
    );
    const reprobed = await vmsave(['verify', image, '--json'], env);
    expect(reprobed.code, reprobed.stderr).toBe(EXIT.ok);
    expect(JSON.parse(await readFile(path.join(env.VMSAVE_STATE_DIR!, 'qemu-probe.json'), 'utf8')).probe.mappedRam).toBe(true);
  });

  it('a vmsave legacy image: format legacy', async () => {
    const image = await vmsaveImage('l.vmsave', 'legacy');
    const r = await vmsave(['verify', image, '--json'], env);
    expect(r.code, r.stderr).toBe(EXIT.ok);
    expect(r.json<VerifyJson>()).toMatchObject({ kind: 'vmsave', source: 'vmsave', format: 'legacy', ok: true });
  });

  it('libvirt images: source libvirt, format the compressor name (raw with a real stream, gzip)', async () => {
    const raw = await vmsave(['verify', await libvirtImage('raw.save', 'raw'), '--json'], env);
    expect(raw.code, raw.stderr).toBe(EXIT.ok);
    expect(raw.json<VerifyJson>()).toMatchObject({ kind: 'libvirt', source: 'libvirt', format: 'raw', ok: true });

    const gz = await vmsave(['verify', await libvirtImage('gz.save', 'gzip'), '--json'], env);
    expect(gz.code, gz.stderr).toBe(EXIT.ok);
    const g = gz.json<VerifyJson>();
    expect(g).toMatchObject({ kind: 'libvirt', source: 'libvirt', format: 'gzip', ok: true });
    expect(g.checks.find((c) => c.name === 'stream.magic')?.status).toBe('pass');
  });

  it('a file that is no image: source and format null, exit 3', async () => {
    const junk = path.join(dir, 'junk.bin');
    await writeFile(junk, Buffer.alloc(8192, 7));
    const r = await vmsave(['verify', junk, '--json'], env);
    expect(r.code).toBe(EXIT.rejected);
    expect(r.json<VerifyJson>()).toMatchObject({ kind: 'unknown', source: null, format: null, ok: false });
  });
});
