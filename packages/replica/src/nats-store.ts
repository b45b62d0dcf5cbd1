/**
 * The ImageStore on a JetStream object store bucket (nats.js `@nats-io/obj`), on the services'
 * own NATS connection: each part is one object (chunked by the library, SHA-256 checked on read),
 * the manifest one more, written last. Replicas: the events stream's, so images are as durable as
 * the log that names them.
 */
import { createHash } from 'node:crypto';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { imageBucket, objectStoreSubjects, streams } from '@vmsave/contracts';
import { ReplicaError, abortError } from './errors.ts';
import { ReplicaManifest } from './manifest.ts';
import { type ImageStore, type PartInfo, type StoreOptions, manifestName, partIndexOf, partName } from './store.ts';

/** Chunk size of the object store's messages (below the server's default 1 MiB max_payload). */
const CHUNK_BYTES = 512 * 1024;
/** Chunks a part's read keeps buffered from the server. */
const PULL_CHUNKS = 16;
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

  async putPart(key: string, index: number, data: ReadableStream<Uint8Array>, metadata: Record<string, string>, o: StoreOptions = {}): Promise<void> {
    if (o.signal?.aborted) throw abortError(o.signal);
    await this.os.put({ name: partName(key, index), metadata, options: { max_chunk_size: this.chunkBytes } }, data);
  }

  async headPart(key: string, index: number): Promise<PartInfo | undefined> {
    const info = await this.os.info(partName(key, index));
    if (!info || info.deleted) return undefined;
    return { bytes: info.size, metadata: info.metadata ?? {} };
  }

  /**
   * The part's chunks through an ordered pull consumer on its chunk subject (not nats.js's
   * `get`, whose flow-controlled push consumer was seen to stall for good mid-object under load on
   * NATS 2.9), at most `PULL_CHUNKS` buffered; the object's SHA-256 is checked at its end.
   */
  async getPart(key: string, index: number, o: StoreOptions = {}): Promise<ReadableStream<Uint8Array>> {
    if (o.signal?.aborted) throw abortError(o.signal);
    const name = partName(key, index);
    const info = await this.os.info(name);
    if (!info || info.deleted) throw new ReplicaError('replica-incomplete', `part ${index} of ${key} is not in bucket ${this.bucket}`);
    if (info.chunks === 0) return new Blob([]).stream();
    const oc = await this.js.consumers.get(this.stream, { filter_subjects: `$O.${this.bucket}.C.${info.nuid}` });
    const msgs = await oc.consume({ max_messages: PULL_CHUNKS });
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
