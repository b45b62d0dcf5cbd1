/**
 * Load: many small VMs on one host, each saved (then its QEMU quits) and restored through the
 * bus, with the per-host limit of 2. No job may be lost: every one reaches a final state, and the
 * counts of every final state are printed. In `npm test` it runs with 12 VMs; the on-demand run
 * (`VMSAVE_SOAK=1`, or `VMSAVE_LOAD_VMS=N`) takes 200.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import type { JobEvent } from '@vmsave/contracts';
import { QmpClient } from '@vmsave/qmp';
import { isFinal, type JobState } from '@vmsave/jobs';
import { guestMemory, makePattern, patternVm, uniq, MiB } from '@vmsave/testkit';
import { Stack, recordFault } from '../src/index.ts';

const N = Number(process.env.VMSAVE_LOAD_VMS ?? (process.env.VMSAVE_SOAK === '1' ? 200 : 12));
const LIMIT = 2;
const PATTERN = 1 * MiB;

let stack: Stack;
let host: string;
const names = Array.from(
  { length: N },
  (_, i) =>
    `ld${i}-${uniq('')
      .replace(/[^A-Za-z0-9]/g, '')
      .slice(-6)}`,
);
const patternOf = (i: number) => makePattern(PATTERN, i + 1);

beforeAll(async () => {
  stack = await Stack.start({
    hosts: ['a'],
    env: { VMSAVE_HOST_LIMIT: String(LIMIT) },
    // Announcing 200 VMs' states every second would be most of the work: every 3 s.
    hostEnv: { a: { VMSAVE_MAX_CONCURRENT: String(LIMIT), VMSAVE_ANNOUNCE_MS: '3000' } },
  });
  host = stack.host('a');
  // Paused from the start: 200 idle guests would still cost CPU; a paused VM saves the same way.
  for (let i = 0; i < N; i += 8) {
    await Promise.all(names.slice(i, i + 8).map(async (name, j) => stack.startVm('a', await patternVm(stack.dir, name, 64, patternOf(i + j)), { paused: true })));
  }
  await stack.waitForHost('a', names, 120_000);
}, 900_000);

afterAll(async () => {
  await stack?.stop();
});

/** Final states of jobs, followed in parallel on the log. */
async function finals(jobIds: string[], timeoutMs: number): Promise<JobState[]> {
  return Promise.all(jobIds.map((id) => stack.client.waitForJob(id, { until: isFinal, timeoutMs })));
}

function counts(states: JobState[]): Record<string, number> {
  const c: Record<string, number> = {};
  for (const s of states) c[s.status] = (c[s.status] ?? 0) + 1;
  return c;
}

/** Most jobs of one kind running at once on the host, from their events' timestamps. */
function maxConcurrent(histories: JobEvent[][], started: JobEvent['type'], ended: JobEvent['type'][]): number {
  const edges: Array<[number, number]> = [];
  for (const h of histories) {
    for (const e of h) {
      if (e.type === started) edges.push([Date.parse(e.at), 1]);
      if (ended.includes(e.type)) edges.push([Date.parse(e.at), -1]);
    }
  }
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let max = 0;
  for (const [, d] of edges) {
    now += d;
    max = Math.max(max, now);
  }
  return max;
}

