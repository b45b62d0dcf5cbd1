/**
 * @vmsave/replica — images on the bus's own storage: sparse-aware upload of a verified image's
 * data extents with a manifest written last, and a download that rebuilds the sparse file and
 * checks it (extents, header, seal) before it takes the image's name. The store is an interface
 * (`ImageStore`); the JetStream object store is its one implementation.
 */
export { ReplicaError, replicaCodeOf, type ReplicaErrorCode } from './errors.ts';
export { ReplicaManifest, layoutOf, layoutOfManifest, manifestProblems, DEFAULT_PART_BYTES, PIECE_MAX_BYTES, type Piece, type Layout } from './manifest.ts';
export { type ImageStore, type PartInfo, type StoreOptions, manifestName, partName } from './store.ts';
export { NatsObjectImageStore, type NatsStoreOptions } from './nats-store.ts';
export { uploadImage, type UploadOptions, type TransferProgress, type TransferResult } from './upload.ts';
export { downloadImage, removeDownloadLeftovers, tempPrefixOf, type DownloadOptions } from './download.ts';
