/**
 * The legacy RAM record walk parses records synchronously out of the cursor's window and refills it
 * only when a record is not buffered whole. Synthetic streams whose records straddle window ends:
 * the counts and every error (offset, bytes wanted) are those of a field-by-field read.
 */
import { describe, expect, it } from 'vitest';
import { bufferSource, Cursor, NotBuffered, OutOfBounds, type ByteSource } from './source.ts';
import { RAM_FLAG, walkStream } from './stream.ts';

const BLOCK = 'pc.ram';
const BLOCK_SIZE = 64 * 1024 * 1024;

/** A byte writer that remembers where each field of each RAM record starts. */
class Builder {
  private parts: number[] = [];
  /** [start, size] of every field read from a record (page data included), in stream order. */
  readonly fields: Array<[number, number]> = [];
  get pos(): number {
    return this.parts.length;
  }
  u8(v: number): this {
    this.parts.push(v & 0xff);
    return this;
  }
  be16(v: number): this {
    return this.u8(v >>> 8).u8(v);
  }
  be32(v: number): this {
    return this.u8(v >>> 24)
      .u8(v >>> 16)
      .u8(v >>> 8)
      .u8(v);
  }
  be64(v: bigint): this {
    return this.be32(Number(v >> 32n)).be32(Number(v & 0xffffffffn));
  }
  str(s: string): this {
    for (const ch of Buffer.from(s, 'latin1')) this.u8(ch);
    return this;
  }
  fill(n: number, v = 0xaa): this {
    for (let i = 0; i < n; i++) this.parts.push(v);
    return this;
  }
  field(size: number, write: () => void): this {
    this.fields.push([this.pos, size]);
    write();
    return this;
  }
  /** A page record: kind ZERO / PAGE / XBZRLE, named or CONTINUE. */
  record(kind: 'zero' | 'page' | 'xbzrle', page: number, named: boolean): this {
    const flag = kind === 'zero' ? RAM_FLAG.ZERO : kind === 'page' ? RAM_FLAG.PAGE : RAM_FLAG.XBZRLE;
    this.field(8, () => this.be64(BigInt(page * 4096) | BigInt(flag | (named ? 0 : RAM_FLAG.CONTINUE))));
    if (named) {
      this.field(1, () => this.u8(BLOCK.length));
      this.field(BLOCK.length, () => this.str(BLOCK));
    }
    if (kind === 'zero') this.field(1, () => this.u8(0));
    else if (kind === 'page') this.field(4096, () => this.fill(4096));
    else {
      this.field(1, () => this.u8(1));
      this.field(2, () => this.be16(100));
      this.field(100, () => this.fill(100));
    }
    return this;
  }
  bytes(): Buffer {
    return Buffer.from(this.parts);
  }
}

/** A legacy stream: header, RAM START with `records`, RAM END, EOF and a VM description without devices. */
function legacyStream(records: (b: Builder) => void): { buf: Buffer; fields: Array<[number, number]>; sectionsEnd: number } {
  const b = new Builder();
  b.be32(0x5145564d).be32(3);
  b.u8(0x01).be32(2).u8(3).str('ram').be32(0).be32(4);
  b.be64(BigInt(BLOCK_SIZE) | BigInt(RAM_FLAG.MEM_SIZE))
    .u8(BLOCK.length)
    .str(BLOCK)
    .be64(BigInt(BLOCK_SIZE));
  records(b);
  b.field(8, () => b.be64(BigInt(RAM_FLAG.EOS)));
  b.u8(0x7e).be32(2);
  b.u8(0x03).be32(2);
  b.field(8, () => b.be64(BigInt(RAM_FLAG.EOS)));
  b.u8(0x7e).be32(2);
  const sectionsEnd = b.pos;
  const json = JSON.stringify({ devices: [] });
  b.u8(0x00).u8(0x06).be32(json.length).str(json);
  return { buf: b.bytes(), fields: b.fields, sectionsEnd };
}

/** 500 records of every kind, so that window ends fall inside record headers and names. */
function mixed(b: Builder): void {
  let seed = 7;
  const next = (): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed >>> 8;
  };
  for (let i = 0; i < 500; i++) {
    const r = next() % 10;
    if (r === 0) b.field(8, () => b.be64(BigInt(RAM_FLAG.MULTIFD_FLUSH)));
    b.record(r < 6 ? 'page' : r < 9 ? 'zero' : 'xbzrle', i, i === 0 || r % 3 === 0);
  }
}

/** A source that counts reads. */
function counting(buf: Uint8Array): ByteSource & { reads: number } {
  const inner = bufferSource(buf);
  const s = {
    size: inner.size,
    reads: 0,
    read: (p: number, l: number) => {
      s.reads++;
      return inner.read(p, l);
    },
  };
  return s;
}

