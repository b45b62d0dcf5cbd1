/**
 * Where replicated images live: a small interface of parts (opaque byte objects) and manifests
 * under a key. `uploadImage`/`downloadImage` are written against it only, so a shared directory or
 * an S3-compatible store can be added beside the JetStream object store (`nats-store.ts`).
 */
import type { ReplicaManifest } from './manifest.ts';

export interface StoreOptions {
  signal?: AbortSignal;
}

/** What the store holds of a part: its size and the metadata written with it. */
export interface PartInfo {
  bytes: number;
  metadata: Record<string, string>;
}

export interface ImageStore {
  /** A name for logs and events: the bucket (or directory, or S3 bucket). */
  readonly bucket: string;
  /** Write (or overwrite) part `index` of `key`; a part that fails midway is removed by the store. */
  putPart(key: string, index: number, data: ReadableStream<Uint8Array>, metadata: Record<string, string>, o?: StoreOptions): Promise<void>;
  headPart(key: string, index: number): Promise<PartInfo | undefined>;
  /** The part's bytes; the stream errors when they differ from what was written (the store's own digest). */
  getPart(key: string, index: number, o?: StoreOptions): Promise<ReadableStream<Uint8Array>>;
  /** Part indexes present under `key`, in order. */
  listParts(key: string): Promise<number[]>;
  deletePart(key: string, index: number): Promise<void>;
  /** Write the manifest: the last write of an upload, after which the object set is complete. */
  putManifest(key: string, manifest: ReplicaManifest): Promise<void>;
  /** The manifest, or undefined when there is none (an incomplete or absent object set). */
  getManifest(key: string): Promise<ReplicaManifest | undefined>;
  /** Keys with a manifest (complete object sets). */
  list(): Promise<string[]>;
  /** Remove an object set: its manifest first (it stops looking complete), then its parts. */
  delete(key: string): Promise<void>;
  /** Remove what a killed writer left (data of parts never finished) older than `graceMs`; `refused`: this user may not remove it (why). */
  sweep(o?: { graceMs?: number }): Promise<{ removed: number; refused?: string }>;
}

export const manifestName = (key: string): string => `${key}/manifest`;
export const partName = (key: string, index: number): string => `${key}/part/${String(index).padStart(6, '0')}`;
export const partIndexOf = (key: string, name: string): number | undefined => {
  const prefix = `${key}/part/`;
  if (!name.startsWith(prefix)) return undefined;
  const n = Number(name.slice(prefix.length));
  return Number.isInteger(n) && n >= 0 ? n : undefined;
};
