import { closeSync, constants as C, fstatSync, readFileSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DescriptorError,
  ImageChecksumError,
  ImageExistsError,
  ImageStateError,
  ImageTruncatedError,
  createImage,
  finalizeImage,
  openStreamFds,
  readImage,
  readImageHeader,
  updateDescriptor,
} from '../src/node/index.ts';
import { descriptorFor, qemuSave } from './fixtures.ts';

let dir: string;
beforeAll(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-image-'));
});
afterAll(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

const fdFlags = (fd: number): number => parseInt(/flags:\s*([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!, 8);

describe('vmsave image writer and reader', () => {
  it('creates exclusively, with the partial magic and a 4 KiB-aligned stream offset', async () => {
    const path = join(dir, 'a.vmsave');
    const { streamOffset, header } = await createImage(path, { format: 'sparse', channels: 2, directIo: true, wasRunning: true, descriptor: descriptorFor('sparse') });
    expect(streamOffset % 4096).toBe(0);
    expect(header).toMatchObject({ complete: false, format: 'sparse', channels: 2, directIo: true, wasRunning: true });
    expect((await fsp.stat(path)).size).toBe(streamOffset);
    await expect(createImage(path, { format: 'sparse', channels: 2, directIo: true, wasRunning: true, descriptor: descriptorFor('sparse') })).rejects.toBeInstanceOf(
      ImageExistsError,
    );
    const img = await readImage(path);
    expect(img.descriptor.vm.name).toBe('fixture');
    expect(img.header.complete).toBe(false);
  });

  it('refuses a descriptor whose format differs from the image format', async () => {
    await expect(
      createImage(join(dir, 'b.vmsave'), { format: 'legacy', channels: 0, directIo: false, wasRunning: false, descriptor: descriptorFor('sparse') }),
    ).rejects.toBeInstanceOf(DescriptorError);
    await expect(fsp.stat(join(dir, 'b.vmsave'))).rejects.toThrow();
  });

  it('opens two separately opened fds: write-only for save, read-only for restore, O_DIRECT on the second', async () => {
    const path = join(dir, 'fds.vmsave');
    await createImage(path, { format: 'sparse', channels: 1, directIo: true, wasRunning: false, descriptor: descriptorFor('sparse') });
    for (const mode of ['save', 'restore'] as const) {
      const { buffered, direct } = await openStreamFds(path, { mode, directIo: true });
      try {
        expect(direct).toBeDefined();
        const acc = mode === 'save' ? C.O_WRONLY : C.O_RDONLY;
        expect(fdFlags(buffered) & 3).toBe(acc);
        expect(fdFlags(direct!) & 3).toBe(acc);
        expect(fdFlags(buffered) & C.O_DIRECT).toBe(0);
        expect(fdFlags(direct!) & C.O_DIRECT).toBe(C.O_DIRECT);
        expect(fstatSync(buffered).ino).toBe(fstatSync(direct!).ino);
      } finally {
        closeSync(buffered);
        if (direct !== undefined) closeSync(direct);
      }
    }
    const { buffered, direct } = await openStreamFds(path, { mode: 'save', directIo: false });
    expect(direct).toBeUndefined();
    closeSync(buffered);
  });

  it('finalizes after QEMU wrote the stream, and rewrites the descriptor in place', async () => {
    const path = join(dir, 'c.vmsave');
    const { streamOffset } = await createImage(path, {
      format: 'legacy',
      channels: 0,
      directIo: false,
      wasRunning: false,
      descriptor: descriptorFor('legacy'),
      reserveBytes: 2048,
    });
    await expect(finalizeImage(path)).rejects.toBeInstanceOf(ImageStateError); // no stream yet
    await qemuSave({ dir, format: 'legacy', target: path, offset: streamOffset });
    const before = await fsp.readFile(path);
    expect(before.toString('latin1', streamOffset, streamOffset + 4)).toBe('QEVM');
    const h = await finalizeImage(path);
    expect(h.complete).toBe(true);
    expect((await readImageHeader(path)).complete).toBe(true);
    await expect(finalizeImage(path)).rejects.toBeInstanceOf(ImageStateError);

    const updated = await updateDescriptor(path, { ...descriptorFor('legacy'), completedAt: '2025-01-01T00:00:05Z', labels: { a: 'b'.repeat(500) } });
    expect(updated.header.complete).toBe(true);
    expect(updated.header.streamOffset).toBe(streamOffset);
    const again = await readImage(path);
    expect(again.descriptor.completedAt).toBe('2025-01-01T00:00:05Z');
    const after = await fsp.readFile(path);
    expect(after.subarray(streamOffset).equals(before.subarray(streamOffset))).toBe(true); // stream untouched
    await expect(
      updateDescriptor(path, { ...descriptorFor('legacy'), labels: { a: 'x'.repeat(1000), b: 'y'.repeat(1000), c: 'z'.repeat(1000), d: 'w'.repeat(1000) } }),
    ).rejects.toBeInstanceOf(DescriptorError);
  });

  it('throws typed errors for a damaged header and a truncated descriptor', async () => {
    const path = join(dir, 'd.vmsave');
    await createImage(path, { format: 'legacy', channels: 0, directIo: false, wasRunning: false, descriptor: descriptorFor('legacy') });
    const fh = await fsp.open(path, 'r+');
    await fh.write(Buffer.from([0x20]), 0, 1, 200); // inside the descriptor
    await fh.close();
    await expect(readImage(path)).rejects.toBeInstanceOf(ImageChecksumError);
    await fsp.truncate(path, 300);
    await expect(readImageHeader(path)).rejects.toBeInstanceOf(ImageTruncatedError);
  });
});
