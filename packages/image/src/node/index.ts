/**
 * @vmsave/image/node — image files on this host: create, open for QEMU, finalize, rewrite the
 * descriptor, read, fingerprint and verify them. Re-exports the pure API of `@vmsave/image`, so a
 * caller that needs both imports one place.
 */
export * from '../index.ts';
export {
  createImage,
  openStreamFds,
  closeStreamFds,
  finalizeImage,
  updateDescriptor,
  readImageHeader,
  readImage,
  fingerprintImage,
  DEFAULT_RESERVE_BYTES,
  sealReserveBytes,
  type CreateImageOptions,
  type CreatedImage,
  type StreamFds,
} from './image.ts';
export { openFileSource, type FileSource } from './file-source.ts';
export { dataExtents } from './extents.ts';
export { verifyImage } from './verify.ts';
export { sealImage, checkSeal, crc32Hasher, type SealImageResult, type SealImageOptions, type CheckSealOptions } from './seal.ts';
export { startSealFollower, type SealFollower, type SealFollowerOptions, type SealFollowerStats } from './seal-follow.ts';
