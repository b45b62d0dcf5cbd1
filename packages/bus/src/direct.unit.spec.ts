import { describe, expect, it } from 'vitest';
import { subjectMatches } from './direct.ts';

describe('subjectMatches (the client-side filter of a direct read by sequence)', () => {
  it('matches NATS wildcards as the server does', () => {
    expect(subjectMatches('vmsave.evt.>', 'vmsave.evt.s-1.SaveRequested')).toBe(true);
    expect(subjectMatches('vmsave.evt.>', 'vmsave.evt')).toBe(false);
    expect(subjectMatches('vmsave.evt.s-1.>', 'vmsave.evt.s-1.SaveRequested')).toBe(true);
    expect(subjectMatches('vmsave.evt.s-1.>', 'vmsave.evt.s-10.SaveRequested')).toBe(false);
    expect(subjectMatches('vmsave.evt.*.SaveCompleted', 'vmsave.evt.s-1.SaveCompleted')).toBe(true);
    expect(subjectMatches('vmsave.evt.*.SaveCompleted', 'vmsave.evt.s-1.SaveFailed')).toBe(false);
    expect(subjectMatches('vmsave.host.*', 'vmsave.host.h1')).toBe(true);
    expect(subjectMatches('vmsave.host.*', 'vmsave.host.h1.x')).toBe(false);
    expect(subjectMatches('vmsave.host.h1', 'vmsave.host.h1')).toBe(true);
    expect(subjectMatches('vmsave.host.h1', 'vmsave.host')).toBe(false);
  });
});
