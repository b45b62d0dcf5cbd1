/**
 * The executor's metrics, on top of what every service exports (process, bus): saves and
 * restores (counted and timed from the events it publishes, `JobTrack.publish` → `onPublished`),
 * its image directory's free space, its QEMU processes, and the bytes its replication moves.
 */
import { readdir, readFile, stat, statfs } from 'node:fs/promises';
import type { JobEvent } from '@vmsave/contracts';
import { readImageHeader } from '@vmsave/image/node';
import { JobMetrics, type ImageTraits, type ServiceMetrics } from '@vmsave/metrics';

export function registerExecutorMetrics(metrics: ServiceMetrics, dirs: { imageDir: string; qmpDir: string }): (event: JobEvent, history: readonly JobEvent[]) => void {
  const fsStats = async () => {
    const s = await statfs(dirs.imageDir);
    return { free: s.bavail * s.bsize, size: s.blocks * s.bsize };
  };
  metrics.gauge('imageDirFreeBytes', async function () {
    this.set((await fsStats().catch(() => undefined))?.free ?? 0);
  });
  metrics.gauge('imageDirSizeBytes', async function () {
    this.set((await fsStats().catch(() => undefined))?.size ?? 0);
  });
  metrics.gauge('qemuProcesses', async function () {
    this.set(await qemuProcessesUsing(dirs.qmpDir));
  });
  const replication = metrics.counter('replicationBytes');
  const jobs = new JobMetrics(metrics, imageTraits);
  return (event, history) => {
    if (event.type === 'ImageReplicated') replication.inc({ direction: 'upload' }, event.data.bytesMoved);
    else if (event.type === 'ImageFetched') replication.inc({ direction: 'download' }, event.data.bytesMoved);
    void jobs.observe(event, [...history]);
  };
}

/** A restored image's format, channels and direct IO (its header) and its allocated size. */
async function imageTraits(imagePath: string): Promise<ImageTraits | undefined> {
  const [h, st] = await Promise.all([readImageHeader(imagePath), stat(imagePath)]);
  return { format: h.format, channels: h.channels, directIo: h.directIo, allocatedBytes: st.blocks * 512 };
}

/** QEMU processes whose command line names a QMP socket in `qmpDir` (Linux /proc; 0 elsewhere). */
export async function qemuProcessesUsing(qmpDir: string): Promise<number> {
  const pids = (await readdir('/proc').catch(() => [] as string[])).filter((p) => /^\d+$/.test(p));
  const prefix = `${qmpDir.replace(/\/+$/, '')}/`;
  let n = 0;
  await Promise.all(
    pids.map(async (pid) => {
      const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
      if (!argv[0] || !/qemu-system/.test(argv[0])) return;
      if (argv.some((a) => a.includes(prefix) && a.includes('.qmp'))) n++;
    }),
  );
  return n;
}
