import { execFileSync } from 'node:child_process';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bufferSource, encodeHeader, encodeLibvirtHeader, readImage, verifyImage, verifySource, walkStream, openFileSource, type VerifyResult } from '../src/node/index.ts';
import { makeLibvirtImage, makeVmsaveImage } from './fixtures.ts';

const hostCaps = { version: '10.0.2', mappedRam: true, directIo: true, machines: ['pc-q35-10.0', 'q35'], accel: 'kvm' as const };

let dir: string;
const img: Record<'sparse' | 'legacy' | 'partial' | 'lvSparse' | 'lvLegacy' | 'bgSnapshot', string> = {} as never;
let n = 0;

beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-verify-'));
  img.sparse = await makeVmsaveImage(dir, 'sparse.vmsave', 'sparse', { channels: 2 });
  img.legacy = await makeVmsaveImage(dir, 'legacy.vmsave', 'legacy');
  img.partial = await makeVmsaveImage(dir, 'partial.vmsave', 'sparse', { channels: 1, finalize: false });
  img.lvSparse = await makeLibvirtImage(dir, 'lv-sparse.save', 'sparse');
  img.lvLegacy = await makeLibvirtImage(dir, 'lv-raw.save', 'legacy');
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

/** A sparse-preserving copy to damage. */
async function copy(src: string): Promise<string> {
  const dst = join(dir, `copy-${n++}`);
  execFileSync('cp', ['--sparse=always', src, dst]);
  return dst;
}
async function pwrite(path: string, pos: number, bytes: Uint8Array): Promise<void> {
  const fh = await fsp.open(path, 'r+');
  await fh.write(bytes, 0, bytes.length, pos);
  await fh.close();
}
function status(r: VerifyResult, name: string): string | undefined {
  return r.checks.find((c) => c.name === name)?.status;
}
function detail(r: VerifyResult, name: string): string {
  return r.checks.find((c) => c.name === name)?.detail ?? '';
}
async function firstBlock(path: string) {
  const src = await openFileSource(path);
  const { header } = await readImage(path);
  const walk = await walkStream(src, header.streamOffset);
  await src.close();
  return { walk, header, block: walk.ram!.blocks[0]! };
}

describe('verifyImage on fresh images made by QEMU', () => {
  it.each(['sparse', 'legacy', 'lvSparse', 'lvLegacy'] as const)('%s: every check passes or is skipped', async (k) => {
    const r = await verifyImage(img[k], { hostCaps });
    expect(r.checks.filter((c) => c.status === 'fail' || c.status === 'warn')).toEqual([]);
    expect(r.ok).toBe(true);
    expect(r.kind).toBe(k.startsWith('lv') ? 'libvirt' : 'vmsave');
    expect(r.checks.map((c) => c.name)).toContain('stream.complete');
  });

  it('reports the pattern pages as the only written pages of the sparse image', async () => {
    const r = await verifyImage(img.sparse, { hostCaps });
    expect(status(r, 'mapped-ram.bitmap-vs-extents')).toBe('pass');
    expect(detail(r, 'sparseness')).toMatch(/marked written/);
  });

  it('format.restorable-here fails for a host QEMU without mapped-ram or without the machine type', async () => {
    const r = await verifyImage(img.sparse, { hostCaps: { ...hostCaps, version: '8.2.0', mappedRam: false, machines: ['q35'] } });
    expect(status(r, 'format.restorable-here')).toBe('fail');
    expect(detail(r, 'format.restorable-here')).toMatch(/mapped-ram.*pc-q35-10.0/);
    expect(status(await verifyImage(img.sparse), 'format.restorable-here')).toBe('skip');
  });
});

describe('verifySource: the same checks over bytes in memory', () => {
  it.each(['sparse', 'legacy', 'lvSparse'] as const)('%s: as verifyImage on the file, without the two allocation checks', async (k) => {
    const onFile = await verifyImage(img[k], { hostCaps });
    const inMemory = await verifySource(bufferSource(await fsp.readFile(img[k])), { hostCaps });
    const allocation = ['mapped-ram.bitmap-vs-extents', 'sparseness'];
    const strip = (r: VerifyResult) => r.checks.filter((c) => !allocation.includes(c.name));
    expect(strip(inMemory)).toEqual(strip(onFile));
    expect(inMemory.ok).toBe(true);
    expect(status(inMemory, 'sparseness')).toBe('skip');
    if (k !== 'legacy') expect(detail(inMemory, 'mapped-ram.bitmap-vs-extents')).toMatch(/cannot report data extents/);
  });
});

