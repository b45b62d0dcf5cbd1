/**
 * CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), the seal's checksum, in plain JS for the
 * pure entry; node/seal.ts uses zlib's native `crc32`, which gives the same values faster.
 */
/** A checksum the seal is computed with. */
export interface SealHasher {
  /** Name stored in the seal (`crc32`). */
  readonly algorithm: string;
  /** Bytes of one digest. */
  readonly digestBytes: number;
  /** The digest of `data`, `digestBytes` long. */
  digest(data: Uint8Array): Uint8Array;
  /** A running digest over several buffers, as if they were one. */
  stream(): { update(data: Uint8Array): void; digest(): Uint8Array };
}

const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** CRC-32 of `data`, continuing from `crc` when given. `crc32(Buffer.from('123456789')) === 0xcbf43926`. */
export function crc32(data: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

const be32 = (v: number): Uint8Array => {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v, false);
  return b;
};

/** Make a seal hasher from a CRC-32 function (`crc32` here, or zlib's). */
export function crc32HasherOf(fn: (data: Uint8Array, crc?: number) => number): SealHasher {
  return {
    algorithm: 'crc32',
    digestBytes: 4,
    digest: (data) => be32(fn(data)),
    stream() {
      let c = 0;
      return {
        update(data) {
          c = fn(data, c);
        },
        digest: () => be32(c),
      };
    },
  };
}

/** The seal's CRC-32 in plain JS (the default of `verifySource`). */
export const jsCrc32Hasher: SealHasher = crc32HasherOf(crc32);
