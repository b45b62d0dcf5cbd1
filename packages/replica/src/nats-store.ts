/**
 * The ImageStore on a JetStream object store bucket (nats.js `@nats-io/obj`), on the services'
 * own NATS connection: each part is one object in the library's format (its chunks published here
 * with a window of unacknowledged ones, SHA-256 checked on read), the manifest one more, written
 * last. Replicas: the events stream's, so images are as durable as the log that names them.
 */
import { createHash } from 'node:crypto';
import type { JetStreamClient, JetStreamManager, PubAck } from '@nats-io/jetstream';
import { headers, nuid } from '@nats-io/nats-core';
import { Base64UrlPaddedCodec, Objm, type ObjectStore } from '@nats-io/obj';
import { imageBucket, objectStoreSubjects, streams } from '@vmsave/contracts';
import { ReplicaError, abortError } from './errors.ts';
import { ReplicaManifest } from './manifest.ts';
import { type ImageStore, type PartInfo, type StoreOptions, manifestName, partIndexOf, partName } from './store.ts';

/** Chunk size of the object store's messages (below the server's default 1 MiB max_payload). */
const CHUNK_BYTES = 512 * 1024;
/** Bytes of a part's chunks published and not yet acknowledged (the publish window). */
const WINDOW_BYTES = 8 * 1024 * 1024;
/**
 * Bytes of a part's chunks a read asks the server for at once. Not more: what all of a
 * connection's reads have asked for must stay well below the server's per-connection
 * `max_pending` (64 MiB by default), else the server cuts the connection's deliveries as a slow
 * consumer and the ordered consumer stalls until its heartbeat check resets it (measured: 4 reads
 * of 16 MiB each took 46 s for 128 MiB, of 8 MiB each 0.7 s).
 */
const PULL_BYTES = 8 * 1024 * 1024;
/** Base64url with its `=` padding (the object store's digest is written padded). */
const padBase64 = (s: string) => s + '='.repeat((4 - (s.length % 4)) % 4);

export interface NatsStoreOptions {
  /** Bucket name (default `imageBucket.name`); tests use their own. */
  bucket?: string;
  /** Stream replicas (default: the events stream's, 1 when it cannot be read). */
  replicas?: number;
  /** Bytes of one message of a part (default 512 KiB; the server's max_payload caps it). */
  chunkBytes?: number;
}

export class NatsObjectImageStore implements ImageStore {
  private constructor(
    readonly bucket: string,
    private readonly os: ObjectStore,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly chunkBytes: number,
  ) {}

  private get stream(): string {
    return objectStoreSubjects(this.bucket).stream;
  }

  /** Open the bucket, creating it when it does not exist. */
  static async open(js: JetStreamClient, jsm: JetStreamManager, o: NatsStoreOptions = {}): Promise<NatsObjectImageStore> {
    const bucket = o.bucket ?? imageBucket.name;
    let replicas = o.replicas;
    if (replicas === undefined) {
      replicas = await jsm.streams
        .info(streams.events.name)
        .then((si) => si.config.num_replicas || 1)
        .catch(() => 1);
    }
    const os = await new Objm(js).create(bucket, { replicas, description: imageBucket.description });
    return new NatsObjectImageStore(bucket, os, js, jsm, o.chunkBytes ?? CHUNK_BYTES);
  }

  /** Delete the whole bucket (tests). */
  async destroy(): Promise<void> {
    await this.os.destroy();
  }

