/**
 * The executor's replication in its own process, for the kill tests: `upload` follows the log
 * and uploads (runReplication), `fetch` downloads the image of restore job `JOB_ID`
 * (ensureLocalImage). Its store stops dead after `STALL_AFTER_BYTES` bytes of part 0 and prints
 * `MID`; the test then SIGKILLs it.
 */
import path from 'node:path';
import { Bus, createLogger } from '@vmsave/bus';
import { NatsObjectImageStore, type ImageStore } from '@vmsave/replica';
import type { RestoreWork } from '@vmsave/contracts';
import { JobTrack, ensureLocalImage, runReplication, useImageStore, type ExecutorConfig, type ExecutorContext, type InFlight } from '@vmsave/executor';

const env = process.env as Record<string, string>;
const mode = process.argv[2];
const host = env.HOST!;
const bus = await Bus.connect({ servers: env.NATS_URL!, user: env.NATS_USER, pass: env.NATS_PASS, name: `executor-${host}` });
const log = createLogger('executor', { level: 'silent' });
const cfg = { VMSAVE_REPLICATE: 'none', VMSAVE_REPLICATE_LOOKBACK: 3_600_000, imageDir: env.IMAGE_DIR } as unknown as ExecutorConfig;
const ctx = { bus, cfg, log, host, source: `executor@${host}` } as unknown as ExecutorContext;

const stallAfter = Number(env.STALL_AFTER_BYTES);
const stalling = (s: ReadableStream<Uint8Array>, part: number): ReadableStream<Uint8Array> => {
  if (part !== 0) return s;
  const r = s.getReader();
  let n = 0;
  return new ReadableStream<Uint8Array>(
    {
      async pull(ctl) {
        if (n >= stallAfter) {
          process.stdout.write('MID\n');
          await new Promise(() => {});
        }
        const { done, value } = await r.read();
        if (done) ctl.close();
        else {
          n += value.length;
          ctl.enqueue(value);
        }
      },
    },
    { highWaterMark: 0 },
  );
};
const real = await NatsObjectImageStore.open(bus.js, bus.jsm, { chunkBytes: 64 * 1024 });
const store: ImageStore = Object.assign(Object.create(real) as ImageStore, {
  putPart: (key: string, i: number, data: ReadableStream<Uint8Array>, meta: Record<string, string>) => real.putPart(key, i, stalling(data, i), meta),
  getPart: async (key: string, i: number) => stalling(await real.getPart(key, i), i),
});
useImageStore(ctx, store);

if (mode === 'upload') {
  await runReplication(ctx, new AbortController().signal);
} else {
  const track = await JobTrack.load(ctx, env.JOB_ID!);
  const s = track.state;
  const w = { kind: 'restore', jobId: env.JOB_ID, attempt: s.attempt, fencingToken: s.fencingToken, host, request: s.restoreRequest } as unknown as RestoreWork;
  const job = { jobId: env.JOB_ID, attempt: s.attempt, fencingToken: s.fencingToken, kind: 'restore', stage: 'intake', ac: new AbortController() } as InFlight;
  await ensureLocalImage(ctx, w, job, track, path.join(env.IMAGE_DIR!, s.restoreRequest!.image), log);
}
process.stdout.write('DONE\n');
await bus.close();
