import { describe, expect, it } from 'vitest';
import { PIECE_MAX_BYTES, layoutOf, layoutOfManifest, manifestProblems, type ReplicaManifest } from '../src/manifest.ts';

describe('layoutOf', () => {
  it('cuts extents into pieces that never cross a part and packs them back to back', () => {
    const l = layoutOf(
      [
        [0, 10],
        [100, 130],
        [200, 205],
      ],
      16,
    );
    expect(l.pieces.map((p) => [p.offset, p.length, p.part, p.partOffset])).toEqual([
      [0, 10, 0, 0],
      [100, 6, 0, 10],
      [106, 16, 1, 0],
      [122, 8, 2, 0],
      [200, 5, 2, 8],
    ]);
    expect(l.parts.map((p) => [p.bytes, p.first, p.count])).toEqual([
      [16, 0, 2],
      [16, 2, 1],
      [13, 3, 2],
    ]);
  });

  it('caps a piece at PIECE_MAX_BYTES and has no part for no data', () => {
    const l = layoutOf([[0, PIECE_MAX_BYTES * 2 + 1]], PIECE_MAX_BYTES * 8);
    expect(l.pieces.map((p) => p.length)).toEqual([PIECE_MAX_BYTES, PIECE_MAX_BYTES, 1]);
    expect(layoutOf([], 1024)).toEqual({ pieces: [], parts: [] });
  });

  it("re-derives the manifest's layout and names its inconsistencies", () => {
    const l = layoutOf(
      [
        [0, 10],
        [100, 130],
      ],
      16,
    );
    const m = {
      key: 'k',
      size: 200,
      partBytes: 16,
      dataBytes: 40,
      extents: l.pieces.map((p) => [p.offset, p.length, '00000000'] as [number, number, string]),
      parts: l.parts.map((p) => ({ bytes: p.bytes })),
    } as unknown as ReplicaManifest;
    expect(layoutOfManifest(m).pieces).toEqual(l.pieces);
    expect(manifestProblems(m)).toEqual([]);
    expect(manifestProblems({ ...m, size: 120, dataBytes: 41 })).toEqual([
      'extents[2]: ends at 122, beyond the size 120',
      'extents[3]: ends at 130, beyond the size 120',
      'dataBytes: 41, the extents hold 40',
    ]);
    expect(() => layoutOfManifest({ ...m, partBytes: 32 })).toThrow(/do not pack/);
  });
});
