/**
 * @vmsave/image — vmsave's image format (writer, reader, restore gate), libvirt save-image
 * reading, a QEMU migration stream walker, and the image verifier.
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
export { ImageDescriptor, type ImageDescriptorInput, encodeDescriptor, decodeDescriptor } from './descriptor.ts';
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
export {
  createImage,
  openStreamFds,
  finalizeImage,
  updateDescriptor,
  readImageHeader,
  readImage,
  readImageFrom,
  fingerprintImage,
  sameFingerprint,
  DEFAULT_RESERVE_BYTES,
  type CreateImageOptions,
  type CreatedImage,
  type StreamFds,
  type ImageInfo,
} from './image.ts';
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
export { type ByteSource, bufferSource } from './source.ts';
export { openFileSource, type FileSource } from './file-source.ts';
export {
  walkStream,
  vmsdStreamSize,
  VmDescription,
  type StreamWalk,
  type StreamProblem,
  type StreamCheck,
  type RamBlock,
  type RamInfo,
  type MappedRamHeader,
  type WalkOptions,
} from './stream.ts';
export { dataExtents, type ExtentScan, type Range } from './extents.ts';
export { verifyImage, CHECK_NAMES, type CheckName, type CheckStatus, type VerifyCheck, type VerifyResult, type VerifyOptions } from './verify.ts';
