import { describe, expect, it } from 'vitest';
import { parseProcNetUnix } from './peer.ts';

describe('parseProcNetUnix', () => {
  it('reads inode, listening flag and path (with spaces), skipping the header', () => {
    const text = [
      'Num       RefCount Protocol Flags    Type St Inode Path',
      '0000000000000000: 00000002 00000000 00010000 0001 01 40963 /run/vm 1/qmp.sock',
      '0000000000000000: 00000003 00000000 00000000 0001 03 40970 /run/vm 1/qmp.sock',
      '0000000000000000: 00000003 00000000 00000000 0001 03 40971',
      '',
    ].join('\n');
    expect(parseProcNetUnix(text)).toEqual([
      { inode: 40963, listening: true, path: '/run/vm 1/qmp.sock' },
      { inode: 40970, listening: false, path: '/run/vm 1/qmp.sock' },
      { inode: 40971, listening: false, path: undefined },
    ]);
  });
});