  /**
   * The object store's own object format (chunks on `$O.<bucket>.C.<nuid>`, then the object's
   * meta on `$O.<bucket>.M.<name>` with a subject rollup), written with up to `WINDOW_BYTES` of
   * chunks published and unacknowledged at once instead of nats.js's one awaited publish per chunk,
   * and its SHA-256 in native code (nats.js hashes in JS by default). One connection keeps the
   * publishes in order; the acks' stream sequences are checked to rise, so the order readers see
   * is the order written. The meta goes only after every chunk is acknowledged: until then the
   * part does not exist for readers. A failed or aborted part's chunks are purged when this user
   * may (else `sweep` removes them later); an overwritten part's old chunks are purged after.
   */
  async putPart(key: string, index: number, data: ReadableStream<Uint8Array>, metadata: Record<string, string>, o: StoreOptions = {}): Promise<void> {
    const signal = o.signal;
    if (signal?.aborted) throw abortError(signal);
    const name = partName(key, index);
    const maxPayload = (this.js as unknown as { nc?: { info?: { max_payload?: number } } }).nc?.info?.max_payload;
    const chunkBytes = maxPayload && maxPayload < this.chunkBytes ? maxPayload : this.chunkBytes;
    const old = await this.os.info(name);
    const id = nuid.next();
    const chunkSubj = `$O.${this.bucket}.C.${id}`;
    const metaSubj = `$O.${this.bucket}.M.${Base64UrlPaddedCodec.encode(name)}`;
    const timeout = this.js.getOptions().timeout;
    const sha = createHash('sha256');
    const window = Math.max(1, Math.floor(WINDOW_BYTES / chunkBytes));
    const inflight = new Set<Promise<void>>();
    let failed: unknown;
    const seqs: number[] = [];
    let chunks = 0;
    let size = 0;
    let published = 0;
    const publish = async (payload: Uint8Array) => {
      sha.update(payload);
      chunks++;
      size += payload.length;
      const n = ++published;
      const p: Promise<void> = this.js
        .publish(chunkSubj, payload, { timeout })
        .then((ack: PubAck) => {
          seqs[n - 1] = ack.seq;
        })
        .catch((err: unknown) => {
          failed ??= err;
        })
        .finally(() => inflight.delete(p));
      inflight.add(p);
      while (inflight.size >= window && failed === undefined) await Promise.race(inflight);
      if (failed !== undefined) throw failed;
    };
    const reader = data.getReader();
    try {
      let pending: Uint8Array | undefined;
      for (;;) {
        if (signal?.aborted) throw abortError(signal);
        const r = await reader.read();
        if (r.done) break;
        let buf = r.value;
        if (pending) {
          // A short remainder of the previous read and this one: joined into one chunk.
          buf = Buffer.concat([pending, buf]);
          pending = undefined;
        }
        let at = 0;
        for (; buf.length - at >= chunkBytes; at += chunkBytes) await publish(buf.subarray(at, at + chunkBytes));
        if (at < buf.length) pending = buf.subarray(at);
      }
      if (pending?.length) await publish(pending);
      await Promise.all(inflight);
      if (failed !== undefined) throw failed;
      if (signal?.aborted) throw abortError(signal);
      // The stream holds the chunks in the order they were cut (a reader gets them by stream sequence).
      for (let i = 1; i < seqs.length; i++)
        if (seqs[i]! <= seqs[i - 1]!)
          throw new ReplicaError('replica-io', `part ${index} of ${key}: chunk ${i + 1} stored at sequence ${seqs[i]}, not after chunk ${i}'s ${seqs[i - 1]}`);
      const info = {
        name,
        description: '',
        options: { max_chunk_size: chunkBytes },
        metadata,
        bucket: this.bucket,
        nuid: id,
        size,
        chunks,
        mtime: new Date().toISOString(),
        digest: `SHA-256=${padBase64(sha.digest('base64url'))}`,
        deleted: false,
      };
      const h = headers();
      h.set('Nats-Rollup', 'sub');
      await this.js.publish(metaSubj, JSON.stringify(info), { headers: h, timeout });
    } catch (err) {
      reader.cancel(err).catch(() => {});
      await Promise.allSettled(inflight);
      await this.jsm.streams.purge(this.stream, { filter: chunkSubj }).catch(() => undefined);
      throw err;
    }
    if (old && !old.deleted) await this.jsm.streams.purge(this.stream, { filter: `$O.${this.bucket}.C.${old.nuid}` }).catch(() => undefined);
  }

  async headPart(key: string, index: number): Promise<PartInfo | undefined> {
    const info = await this.os.info(partName(key, index));
    if (!info || info.deleted) return undefined;
    return { bytes: info.size, metadata: info.metadata ?? {} };
  }

  /**
   * The part's chunks through an ordered pull consumer on its chunk subject (not nats.js's
   * `get`, whose flow-controlled push consumer was seen to stall for good mid-object under load on
   * NATS 2.9), about `PULL_BYTES` asked for at once; the object's SHA-256 is checked at its end.
   */
  async getPart(key: string, index: number, o: StoreOptions = {}): Promise<ReadableStream<Uint8Array>> {
    if (o.signal?.aborted) throw abortError(o.signal);
    const name = partName(key, index);
    const info = await this.os.info(name);
    if (!info || info.deleted) throw new ReplicaError('replica-incomplete', `part ${index} of ${key} is not in bucket ${this.bucket}`);
    if (info.chunks === 0) return new Blob([]).stream();
    const oc = await this.js.consumers.get(this.stream, { filter_subjects: `$O.${this.bucket}.C.${info.nuid}` });
    const chunk = info.options?.max_chunk_size || this.chunkBytes;
    const msgs = await oc.consume({ max_messages: Math.max(1, Math.min(info.chunks, Math.floor(PULL_BYTES / chunk))) });
    const it = msgs[Symbol.asyncIterator]();
    const sha = createHash('sha256');
    let chunks = 0;
    let bytes = 0;
    const signal = o.signal;
    return new ReadableStream<Uint8Array>(
      {
        async pull(ctl) {
          if (signal?.aborted) {
            msgs.stop();
            return ctl.error(abortError(signal));
          }
          const r = await it.next();
          if (r.done) return ctl.error(new ReplicaError('replica-incomplete', `part ${index} of ${key}: the read ended after ${chunks} of ${info.chunks} chunks`));
          const data = r.value.data;
          sha.update(data);
          chunks++;
          bytes += data.length;
          ctl.enqueue(data);
          if (chunks < info.chunks) return;
          msgs.stop();
          const digest = `SHA-256=${padBase64(sha.digest('base64url'))}`;
          if (bytes !== info.size || digest !== info.digest)
            return ctl.error(
              new ReplicaError('replica-checksum', `part ${index} of ${key}: ${bytes} bytes with ${digest}, the object store says ${info.size} bytes with ${info.digest}`),
            );
          ctl.close();
        },
        cancel() {
          msgs.stop();
        },
      },
      { highWaterMark: 0 },
    );
  }

