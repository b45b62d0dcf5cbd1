import { describe, expect, it } from 'vitest';
import { jobIdFor, partitionOf } from '@vmsave/contracts';
import { routeOf } from './routing.ts';

const known = new Map([[jobIdFor('save', 'r1'), 5]]);
const state = { partitionOfJob: (id: string) => known.get(id) };

describe('routeOf: where a command belongs', () => {
  it('a save goes by its VM, a restore by its image, on the bare subject and on a partition alike', () => {
    expect(routeOf({ requestId: 'a', vm: 'db.primary' }, 'vmsave.cmd.save', state)).toEqual({ partition: partitionOf('db.primary') });
    expect(routeOf({ requestId: 'a', vm: 'db.primary' }, 'vmsave.cmd.save.03', state)).toEqual({ partition: partitionOf('db.primary') });
    expect(routeOf({ requestId: 'a', image: 'x/web-1.vmsave' }, 'vmsave.cmd.restore', state)).toEqual({ partition: partitionOf('x/web-1.vmsave') });
  });

  it("a cancel goes by its job's partition as the state knows it; a drain's to the bare subject; an unknown job is answered here", () => {
    expect(routeOf({ requestId: 'c', jobId: jobIdFor('save', 'r1') }, 'vmsave.cmd.cancel', state)).toEqual({ partition: 5 });
    expect(routeOf({ requestId: 'c', jobId: 'd-0123456789abcdef0123' }, 'vmsave.cmd.cancel.05', state)).toBe('bare');
    expect(routeOf({ requestId: 'c', jobId: jobIdFor('save', 'nobody') }, 'vmsave.cmd.cancel', state)).toBe('here');
  });

  it('what cannot be read is answered here (admission names the field)', () => {
    expect(routeOf({ requestId: 'a' }, 'vmsave.cmd.save', state)).toBe('here');
    expect(routeOf('not an object', 'vmsave.cmd.restore', state)).toBe('here');
    expect(routeOf({ vm: 'x' }, 'vmsave.cmd.drain', state)).toBe('here');
    expect(routeOf({ vm: 'x' }, 'vmsave.cmd.save.99', state)).toBe('here');
  });
});
