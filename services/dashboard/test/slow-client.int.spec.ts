import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { publishAll, projected, saveJob, startDashboard, uniq, type Harness } from './helpers.ts';
import { startPrivateNats } from './private-nats.ts';

let h: Harness;
let nats: Awaited<ReturnType<typeof startPrivateNats>>;
let port: number;

beforeAll(async () => {
  // Its own log: the burst below must not reach other suites' streams, nor theirs this one.
  nats = await startPrivateNats();
  h = await startDashboard({}, { natsUrl: nats?.url });
  await h.app.listen({ host: '127.0.0.1', port: 0 });
  const addr = h.app.server.address();
  port = typeof addr === 'object' && addr ? addr.port : 0;
});
afterAll(async () => {
  await h?.close();
  await nats?.stop();
});

interface Frame {
  id?: string;
  event: string;
  data: string;
}

/** A stream client that reads nothing until told to: its socket's buffers fill, the server's then backs up. */
function stalledClient(path: string): Promise<{ res: http.IncomingMessage; readAll(until: (f: Frame[]) => boolean): Promise<Frame[]>; close(): void }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path, headers: { accept: 'text/event-stream' } }, (res) => {
      res.pause();
      resolve({
        res,
        close: () => req.destroy(),
        readAll: (until) =>
          new Promise((done, fail) => {
            const frames: Frame[] = [];
            let buf = '';
            res.setEncoding('utf8');
            res.on('data', (chunk: string) => {
              buf += chunk;
              for (let end = buf.indexOf('\n\n'); end >= 0; end = buf.indexOf('\n\n')) {
                const block = buf.slice(0, end);
                buf = buf.slice(end + 2);
                const f: Frame = { event: 'message', data: '' };
                for (const line of block.split('\n')) {
                  if (line.startsWith('id: ')) f.id = line.slice(4);
                  else if (line.startsWith('event: ')) f.event = line.slice(7);
                  else if (line.startsWith('data: ')) f.data = line.slice(6);
                }
                if (f.data) frames.push(f);
              }
              if (until(frames)) done(frames);
            });
            res.on('error', fail);
            res.on('end', () => done(frames));
            res.resume();
          }),
      });
    });
    req.on('error', reject);
  });
}

describe('GET /api/stream to a browser that cannot keep up', () => {
  it('coalesces per job and summarises instead of queueing every event, and the API then shows every job', async () => {
    const vm = uniq('burst');
    const host = uniq('hv');
    const client = await stalledClient('/api/stream');
    const jobs = Array.from({ length: 3000 }, () => saveJob(vm, host));
    let lastSeq = 0;
    // 6,000 events while the client reads nothing.
    for (let i = 0; i < jobs.length; i += 100) {
      const seqs = await Promise.all(jobs.slice(i, i + 100).map((j) => publishAll(h.bus, [j.requested(), j.scheduled()])));
      lastSeq = Math.max(lastSeq, ...seqs);
    }
    await projected(h, lastSeq);
    // Let the stream's writer find the socket full, then read everything it sends.
    await new Promise((r) => setTimeout(r, 1000));
    const frames = await client.readAll((fs) => fs.some((f) => Number(f.id) >= lastSeq));
    client.close();

    const jobFrames = frames.filter((f) => f.event === 'job');
    const summaries = frames.filter((f) => f.event === 'summary').map((f) => JSON.parse(f.data) as { seq: number; events: number; jobs: number });
    // Fewer messages than events: the browser was owed a bounded amount, not a queue of 6,000.
    expect(summaries.length + jobFrames.length).toBeLessThan(6000);
    const superseded = jobFrames.filter((f) => (JSON.parse(f.data) as { superseded?: number }).superseded);
    expect(summaries.length + superseded.length).toBeGreaterThan(0);
    for (const s of summaries) expect(s.events).toBeGreaterThan(0);
    // Ids only grow, and the last is the log's end: a reconnect would resume after everything.
    const ids = frames.filter((f) => f.id !== undefined).map((f) => Number(f.id));
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(ids.at(-1)).toBeGreaterThanOrEqual(lastSeq);
    // What a summary tells the page to do: reload from the API, where every job is current.
    const page = (await (await fetch(`http://127.0.0.1:${port}/api/jobs?vm=${vm}&limit=1`)).json()) as { total: number; totals: Record<string, number> };
    expect(page.total).toBe(3000);
    expect(page.totals.scheduled).toBe(3000);
  });
});
