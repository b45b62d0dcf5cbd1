/**
 * A replica transfer in its own process, for the kill tests: `upload BUCKET PATH KEY` or
 * `download BUCKET KEY DEST`. With `STALL_AFTER_BYTES=n` the transfer stops dead after n bytes of its
 * second part and prints `MID` (the test then SIGKILLs it); otherwise it prints the result as JSON.
 */
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { NatsObjectImageStore, downloadImage, uploadImage, type ImageStore } from '../src/index.ts';

const [mode, bucket, a, b] = process.argv.slice(2) as [string, string, string, string];
const stallAfter = Number(process.env.STALL_AFTER_BYTES ?? 0);
const nc = await connect({ servers: process.env.NATS_URL ?? 'nats://127.0.0.1:4222' });
const real = await NatsObjectImageStore.open(jetstream(nc), await jetstreamManager(nc), { bucket, replicas: 1, chunkBytes: 64 * 1024 });

/** Pass chunks through; on part 1 stop for good once `stallAfter` bytes went through. */
const stalling = (s: ReadableStream<Uint8Array>, part: number): ReadableStream<Uint8Array> => {
  if (!stallAfter || part !== 1) return s;
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
      // Pull only when the reader asks: MID means the library has published what it was given.
    },
    { highWaterMark: 0 },
  );
};
const store: ImageStore = Object.assign(Object.create(real) as ImageStore, {
  putPart: (key: string, i: number, data: ReadableStream<Uint8Array>, meta: Record<string, string>) => real.putPart(key, i, stalling(data, i), meta),
  getPart: async (key: string, i: number) => stalling(await real.getPart(key, i), i),
});

const partBytes = Number(process.env.PART_BYTES ?? 0) || undefined;
const r =
  mode === 'upload'
    ? await uploadImage(store, a, b, { concurrency: 1, ...(partBytes ? { partBytes } : {}), sweepGraceMs: 0 })
    : await downloadImage(store, a, b, { concurrency: 1 });
process.stdout.write(`${JSON.stringify(r)}\n`);
await nc.close();
