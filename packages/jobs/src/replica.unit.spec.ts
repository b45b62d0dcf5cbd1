/** Replicated images in the job model: ImageReplicated / ImageReplicationFailed on a verified save, ImageFetched / ImageFetchFailed on a restore. */
import { describe, expect, it } from 'vitest';
import { RestoreRequest, SaveRequest, makeEvent, type JobEvent } from '@vmsave/contracts';
import { decide } from './decide.ts';
import { describeState, jobJson } from './describe.ts';
import { fold } from './state.ts';

const T0 = new Date('2026-01-01T00:00:00Z');
const meta = { source: 'executor@h1', now: T0 };
const at = { source: 'test', at: T0 };
const J = 's-1';
const request = SaveRequest.parse({ requestId: 'r1', vm: 'vm1', replicate: 'bus' });
const deadlineAt = new Date(T0.getTime() + 60_000).toISOString();
const saveTo = (status: 'completed' | 'verified'): JobEvent[] => {
  const base = { host: 'h1', attempt: 1, fencingToken: 7, imagePath: '/img/a', format: 'sparse' as const };
  const evs: JobEvent[] = [
    makeEvent('SaveRequested', J, { request }, at),
    makeEvent('SaveScheduled', J, { host: 'h1', attempt: 1, fencingToken: 7, deadlineAt }, at),
    makeEvent('SaveStarted', J, { ...base, channels: 1, directIo: false, wasRunning: true, ramBytes: 1 }, at),
    makeEvent('SaveCompleted', J, { ...base, bytes: 10, blocks: 2, durationMs: 5, throughputBytesPerSec: 1, vmState: 'running', qemu: {} }, at),
  ];
  if (status === 'verified') evs.push(makeEvent('ImageVerified', J, { imagePath: '/img/a', checks: [{ name: 'header', status: 'pass', detail: 'ok' }] }, at));
  return evs;
};
const replicated = { imagePath: '/img/a', host: 'h1', bucket: 'VMSAVE_IMAGES', object: J, bytesMoved: 8, allocatedBytes: 8, extents: 2, seconds: 0.1 };

describe('replication of a save', () => {
  it('records ImageReplicated on a verified save, which stays verified; once only', () => {
    expect(request.replicate).toBe('bus');
    const s = fold(saveTo('verified'));
    const d = decide({ type: 'RecordReplication', data: replicated }, s, meta);
    expect(d.ok && d.events.map((e) => [e.type, e.eventId])).toEqual([['ImageReplicated', `${J}.ImageReplicated`]]);
    const after = fold(d.ok ? d.events : [], s);
    expect(after.status).toBe('verified');
    expect(after.replicated).toMatchObject({ bucket: 'VMSAVE_IMAGES', object: J, host: 'h1', bytesMoved: 8 });
    expect(jobJson(after).replicated?.object).toBe(J);
    expect(describeState(after)).toMatch(/; replicated to VMSAVE_IMAGES\/s-1$/);
    expect(decide({ type: 'RecordReplication', data: replicated }, after, meta)).toEqual({ ok: true, events: [], duplicate: true });
    // A late failure does not undo the replica.
    const late = makeEvent('ImageReplicationFailed', J, { imagePath: '/img/a', host: 'h1', reason: 'x', code: 'replica-io' }, at);
    expect(fold([late], after).replicationFailed).toBeUndefined();
  });

  it('refuses replication before the verdict, of another image, or of a deleted one', () => {
    expect(decide({ type: 'RecordReplication', data: replicated }, fold(saveTo('completed')), meta)).toMatchObject({ ok: false, rule: 'illegal-transition' });
    expect(decide({ type: 'RecordReplication', data: { ...replicated, imagePath: '/img/b' } }, fold(saveTo('verified')), meta)).toMatchObject({
      ok: false,
      rule: 'image-mismatch',
    });
    const deleted = fold([...saveTo('verified'), makeEvent('ImageDeleted', J, { imagePath: '/img/a', host: 'h1', rule: 'keep-last', bytes: 10 }, at)]);
    expect(decide({ type: 'RecordReplication', data: replicated }, deleted, meta)).toMatchObject({ ok: false, rule: 'image-deleted' });
  });

  it('records a failure, cleared by a later success', () => {
    const s = fold(saveTo('verified'));
    const f = decide({ type: 'FailReplication', data: { imagePath: '/img/a', host: 'h1', reason: 'no space', code: 'ENOSPC' } }, s, meta);
    const failed = fold(f.ok ? f.events : [], s);
    expect(failed.replicationFailed).toMatchObject({ code: 'ENOSPC', reason: 'no space' });
    expect(failed.status).toBe('verified');
    const ok = decide({ type: 'RecordReplication', data: replicated }, failed, meta);
    const done = fold(ok.ok ? ok.events : [], failed);
    expect(done.replicationFailed).toBeUndefined();
    expect(done.replicated?.object).toBe(J);
  });
});

describe('fetch before a restore', () => {
  const R = 'r-1';
  const restore = [
    makeEvent('RestoreRequested', R, { request: RestoreRequest.parse({ requestId: 'r2', image: 'a', host: 'h2' }), sourceJobId: J }, at),
    makeEvent('RestoreScheduled', R, { host: 'h2', attempt: 1, fencingToken: 3, deadlineAt }, at),
  ];
  const fetched = { ...replicated, host: 'h2', imagePath: '/img2/a', sourceJobId: J };

  it('records ImageFetched or ImageFetchFailed on a scheduled restore, not on a finished one', () => {
    const s = fold(restore);
    const d = decide({ type: 'RecordFetch', data: fetched }, s, meta);
    expect(d.ok && d.events.map((e) => e.type)).toEqual(['ImageFetched']);
    expect(fold(d.ok ? d.events : [], s).fetched).toMatchObject({ host: 'h2', object: J });
    const f = decide({ type: 'FailFetch', data: { imagePath: '/img2/a', host: 'h2', reason: 'extent 3', code: 'replica-checksum' } }, s, meta);
    expect(fold(f.ok ? f.events : [], s).fetchFailed).toMatchObject({ code: 'replica-checksum' });
    expect(decide({ type: 'RecordFetch', data: fetched }, fold(saveTo('verified')), meta)).toMatchObject({ ok: false });
  });
});