describe('walkStream, legacy RAM records from the window', () => {
  it('counts every record of a stream several windows long and ends at the footer', async () => {
    const { buf, sectionsEnd } = legacyStream(mixed);
    expect(buf.length).toBeGreaterThan(3 * 256 * 1024);
    const src = counting(buf);
    const walk = await walkStream(src, 0);
    expect(walk.problems).toEqual([]);
    expect(walk.complete).toBe(true);
    const { pages } = walk.ram!;
    expect(pages.normal + pages.zero + pages.xbzrle).toBe(500);
    expect(pages.normal).toBeGreaterThan(100);
    expect(pages.zero).toBeGreaterThan(30);
    expect(pages.xbzrle).toBeGreaterThan(0);
    expect(walk.ram!.sectionsEnd).toBe(sectionsEnd);
    expect(walk.ram!.endSection).toBe(true);
    // One read per window plus the description search: not one per record.
    expect(src.reads).toBeLessThan(20);
  });

  it('reports a truncation inside any record field exactly as a read of that field at its offset', async () => {
    const { buf, fields } = legacyStream(mixed);
    // Every field that crosses or touches the first window end, and the ones just before and after it.
    const edge = fields.findIndex(([s, n]) => s + n > 256 * 1024);
    expect(edge).toBeGreaterThan(0);
    const picked = fields.slice(edge - 3, edge + 6);
    let cases = 0;
    for (const [start, size] of picked) {
      for (const cut of new Set([start, start + Math.floor(size / 2), start + size - 1])) {
        const walk = await walkStream(bufferSource(buf.subarray(0, cut)), 0);
        const p = walk.problems.at(-1)!;
        expect(p).toEqual({
          check: 'stream.ram',
          offset: start,
          detail: `the file ends at offset ${cut} in the middle of the RAM setup section (needed ${size} byte(s) at ${start}): the image is truncated`,
        });
        cases++;
      }
    }
    expect(cases).toBeGreaterThan(9);
  });

  it('names the offset of a damaged record next to a window end', async () => {
    const { buf, fields } = legacyStream(mixed);
    const edge = fields.findIndex(([s, n]) => s + n > 256 * 1024);
    const heads = fields.slice(edge - 6, edge + 6).filter(([, n]) => n === 8);
    expect(heads.length).toBeGreaterThan(1);
    for (const [at] of heads) {
      const bad = Buffer.from(buf);
      bad[at + 6]! |= 0x01; // flag 0x100: unknown
      const walk = await walkStream(bufferSource(bad), 0);
      expect(walk.problems).toContainEqual({ check: 'stream.ram', offset: at, detail: `unknown RAM record flags 0x100 at offset ${at}: the stream is damaged here` });
    }
  });
});

describe('walkStream, page addresses', () => {
  it('names a page address outside its block as the record u64 without its flag bits, past 2^53 too', async () => {
    for (const addr of [BigInt(BLOCK_SIZE), BigInt(BLOCK_SIZE) + 4096n * 7n, 1n << 53n, (1n << 60n) + (5n << 12n)]) {
      let at = -1;
      const { buf } = legacyStream((b) => {
        b.record('page', 0, true);
        at = b.pos;
        b.be64(addr | BigInt(RAM_FLAG.PAGE | RAM_FLAG.CONTINUE)).fill(4096);
      });
      const walk = await walkStream(bufferSource(buf), 0);
      expect(walk.problems).toEqual([
        { check: 'stream.ram', offset: at, detail: `page address 0x${addr.toString(16)} at offset ${at} is outside block "${BLOCK}" (${BLOCK_SIZE} bytes)` },
      ]);
    }
    // The last page of the block is inside it.
    const { buf } = legacyStream((b) => b.record('page', BLOCK_SIZE / 4096 - 1, true));
    expect((await walkStream(bufferSource(buf), 0)).problems).toEqual([]);
  });
});

describe('Cursor synchronous readers', () => {
  it('read from the window, say NotBuffered past it and OutOfBounds past the limit', async () => {
    const buf = Buffer.alloc(600 * 1024);
    buf.writeUInt32BE(0xdeadbeef, 256 * 1024 - 2);
    const c = new Cursor(bufferSource(buf), 0, 300 * 1024);
    expect(() => c.u8Sync()).toThrow(NotBuffered);
    await c.load(0, 0, 1);
    c.pos = 256 * 1024 - 2;
    expect(() => c.be32Sync()).toThrow(NotBuffered);
    expect(c.pos).toBe(256 * 1024 - 2);
    await c.load(256 * 1024 - 10, 256 * 1024 - 2, 4);
    expect(c.be32Sync()).toBe(0xdeadbeef);
    c.pos = 300 * 1024 - 4;
    expect(() => c.be64Sync()).toThrow(new OutOfBounds(300 * 1024 - 4, 8, 300 * 1024));
    await expect(c.load(300 * 1024 - 4, 300 * 1024 - 4, 8)).rejects.toThrow(new OutOfBounds(300 * 1024 - 4, 8, 300 * 1024));
  });
});
