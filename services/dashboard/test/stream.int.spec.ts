import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { messages, subjects, type JobEvent } from '@vmsave/contracts';
import { eventsOfJob, publishCore } from '@vmsave/bus';
import { fold } from '@vmsave/jobs';
import { GiB, publishAll, saveJob, startDashboard, uniq, type Harness } from './helpers.ts';
import { openSse, type SseMessage } from './sse.ts';

let h: Harness;
let base: string;

beforeAll(async () => {
  h = await startDashboard();
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const addr = h.app.server.address();
  base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
});
afterAll(async () => {
  await h?.close();
});

/** Read job frames until `done` says enough; returns them (progress frames are collected apart). */
async function readUntil(it: AsyncGenerator<SseMessage>, done: (jobs: SseMessage[]) => boolean, other: SseMessage[] = []): Promise<SseMessage[]> {
  const jobs: SseMessage[] = [];
  for await (const m of it) {
    if (m.event === 'job') jobs.push(m);
    else other.push(m);
    if (done(jobs)) break;
  }
  return jobs;
}

const jobIdsOf = (frames: SseMessage[]) => new Set(frames.map((f) => JSON.parse(f.data).event.jobId as string));

describe('GET /api/stream', () => {
  it('a client that loses the stream and reconnects with Last-Event-ID ends up with every job, none missing', async () => {
    const vm = uniq('vm');
    const host = uniq('host');
    const { cursor } = (await (await fetch(`${base}/api/jobs?vm=${vm}`)).json()) as { cursor: number };

    const before = [saveJob(vm, host), saveJob(vm, host)];
    const during = Array.from({ length: 6 }, () => saveJob(vm, host));
    const after = [saveJob(vm, host)];
    const history = (j: ReturnType<typeof saveJob>): JobEvent[] => [j.requested(), j.scheduled(), j.started(), j.completed(), j.verified()];

    // Read until every event this test published in a phase has arrived. (Other services on a
    // shared NATS may add events about these jobs: they are welcome, but not counted on.)
    const mine = (frames: SseMessage[]) => frames.filter((f) => JSON.parse(f.data).job.vm === vm);
    const untilSeen = (events: JobEvent[]) => {
      const want = new Set(events.map((e) => e.eventId));
      return (frames: SseMessage[]) => {
        for (const f of frames.splice(0)) {
          want.delete(JSON.parse(f.data).event.eventId);
          kept.push(f);
        }
        return want.size === 0;
      };
    };
    let kept: SseMessage[] = [];

    // 1. Connected: the first jobs arrive live.
    const first = await openSse(`${base}/api/stream?since=${cursor}`);
    const phase1 = before.flatMap(history);
    await publishAll(h.bus, phase1);
    await readUntil(first.messages, untilSeen(phase1));
    first.close();
    const seen1 = kept;
    kept = [];
    const lastId = seen1.at(-1)!.id!;

    // 2. Disconnected: more jobs happen meanwhile.
    const phase2 = during.flatMap(history);
    await publishAll(h.bus, phase2);

    // 3. Reconnected with the id of the last event received (the URL's `since` is stale, as
    //    an EventSource's would be): it catches up, then goes on live.
    const second = await openSse(`${base}/api/stream?since=${cursor}`, { 'last-event-id': lastId });
    const phase3 = after.flatMap(history);
    const reading = readUntil(second.messages, untilSeen([...phase2, ...phase3]));
    await publishAll(h.bus, phase3);
    await reading;
    second.close();
    const seen2 = kept;

    const all = [...mine(seen1), ...mine(seen2)];
    const ids = all.map((f) => Number(f.id));
    expect(new Set(ids).size, 'no event delivered twice').toBe(ids.length);
    expect(
      [...ids].sort((a, b) => a - b),
      'in log order',
    ).toEqual(ids);
    expect(jobIdsOf(all)).toEqual(new Set([...before, ...during, ...after].map((j) => j.jobId)));
    // Each frame carries the job as of its event or later: the last frame of each job shows
    // what the log folds to.
    const lastOf = new Map(all.map((f) => [JSON.parse(f.data).job.jobId, JSON.parse(f.data).job]));
    for (const [jobId, j] of lastOf) {
      const folded = fold((await eventsOfJob(h.bus, jobId)).filter((e) => e.seq <= j.lastSeq).map((e) => e.event));
      expect(j).toMatchObject({ status: folded.status, vm, host, checks: folded.checks });
    }
    // Every id the second connection sent is after the one the client resumed from.
    expect(Math.min(...mine(seen2).map((f) => Number(f.id)))).toBeGreaterThan(Number(lastId));
  });

  it('relays progress samples as their own event type without an id, and the fleet throughput', async () => {
    const vm = uniq('vm');
    const host = uniq('host');
    const job = saveJob(vm, host);
    const conn = await openSse(`${base}/api/stream`);
    const others: SseMessage[] = [];
    const reading = readUntil(conn.messages, () => false, others).catch(() => []);
    await publishAll(h.bus, [job.requested(), job.scheduled(), job.started()]);
    const total = 4 * GiB;
    for (let i = 1; i <= 20 && !others.some((m) => m.event === 'progress' && JSON.parse(m.data).transferredBytes >= (total * 10) / 20); i++) {
      publishCore(h.bus, messages.progress, subjects.progress(job.jobId), {
        jobId: job.jobId,
        at: new Date().toISOString(),
        host,
        stage: 'migrate',
        status: 'active',
        totalBytes: total,
        transferredBytes: (total * i) / 20,
        remainingBytes: total - (total * i) / 20,
        bytesPerSec: 1.5 * GiB,
        etaMs: 1000,
      });
      await new Promise((r) => setTimeout(r, 50));
    }
    const { waitFor } = await import('./helpers.ts');
    await waitFor('a progress frame past half way', () => others.some((m) => m.event === 'progress' && JSON.parse(m.data).transferredBytes >= total / 2));
    await waitFor('a throughput frame counting the job', () => others.some((m) => m.event === 'throughput' && JSON.parse(m.data).jobs >= 1));
    conn.close();
    await reading;
    const progress = others.filter((m) => m.event === 'progress');
    expect(progress.every((m) => m.id === undefined)).toBe(true);
    expect(progress.map((m) => JSON.parse(m.data).jobId)).toContain(job.jobId);
    // The job list shows a running job's latest sample (unless another service on a shared
    // NATS has meanwhile ended this test's job).
    const { items } = (await (await fetch(`${base}/api/jobs?vm=${vm}`)).json()) as { items: Array<{ status: string; progress?: { transferredBytes: number } }> };
    if (items[0]?.status === 'running') expect(items[0].progress?.transferredBytes).toBeGreaterThan(0);
  });
});