describe(`load: ${N} small VMs on one host, limit ${LIMIT}`, () => {
  it(
    'every VM is saved and restored through the bus; no job is lost; the counts of every final state are printed',
    async () => {
      const timeoutMs = 120_000 + N * 4_000;
      const t0 = Date.now();
      const saves = await Promise.all(names.map((vm, i) => stack.client.save({ requestId: uniq('ld-s'), vm, format: i % 2 ? 'sparse' : 'legacy', after: 'quit' })));
      expect(
        saves.filter((s) => s.admission?.outcome !== 'accepted'),
        'every save admitted',
      ).toEqual([]);
      const savedStates = await finals(
        saves.map((s) => s.jobId),
        timeoutMs,
      );
      const saveSecs = (Date.now() - t0) / 1000;
      const saveHistories = await Promise.all(saves.map((s) => stack.client.history(s.jobId)));

      const t1 = Date.now();
      const images = saveHistories.map((h) => h.find((e): e is Extract<JobEvent, { type: 'ImageVerified' }> => e.type === 'ImageVerified')?.data.imagePath);
      const restores = await Promise.all(images.map((image) => (image ? stack.client.restore({ requestId: uniq('ld-r'), image }) : undefined)));
      const restoreIds = restores.flatMap((r) => (r ? [r.jobId] : []));
      const restoredStates = await finals(restoreIds, timeoutMs);
      const restoreSecs = (Date.now() - t1) / 1000;
      const restoreHistories = await Promise.all(restoreIds.map((id) => stack.client.history(id)));

      const saveCounts = counts(savedStates);
      const restoreCounts = counts(restoredStates);
      const maxSaves = maxConcurrent(saveHistories, 'SaveStarted', ['SaveCompleted', 'SaveFailed', 'SaveCancelled']);
      const maxRestores = maxConcurrent(restoreHistories, 'RestoreStarted', ['RestoreCompleted', 'RestoreFailed', 'RestoreCancelled']);
      const table = [
        `| jobs | requested | ${['verified', 'completed', 'failed', 'rejected', 'cancelled'].join(' | ')} | wall s | jobs/min | most at once |`,
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
        `| saves | ${N} | ${['verified', 'completed', 'failed', 'rejected', 'cancelled'].map((k) => saveCounts[k] ?? 0).join(' | ')} | ${saveSecs.toFixed(1)} | ${((N / saveSecs) * 60).toFixed(0)} | ${maxSaves} |`,
        `| restores | ${restoreIds.length} | ${['verified', 'completed', 'failed', 'rejected', 'cancelled'].map((k) => restoreCounts[k] ?? 0).join(' | ')} | ${restoreSecs.toFixed(1)} | ${((restoreIds.length / restoreSecs) * 60).toFixed(0)} | ${maxRestores} |`,
      ].join('\n');
      console.log(`\nload: ${N} VMs of 64 MiB on one host, per-host limit ${LIMIT}\n${table}\n`);

      // Nothing lost: every request reached a final state, and all of them succeeded.
      expect(savedStates).toHaveLength(N);
      expect(saveCounts, table).toEqual({ verified: N });
      expect(restoreCounts, table).toEqual({ completed: N });
      expect(maxSaves, table).toBeLessThanOrEqual(LIMIT);
      expect(maxRestores, table).toBeLessThanOrEqual(LIMIT);
      for (const h of saveHistories) expect(h.filter((e) => e.type === 'SaveCompleted')).toHaveLength(1);

      // A sample of restored guests holds exactly its own VM's memory.
      for (const i of [0, Math.floor(N / 2), N - 1]) {
        await using qmp = await QmpClient.connect(path.join(stack.dirs(host).qmpDir, `${names[i]}.qmp`), { timeoutMs: 5000 });
        expect((await guestMemory(qmp, stack.dir, undefined, PATTERN)).equals(patternOf(i)), names[i]).toBe(true);
      }

      await recordFault({
        fault: `load: ${N} VMs`,
        injection: `${N} paused 64 MiB VMs on one host (half legacy, half sparse), all saves published at once with after=quit, then all restores; per-host limit ${LIMIT}`,
        checked:
          'every job final; all saves verified and all restores completed; never more than the limit at once; one SaveCompleted per job; sampled guests hold their own memory',
        result: 'pass',
        detail: `saves: ${JSON.stringify(saveCounts)} in ${saveSecs.toFixed(1)} s (${((N / saveSecs) * 60).toFixed(0)}/min, at most ${maxSaves} at once); restores: ${JSON.stringify(restoreCounts)} in ${restoreSecs.toFixed(1)} s (at most ${maxRestores} at once)`,
      });
    },
    2 * (120_000 + N * 4_000),
  );
});