  async listParts(key: string): Promise<number[]> {
    const all = await this.os.list();
    return all
      .filter((i) => !i.deleted)
      .map((i) => partIndexOf(key, i.name))
      .filter((n): n is number => n !== undefined)
      .sort((a, b) => a - b);
  }

  async deletePart(key: string, index: number): Promise<void> {
    await this.deleteObject(partName(key, index));
  }

  /**
   * nats.js writes the object's tombstone, then purges its chunks. A user without purge rights
   * (the executors: no role may purge) gets the tombstone only: the object is gone for every
   * reader, its chunks stay for `sweep` by an operator.
   */
  private async deleteObject(name: string): Promise<void> {
    try {
      await this.os.delete(name);
    } catch (err) {
      const info = await this.os.info(name).catch(() => null);
      if (info && !info.deleted) throw err;
    }
  }

  async putManifest(key: string, manifest: ReplicaManifest): Promise<void> {
    const body = new TextEncoder().encode(JSON.stringify(ReplicaManifest.parse(manifest)));
    await this.os.putBlob({ name: manifestName(key), metadata: { complete: 'true', version: String(manifest.version) } }, body);
  }

  async getManifest(key: string): Promise<ReplicaManifest | undefined> {
    const info = await this.os.info(manifestName(key));
    if (!info || info.deleted) return undefined;
    const body = await this.os.getBlob(manifestName(key));
    if (!body) return undefined;
    const parsed = ReplicaManifest.safeParse(JSON.parse(new TextDecoder().decode(body)));
    if (!parsed.success) {
      const i = parsed.error.issues[0];
      throw new ReplicaError('replica-incomplete', `manifest of ${key}: ${i?.path.join('.') || '(root)'}: ${i?.message}`);
    }
    return parsed.data;
  }

  async list(): Promise<string[]> {
    const all = await this.os.list();
    return all
      .filter((i) => !i.deleted && i.name.endsWith('/manifest') && i.metadata?.complete === 'true')
      .map((i) => i.name.slice(0, -'/manifest'.length))
      .sort();
  }

  async delete(key: string): Promise<void> {
    const m = await this.os.info(manifestName(key));
    if (m && !m.deleted) await this.deleteObject(manifestName(key));
    for (const i of await this.listParts(key)) await this.deletePart(key, i);
  }

  /**
   * Chunks whose object meta was never written (a writer killed mid-part; nats.js purges a
   * failed part's chunks itself only when it lives to see the failure). Each such chunk subject
   * whose newest message is older than `graceMs` is purged: a live writer keeps its newest fresh.
   * Without purge rights (an executor's user) nothing is removed and the sweep says so.
   */
  async sweep(o: { graceMs?: number } = {}): Promise<{ removed: number; refused?: string }> {
    const grace = o.graceMs ?? 10 * 60_000;
    const subj = objectStoreSubjects(this.bucket);
    const si = await this.jsm.streams.info(subj.stream, { subjects_filter: `$O.${this.bucket}.C.>` });
    const chunkSubjects = Object.keys(si.state.subjects ?? {});
    if (chunkSubjects.length === 0) return { removed: 0 };
    const live = new Set((await this.os.list()).filter((i) => !i.deleted).map((i) => i.nuid));
    let removed = 0;
    for (const s of chunkSubjects) {
      const nuid = s.slice(`$O.${this.bucket}.C.`.length);
      if (live.has(nuid)) continue;
      const last = await this.jsm.streams.getMessage(subj.stream, { last_by_subj: s }).catch(() => null);
      if (last && Date.now() - last.time.getTime() < grace) continue;
      try {
        removed += (await this.jsm.streams.purge(subj.stream, { filter: s })).purged;
      } catch (err) {
        return { removed, refused: (err as Error).message };
      }
    }
    return { removed };
  }
}
