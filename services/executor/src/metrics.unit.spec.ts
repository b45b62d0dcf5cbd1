import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { makeEvent } from '@vmsave/contracts';
import { ServiceMetrics, sampleValue } from '@vmsave/metrics';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerExecutorMetrics } from './metrics.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'vmsave-exec-metrics-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('executor metrics', () => {
  it('counts the bytes replication moves, by direction, from the events the executor publishes', async () => {
    const m = new ServiceMetrics('executor');
    const observe = registerExecutorMetrics(m, { imageDir: dir, qmpDir: dir });
    const moved = { imagePath: '/srv/img/a.vmsave', host: 'h1', bucket: 'VMSAVE_IMAGES', object: 's-1', allocatedBytes: 9000, extents: 3, seconds: 0.5 };
    const up = makeEvent('ImageReplicated', 's-1', { ...moved, bytesMoved: 8192 }, { source: 'executor@h1' });
    const down = makeEvent('ImageFetched', 'r-1', { ...moved, host: 'h2', sourceJobId: 's-1', bytesMoved: 4096 }, { source: 'executor@h2' });
    observe(up, [up]);
    observe(up, [up]);
    observe(down, [down]);
    const t = await m.text();
    expect(sampleValue(t, 'vmsave_replication_bytes_total', { direction: 'upload' })).toBe(16_384);
    expect(sampleValue(t, 'vmsave_replication_bytes_total', { direction: 'download' })).toBe(4096);
  });
});
