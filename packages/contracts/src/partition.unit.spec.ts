import { describe, expect, it } from 'vitest';
import { commandForSubject, messages } from './messages.ts';
import { allPartitions, fnv1a32, PARTITIONS, partitionKeyOfRequest, partitionOf, partitionToken } from './partition.ts';
import { commandFilters, parseCommandSubject, subjects } from './subjects.ts';

describe('partitionOf', () => {
  it('is FNV-1a 32-bit of the UTF-8 name, mod 16', () => {
    // Published FNV-1a 32 test vectors.
    expect(fnv1a32('')).toBe(0x811c9dc5);
    expect(fnv1a32('a')).toBe(0xe40c292c);
    expect(fnv1a32('foobar')).toBe(0xbf9cf968);
    expect(PARTITIONS).toBe(16);
    expect(partitionOf('foobar')).toBe(0xbf9cf968 % 16);
    // Multi-byte UTF-8 is hashed by its bytes, not its UTF-16 units.
    expect(fnv1a32('é')).not.toBe(fnv1a32('\u00e9'.normalize('NFD')));
  });

  it('spreads VM names over every partition, names with dots included', () => {
    const seen = new Map<number, number>();
    for (let i = 0; i < 1600; i++) {
      const p = partitionOf(`web.${i}.example`);
      expect(p).toBeGreaterThanOrEqual(0);
      expect(p).toBeLessThan(PARTITIONS);
      seen.set(p, (seen.get(p) ?? 0) + 1);
    }
    expect([...seen.keys()].sort((a, b) => a - b)).toEqual(allPartitions());
    for (const n of seen.values()) expect(n).toBeGreaterThan(50);
  });

  it('a restore without a known VM goes by its image', () => {
    expect(partitionKeyOfRequest({ kind: 'save', vm: 'a.b' })).toBe('a.b');
    expect(partitionKeyOfRequest({ kind: 'restore', vm: 'web-1', image: 'x.vmsave' })).toBe('web-1');
    expect(partitionKeyOfRequest({ kind: 'restore', image: 'x.vmsave' })).toBe('x.vmsave');
  });
});

describe('partitioned command subjects', () => {
  it('spell the partition as two digits and parse back', () => {
    expect(partitionToken(7)).toBe('07');
    expect(() => partitionToken(16)).toThrow(/partition: an integer 0 to 15/);
    expect(subjects.cmd.partitioned('save', 7)).toBe('vmsave.cmd.save.07');
    expect(commandFilters.ofPartition(12)).toBe('vmsave.cmd.*.12');
    expect(parseCommandSubject('vmsave.cmd.save.07')).toEqual({ kind: 'save', partition: 7 });
    expect(parseCommandSubject('vmsave.cmd.cancel')).toEqual({ kind: 'cancel' });
    expect(parseCommandSubject('vmsave.cmd.drain')).toEqual({ kind: 'drain' });
    for (const bad of ['vmsave.cmd.save.7', 'vmsave.cmd.save.16', 'vmsave.cmd.drain.01', 'vmsave.cmd.save.01.x', 'vmsave.cmd.nope', 'vmsave.evt.a.b']) {
      expect(parseCommandSubject(bad)).toBeUndefined();
    }
  });

  it('carry the same messages as the bare subjects', () => {
    expect(commandForSubject('vmsave.cmd.save.03')).toBe(messages.saveRequest);
    expect(commandForSubject('vmsave.cmd.restore.15')).toBe(messages.restoreRequest);
    expect(commandForSubject('vmsave.cmd.cancel.00')).toBe(messages.cancelRequest);
    expect(commandForSubject('vmsave.cmd.save')).toBe(messages.saveRequest);
    expect(commandForSubject('vmsave.cmd.drain')).toBeUndefined();
    expect(messages.saveRequestPartitioned.schema).toBe(messages.saveRequest.schema);
    expect(messages.saveRequestPartitioned.subject).toBe('vmsave.cmd.save.*');
  });
});
