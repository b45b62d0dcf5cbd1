import { access, readdir, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '@vmsave/bus';
import type { SavePoint } from '@vmsave/ops';

/**
 * A failpoint of VMSAVE_FAILPOINTS (fault injection, never set in production): hold at `point`
 * until the test removes `<jobsDir>/<jobId>.hold.<point>`.
 */
export async function failpoint(o: { points: readonly SavePoint[]; jobsDir: string }, point: SavePoint, jobId: string, signal: AbortSignal, log: Logger): Promise<void> {
  if (!o.points.includes(point)) return;
  const file = path.join(o.jobsDir, `${jobId}.hold.${point}`);
  await writeFile(file, '');
  log.warn({ failpoint: point, file }, `failpoint ${point}: holding until ${file} is removed`);
  while (
    await access(file).then(
      () => true,
      () => false,
    )
  ) {
    if (signal.aborted) throw new Error(`aborted at failpoint ${point}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  log.warn({ failpoint: point }, `failpoint ${point}: released`);
}

/** Hold files a previous run left behind hold nothing any more. */
export async function clearHolds(jobsDir: string): Promise<void> {
  for (const f of await readdir(jobsDir)) if (f.includes('.hold.')) await unlink(path.join(jobsDir, f)).catch(() => undefined);
}
