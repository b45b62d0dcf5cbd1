/**
 * @vmsave/image — vmsave's image format (header, descriptor), libvirt save-image headers, a
 * QEMU migration stream walker, the restore gate and the image verifier, over any `ByteSource`.
 *
 * Pure: nothing here opens a file (a unit test walks this entry's module graph). Reading and
 * writing image files — `createImage`, `finalizeImage`, `readImage`, `verifyImage(path)`, … —
 * is `@vmsave/image/node`, which re-exports this API too.
 */
export {
  ImageError,
  ImageExistsError,
  ImageIoError,
  ImageFormatError,
  ImageTruncatedError,
  ImageVersionError,
  ImageChecksumError,
  DescriptorError,
  ImageStateError,
  type ImageErrorCode,
} from './errors.ts';
export { ImageDescriptor, ImageSeal, type ImageDescriptorInput, encodeDescriptor, decodeDescriptor } from './descriptor.ts';
export {
  SEAL_VERSION,
  DEFAULT_CHUNK_BYTES,
  MAX_CHUNK_BYTES,
  sealSummary,
  sealLayout,
  sealProblems,
  placeholderSeal,
  computeSeal,
  sealStream,
  checkSealSource,
  sealWithChunkDigests,
  chunkCount,
  chunksOf,
  type SealHasher,
  type SealSource,
  type SealLayout,
  type SealRunOptions,
  type SealScope,
  type SealCheck,
  type SealMismatch,
  type SealCheckName,
  type SealCheckItem,
  type SealHead,
  type SealStreamOptions,
  type StreamSealResult,
  type LentChunk,
  type CheckSealOptions as CheckSealSourceOptions,
} from './seal.ts';
export { ChunkFeed } from './chunk-feed.ts';
export { FollowFeed } from './follow-feed.ts';
export { crc32, crc32HasherOf, jsCrc32Hasher } from './crc32.ts';
export {
  HEADER_SIZE,
  MAGIC_COMPLETE,
  MAGIC_PARTIAL,
  FORMAT_VERSION,
  SUPPORTED_VERSIONS,
  STREAM_ALIGNMENT,
  encodeHeader,
  decodeHeader,
  verifyHeaderChecksum,
  type ImageHeader,
  type HeaderFields,
} from './header.ts';
export { readImageFrom, sameFingerprint, type ImageInfo } from './read.ts';
export { checkRestorable, type RestoreVerdict, type RestoreRefusal, type RestoreRefusalCode } from './restorable.ts';
export {
  LIBVIRT_HEADER_SIZE,
  LIBVIRT_MAX_DATA,
  LIBVIRT_FORMATS,
  decodeLibvirtHeader,
  encodeLibvirtHeader,
  parseLibvirtData,
  domainSummary,
  type LibvirtHeader,
  type LibvirtFormat,
} from './libvirt.ts';
export { type ByteSource, type VerifySource, type ExtentScan, type Range, bufferSource } from './source.ts';
export {
  walkStream,
  walkStreamPrefix,
  vmsdStreamSize,
  VmDescription,
  type StreamWalk,
  type StreamProblem,
  type StreamCheck,
  type RamBlock,
  type RamInfo,
  type MappedRamHeader,
  type WalkOptions,
  type StreamPrefix,
} from './stream.ts';
export { verifySource, CHECK_NAMES, type CheckName, type CheckStatus, type VerifyCheck, type VerifyResult, type VerifyOptions } from './verify.ts';
