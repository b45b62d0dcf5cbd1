/**
 * Allocated extents of a file via lseek(SEEK_DATA / SEEK_HOLE), through fs-ext.
 * Node's fs has no SEEK_DATA/SEEK_HOLE; fs-ext's seekSync passes whence through unchanged.
 */
import { createRequire } from 'node:module';
import type { ExtentScan, Range } from '../source.ts';

const require = createRequire(import.meta.url);
const { seekSync } = require('fs-ext') as { seekSync(fd: number, offset: number, whence: number): number };

export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

function errno(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err ? String((err as { code: unknown }).code) : undefined;
}

/** Data extents of `fd` inside [start, end), at most `maxExtents` of them. */
export function dataExtents(fd: number, start: number, end: number, maxExtents = 1 << 20): ExtentScan {
  const extents: Range[] = [];
  let pos = start;
  while (pos < end) {
    let data: number;
    try {
      data = seekSync(fd, pos, SEEK_DATA);
    } catch (err) {
      if (errno(err) === 'ENXIO') break; // no data at or after pos
      if (errno(err) === 'EINVAL' && extents.length === 0) return { extents: [[start, end]], supported: false, truncated: false };
      throw err;
    }
    if (data >= end) break;
    let hole: number;
    try {
      hole = seekSync(fd, data, SEEK_HOLE);
    } catch (err) {
      if (errno(err) !== 'ENXIO') throw err;
      hole = end;
    }
    if (hole <= data) hole = data + 1; // never loop in place
    extents.push([Math.max(data, start), Math.min(hole, end)]);
    if (extents.length >= maxExtents) return { extents, supported: true, truncated: hole < end };
    pos = hole;
  }
  return { extents, supported: true, truncated: false };
}

/** The first data offset at or after `pos` (SEEK_DATA), undefined when only a hole follows; `pos` itself when holes are not reported. */
export function seekData(fd: number, pos: number): number | undefined {
  try {
    return seekSync(fd, pos, SEEK_DATA);
  } catch (err) {
    if (errno(err) === 'ENXIO') return undefined;
    if (errno(err) === 'EINVAL') return pos;
    throw err;
  }
}
