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
  /**
   * A running digest over several buffers, as if they were one; `zeros(n)`, when there, continues
   * it over `n` zero bytes without being given them (a hole of the file).
   */
  stream(): { update(data: Uint8Array): void; zeros?(n: number): void; digest(): Uint8Array };
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

/** `mat` (32 columns over GF(2)) applied to the 32-bit vector `vec`. */
function gf2Times(mat: Uint32Array, vec: number): number {
  let sum = 0;
  for (let i = 0, v = vec >>> 0; v !== 0; i++, v >>>= 1) if (v & 1) sum ^= mat[i]!;
  return sum >>> 0;
}

/** ZERO_OPS[k]: what 2^k zero bytes do to the CRC register (the step for a zero byte is linear). */
const ZERO_OPS: Uint32Array[] = [];
function zeroOp(k: number): Uint32Array {
  if (ZERO_OPS.length === 0) {
    const one = new Uint32Array(32);
    for (let j = 0; j < 32; j++) {
      const r = (1 << j) >>> 0;
      one[j] = (TABLE[r & 0xff]! ^ (r >>> 8)) >>> 0;
    }
    ZERO_OPS.push(one);
  }
  while (ZERO_OPS.length <= k) {
    const m = ZERO_OPS[ZERO_OPS.length - 1]!;
    const sq = new Uint32Array(32);
    for (let j = 0; j < 32; j++) sq[j] = gf2Times(m, m[j]!);
    ZERO_OPS.push(sq);
  }
  return ZERO_OPS[k]!;
}

/**
 * CRC-32 continued from `crc` over `n` zero bytes, in O(log n) without the bytes:
 * `crc32Zeros(crc32(a), n) === crc32(zeros(n), crc32(a))`.
 */
export function crc32Zeros(crc: number, n: number): number {
  let r = ~crc >>> 0;
  for (let k = 0, left = n; left > 0; k++, left = Math.floor(left / 2)) if (left % 2 === 1) r = gf2Times(zeroOp(k), r);
  return ~r >>> 0;
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
        zeros(n) {
          c = crc32Zeros(c, n);
        },
        digest: () => be32(c),
      };
    },
  };
}

/** The seal's CRC-32 in plain JS (the default of `verifySource`). */
export const jsCrc32Hasher: SealHasher = crc32HasherOf(crc32);