describe('each kind of damage is caught by the check named for it', () => {
  it('partial magic → header.magic', async () => {
    const r = await verifyImage(img.partial, { hostCaps });
    expect(status(r, 'header.magic')).toBe('fail');
    expect(detail(r, 'header.magic')).toMatch(/partial/);
    expect(r.ok).toBe(false);
  });

  it('libvirt Part magic → header.magic', async () => {
    const p = await copy(img.lvLegacy);
    await pwrite(p, 0, Buffer.from('LibvirtQemudPart'));
    const r = await verifyImage(p);
    expect(status(r, 'header.magic')).toBe('fail');
    expect(status(r, 'stream.complete')).toBe('pass');
  });

  it('header format disagreeing with the stream → format.matches-stream (checksum still valid)', async () => {
    for (const [src, wrong] of [
      [img.sparse, 'legacy'],
      [img.legacy, 'sparse'],
    ] as const) {
      const p = await copy(src);
      const { header } = await readImage(p);
      const fh = await fsp.open(p, 'r');
      const desc = Buffer.alloc(header.descriptorLength);
      await fh.read(desc, 0, desc.length, header.descriptorOffset);
      await fh.close();
      await pwrite(p, 0, encodeHeader({ ...header, format: wrong }, desc));
      const r = await verifyImage(p, { hostCaps });
      expect(status(r, 'header.checksum')).toBe('pass');
      expect(status(r, 'format.matches-stream')).toBe('fail');
      expect(detail(r, 'format.matches-stream')).toMatch(new RegExp(`header says ${wrong}`));
    }
  });

  it('a flipped descriptor byte → header.checksum', async () => {
    const p = await copy(img.legacy);
    const { header } = await readImage(p);
    await pwrite(p, header.descriptorOffset + 20, Buffer.from('#'));
    const r = await verifyImage(p);
    expect(status(r, 'header.checksum')).toBe('fail');
  });

  it('truncation at several points → the check that owns that point', async () => {
    const { header, block } = await firstBlock(img.sparse);
    const size = (await fsp.stat(img.sparse)).size;
    const cases: Array<[number, string]> = [
      [200, 'header.version'], // inside the descriptor
      [header.streamOffset + 2, 'stream.magic'], // inside the QEVM magic
      [header.streamOffset + 60, 'stream.complete'], // inside the RAM setup section
      [block.mappedRam!.pagesOffset + 8192, 'mapped-ram.layout'], // inside the first pages region
      [size - 50_000, 'stream.devices'], // inside the device sections
      [size - 100, 'stream.devices'], // inside the VM description
    ];
    for (const [at, check] of cases) {
      const p = await copy(img.sparse);
      await fsp.truncate(p, at);
      const r = await verifyImage(p, { hostCaps });
      expect({ at, check, status: status(r, check as never) }).toEqual({ at, check, status: 'fail' });
      expect(r.ok).toBe(false);
      if (at > header.streamOffset + 60) expect(status(r, 'stream.complete')).toBe('fail');
    }
    const legacySize = (await fsp.stat(img.legacy)).size;
    for (const at of [Math.floor(legacySize / 2), legacySize - 1]) {
      const p = await copy(img.legacy);
      await fsp.truncate(p, at);
      const r = await verifyImage(p);
      expect(status(r, 'stream.complete')).toBe('fail');
    }
  });

  it('a zeroed bitmap → mapped-ram.bitmap-vs-extents (data with no bits: bitmaps never written)', async () => {
    const p = await copy(img.sparse);
    const { block } = await firstBlock(p);
    await pwrite(p, block.mappedRam!.bitmapOffset, Buffer.alloc(block.usedLength / 4096 / 8));
    const r = await verifyImage(p);
    expect(status(r, 'mapped-ram.bitmap-vs-extents')).toBe('fail');
    expect(detail(r, 'mapped-ram.bitmap-vs-extents')).toMatch(/never written/);
  });

  it('a few data pages without their bit, beside many marked (a live copy: pages zeroed in a later pass) → warn, restorable', async () => {
    const p = await copy(img.sparse);
    const { block } = await firstBlock(p);
    const bitmap = Buffer.alloc(block.usedLength / 4096 / 8);
    const fh = await fsp.open(p, 'r');
    await fh.read(bitmap, 0, bitmap.length, block.mappedRam!.bitmapOffset);
    await fh.close();
    const byte = bitmap.findIndex((b) => b !== 0);
    expect(byte).toBeGreaterThanOrEqual(0);
    const bit = Math.log2(bitmap[byte]! & -bitmap[byte]!);
    await pwrite(p, block.mappedRam!.bitmapOffset + byte, Buffer.from([bitmap[byte]! & ~(1 << bit)]));
    const r = await verifyImage(p);
    expect(status(r, 'mapped-ram.bitmap-vs-extents')).toBe('warn');
    expect(detail(r, 'mapped-ram.bitmap-vs-extents')).toMatch(/^1 page\(s\) hold old data .* live copy/);
  });

  it('holes punched into pages whose bits are set → mapped-ram.bitmap-vs-extents (data lost)', async () => {
    const p = await copy(img.sparse);
    const { block } = await firstBlock(p);
    execFileSync('fallocate', ['-p', '-o', String(block.mappedRam!.pagesOffset + 0x1000000), '-l', String(64 * 1024), p]);
    const r = await verifyImage(p);
    expect(status(r, 'mapped-ram.bitmap-vs-extents')).toBe('fail');
    expect(detail(r, 'mapped-ram.bitmap-vs-extents')).toMatch(/^16 page\(s\) marked written .* holes/);
  });

  it('a mapped-ram header pointing outside the file → mapped-ram.layout', async () => {
    const p = await copy(img.sparse);
    const { block } = await firstBlock(p);
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(1n << 40n);
    await pwrite(p, block.mappedRam!.offset + 20, b); // pages_offset
    const r = await verifyImage(p);
    expect(status(r, 'mapped-ram.layout')).toBe('fail');
    expect(detail(r, 'mapped-ram.layout')).toMatch(/past the end of the file/);
  });

  it('bits set past the page count → mapped-ram.layout', async () => {
    const p = await copy(img.sparse);
    const { walk } = await firstBlock(p);
    const rsdp = walk.ram!.blocks.find((b) => b.usedLength === 4096)!; // one page: bits 1..63 must be zero
    await pwrite(p, rsdp.mappedRam!.bitmapOffset, Buffer.from([0x03]));
    const r = await verifyImage(p);
    expect(status(r, 'mapped-ram.layout')).toBe('fail');
    expect(detail(r, 'mapped-ram.layout')).toMatch(/past its 1 pages/);
  });

  it('garbage after the end → stream.complete', async () => {
    for (const src of [img.sparse, img.legacy, img.lvLegacy]) {
      const p = await copy(src);
      await fsp.appendFile(p, Buffer.from('garbage after the end'));
      const r = await verifyImage(p);
      expect(status(r, 'stream.complete')).toBe('fail');
      expect(detail(r, 'stream.complete')).toMatch(/21 more byte\(s\)/);
    }
  });

  it('a damaged device section → stream.devices', async () => {
    const p = await copy(img.legacy);
    const { walk } = await firstBlock(p);
    const dev = walk.devices[3]!;
    await pwrite(p, dev.offset + 14 + dev.idstr.length + dev.size, Buffer.from([0x55])); // its footer byte
    const r = await verifyImage(p);
    expect(status(r, 'stream.devices')).toBe('fail');
    expect(detail(r, 'stream.devices')).toMatch(/footer|does not match/);
  });

  it('a dense copy of a sparse image → sparseness warns, bitmap-vs-extents warns (zeros, not lost data)', async () => {
    const p = join(dir, `dense-${n++}`);
    execFileSync('cp', ['--sparse=never', img.sparse, p]);
    const r = await verifyImage(p);
    expect(status(r, 'sparseness')).toBe('warn');
    expect(status(r, 'mapped-ram.bitmap-vs-extents')).toBe('warn');
    expect(r.ok).toBe(true);
  });

  it('a compressed libvirt image: the compressor is named, what needs decompressing is skipped', async () => {
    const p = join(dir, `gz-${n++}`);
    const xml = Buffer.from('<domain><name>z</name></domain>\0');
    await fsp.writeFile(
      p,
      Buffer.concat([
        encodeLibvirtHeader({ complete: true, dataLength: xml.length, wasRunning: false, formatCode: 1, cookieOffset: 0 }),
        xml,
        Buffer.from([0x1f, 0x8b, 8, 0, 0, 0]),
      ]),
    );
    const r = await verifyImage(p);
    expect(r.kind).toBe('libvirt');
    expect(status(r, 'stream.magic')).toBe('pass');
    expect(detail(r, 'stream.magic')).toMatch(/gzip/);
    expect(status(r, 'stream.complete')).toBe('skip');
    await pwrite(p, 92 + xml.length, Buffer.from('QE'));
    expect(status(await verifyImage(p), 'stream.magic')).toBe('fail');
  });

  it('an unknown file and a missing file are verdicts, not exceptions', async () => {
    const p = join(dir, `junk-${n++}`);
    await fsp.writeFile(p, 'hello');
    const r = await verifyImage(p);
    expect(r).toMatchObject({ kind: 'unknown', ok: false });
    expect(status(r, 'header.magic')).toBe('fail');
    const m = await verifyImage(join(dir, 'does-not-exist'));
    expect(m.ok).toBe(false);
    expect(m.checks.find((c) => c.status === 'fail')!.detail).toMatch(/ENOENT|no such file/i);
  });
});
