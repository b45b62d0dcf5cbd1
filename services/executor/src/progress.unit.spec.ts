import { afterEach, describe, expect, it, vi } from 'vitest';
import { ProgressSample } from '@vmsave/contracts';
import type { Bus } from '@vmsave/bus';
import type { MigrationProgress } from '@vmsave/qemu';
import type { InFlight } from './context.ts';
import { progressReporter } from './progress.ts';

afterEach(() => {
  vi.useRealTimers();
});

describe('progressReporter', () => {
  it('publishes the rate of bytes written, not QEMU’s mbps: a save capped at 20 MB/s shows about 20 MB/s', () => {
    vi.useFakeTimers({ now: 0 });
    const published: ProgressSample[] = [];
    const bus = { nc: { publish: (_s: string, d: Uint8Array) => published.push(ProgressSample.parse(JSON.parse(new TextDecoder().decode(d)))) } } as unknown as Bus;
    const job = { jobId: 's-1', stage: 'intake' } as InFlight;
    const report = progressReporter({ bus, host: 'h1' }, job, 'save');
    const PAGE = 4096;
    const pages = (1 << 30) / PAGE;
    for (let t = 0; t <= 8000; t += 250) {
      vi.setSystemTime(t);
      const normal = Math.floor((20e6 * t) / 1000 / PAGE);
      const duplicate = normal * 3;
      // 82 MB/s, as QEMU reported it for this save (it counts zero pages); ram.transferred the same.
      const p: MigrationProgress = {
        direction: 'save',
        status: 'active',
        total: pages * PAGE,
        transferred: 82e6 * (t / 1000),
        remaining: (pages - normal - duplicate) * PAGE,
        mbps: 82 * 8,
        normal,
        duplicate,
        pageSize: PAGE,
        elapsedMs: t,
      };
      report(p);
    }
    const last = published.at(-1)!;
    expect(last.bytesPerSec / 20e6).toBeCloseTo(1, 1);
    expect(last.transferredBytes).toBeCloseTo(20e6 * 8, -5);
    // A quarter of the pages are non-zero: about 256 MiB to write in all, not 1 GiB.
    expect(last.totalBytes / (1 << 28)).toBeCloseTo(1, 1);
    expect(last.etaMs! / 1000).toBeCloseTo(((1 << 28) - 20e6 * 8) / 20e6, 0);
    expect(job.stage).toBe('save:active');
  });
});
