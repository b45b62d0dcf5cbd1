import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { makeEvent, type JobEvent } from '@vmsave/contracts';
import { imageKey, imagesOf, neededImagesOf, planRetention, ruleFor, withVmRules, type KnownImage } from './retention.ts';
import { fold } from './state.ts';
import { decide, decideRetry } from './decide.ts';

const now = new Date('2026-12-03T12:00:00Z');
const ago = (ms: number) => new Date(now.getTime() - ms).toISOString();
const img = (n: number, over: Partial<KnownImage> = {}): KnownImage => ({
  jobId: `s-${String(n).padStart(3, '0')}`,
  vm: 'web-1',
  host: 'host-a',
  imagePath: `/img/web-1-${n}.vmsave`,
  status: 'verified',
  at: ago((10 - n) * 3_600_000),
  bytes: 1000,
  ...over,
});

describe('planRetention', () => {
  it('keep-last 2 of five verified images deletes the three oldest with rule keep-last', () => {
    const plan = planRetention(
      [1, 2, 3, 4, 5].map((n) => img(n)),
      { keepLast: 2 },
      { runningVms: ['web-1'] },
      now,
    );
    expect(plan.delete.map((d) => d.jobId).sort()).toEqual(['s-001', 's-002', 's-003']);
    expect(plan.delete.every((d) => d.rule === 'keep-last')).toBe(true);
    expect(plan.keep.map((k) => k.jobId).sort()).toEqual(['s-004', 's-005']);
  });

  it('max-age deletes old images but keeps the newest verified image of a stopped VM', () => {
    const plan = planRetention(
      [1, 2, 3].map((n) => img(n)),
      { keepYoungerThanMs: 60_000 },
      {},
      now,
    );
    expect(plan.delete.map((d) => [d.jobId, d.rule])).toEqual([
      ['s-002', 'max-age'],
      ['s-001', 'max-age'],
    ]);
    expect(plan.keep).toEqual([expect.objectContaining({ jobId: 's-003', reason: expect.stringContaining('not running') })]);
    // Running: its live state is newer than any image, so the last one may go too.
    expect(planRetention([img(3)], { keepYoungerThanMs: 60_000 }, { runningVms: ['web-1'] }, now).delete).toHaveLength(1);
  });

  it('with both rules an image goes only when both let it go', () => {
    const images = [img(1), img(2, { at: ago(1000) }), img(3, { at: ago(500) })];
    const plan = planRetention(images, { keepLast: 1, keepYoungerThanMs: 60_000 }, { runningVms: ['web-1'] }, now);
    expect(plan.delete.map((d) => d.jobId)).toEqual(['s-001']);
  });

  it('an image a queued restore needs is kept, by absolute path, host key or bare name', () => {
    const images = [1, 2, 3, 4].map((n) => img(n));
    for (const needed of ['/img/web-1-1.vmsave', imageKey('host-a', '/img/web-1-1.vmsave'), 'web-1-1.vmsave']) {
      const plan = planRetention(images, { keepLast: 1 }, { runningVms: ['web-1'], neededImages: [needed] }, now);
      expect(plan.delete.map((d) => d.jobId)).not.toContain('s-001');
      expect(plan.keep.find((k) => k.jobId === 's-001')?.reason).toMatch(/restore needs it/);
    }
  });

  it('overrides: per VM first, then per host', () => {
    const images = [1, 2, 3].map((n) => img(n)).concat([1, 2, 3].map((n) => img(n + 10, { vm: 'db-1', host: 'host-b', jobId: `d-${n}` })));
    const plan = planRetention(images, { keepLast: 3, perVm: { 'web-1': { keepLast: 1 } }, perHost: { 'host-b': { keepLast: 2 } } }, { runningVms: ['web-1', 'db-1'] }, now);
    expect(plan.delete.map((d) => d.jobId).sort()).toEqual(['d-1', 's-001', 's-002']);
  });

  it('rejected images count behind the verified ones newer than them', () => {
    const images = [img(1, { status: 'rejected' }), img(2), img(3), img(4, { status: 'failed-partial' })];
    const plan = planRetention(images, { keepLast: 2 }, { runningVms: ['web-1'] }, now);
    expect(plan.delete.map((d) => d.jobId)).toEqual(['s-001']);
  });
});

describe('imagesOf / neededImagesOf (from folded jobs)', () => {
  const at = (s: number) => ({ source: 'scheduler', at: new Date(now.getTime() + s * 1000) });
  const save = (jobId: string): JobEvent[] => [
    makeEvent(
      'SaveRequested',
      jobId,
      { request: { schemaVersion: 1, requestId: `r-${jobId}`, vm: 'web-1', format: 'sparse', channels: 1, directIo: false, after: 'running', priority: 'normal' } } as never,
      at(0),
    ),
    makeEvent('SaveScheduled', jobId, { host: 'host-a', attempt: 1, fencingToken: 1, deadlineAt: now.toISOString() }, at(1)),
    makeEvent(
      'SaveStarted',
      jobId,
      { host: 'host-a', attempt: 1, fencingToken: 1, imagePath: `/img/${jobId}.vmsave`, format: 'sparse', channels: 1, directIo: false, wasRunning: true, ramBytes: 1 },
      { ...at(2), source: 'executor@host-a' },
    ),
    makeEvent(
      'SaveCompleted',
      jobId,
      {
        host: 'host-a',
        attempt: 1,
        fencingToken: 1,
        imagePath: `/img/${jobId}.vmsave`,
        format: 'sparse',
        bytes: 42,
        blocks: 1,
        durationMs: 1,
        throughputBytesPerSec: 1,
        vmState: 'running',
        qemu: {},
      },
      { ...at(3), source: 'executor@host-a' },
    ),
    makeEvent('ImageVerified', jobId, { imagePath: `/img/${jobId}.vmsave`, host: 'host-a', checks: [] }, { ...at(4), source: 'verifier' }),
  ];

  it('lists verified saves, drops deleted ones, and the deletion is recorded on the job', () => {
    const history = save('s-a');
    const s = fold(history);
    expect(imagesOf([s])).toEqual([expect.objectContaining({ jobId: 's-a', imagePath: '/img/s-a.vmsave', status: 'verified', bytes: 42 })]);
    const d = decide({ type: 'RecordImageDeleted', imagePath: '/img/s-a.vmsave', host: 'host-a', rule: 'keep-last', bytes: 42 }, s, { source: 'executor@host-a', now });
    expect(d.ok).toBe(true);
    const after = fold(d.ok ? d.events : [], s);
    expect(after.status).toBe('verified');
    expect(after.imageDeleted).toMatchObject({ rule: 'keep-last', bytes: 42, host: 'host-a' });
    expect(imagesOf([after])).toEqual([]);
    // A second deletion is a duplicate; another path is refused naming the field.
    expect(decide({ type: 'RecordImageDeleted', imagePath: '/img/s-a.vmsave', host: 'host-a', rule: 'keep-last', bytes: 42 }, after, { source: 'x', now })).toMatchObject({
      ok: true,
      events: [],
      duplicate: true,
    });
    const wrong = decide({ type: 'RecordImageDeleted', imagePath: '/img/other', host: 'host-a', rule: 'keep-last', bytes: 0 }, s, { source: 'x', now });
    expect(wrong).toMatchObject({ ok: false, rule: 'image-mismatch' });
  });

  it('refuses deleting the image of a save still running', () => {
    const s = fold(save('s-b').slice(0, 3));
    expect(decide({ type: 'RecordImageDeleted', imagePath: '/img/s-b.vmsave', host: 'host-a', rule: 'max-age', bytes: 0 }, s, { source: 'x', now })).toMatchObject({
      ok: false,
      rule: 'illegal-transition',
    });
  });

  it('a queued restore needs its image', () => {
    const r = fold([
      makeEvent(
        'RestoreRequested',
        'r-1',
        { request: { schemaVersion: 1, requestId: 'q', image: 'x.vmsave', host: 'host-a', after: 'as-saved', priority: 'normal' } } as never,
        at(0),
      ),
    ]);
    expect(neededImagesOf([r])).toEqual(['x.vmsave', imageKey('host-a', 'x.vmsave')]);
  });
});

describe('adopted images (ImageAdopted)', () => {
  const data = {
    host: 'host-a',
    imagePath: '/img/by-hand.vmsave',
    vm: 'web-1',
    format: 'sparse' as const,
    bytes: 4096,
    fingerprint: { ino: '7', size: 4096, mtimeNs: '1', ctimeNs: '1' },
  };
  const completeData = {
    host: 'host-a',
    attempt: 1,
    fencingToken: 0,
    imagePath: '/img/by-hand.vmsave',
    format: 'sparse' as const,
    bytes: 4096,
    blocks: 8,
    durationMs: 0,
    throughputBytesPerSec: 0,
    vmState: 'quit' as const,
    qemu: {},
  };
  it('a new save job at attempt 1, token 0, that CompleteSave completes; once verified it is an image retention plans; adopting again is a duplicate', () => {
    const meta = { source: 'executor@host-a', now };
    const a = decide({ type: 'AdoptImage', jobId: 'a-1', data }, fold([]), meta);
    expect(a).toMatchObject({ ok: true, events: [{ type: 'ImageAdopted', jobId: 'a-1', eventId: 'a-1.ImageAdopted' }] });
    const events: JobEvent[] = a.ok ? [...a.events] : [];
    const running = fold(events);
    expect(running).toMatchObject({ kind: 'save', status: 'running', attempt: 1, fencingToken: 0, vm: 'web-1', host: 'host-a', imagePath: '/img/by-hand.vmsave' });
    expect(decide({ type: 'AdoptImage', jobId: 'a-1', data }, running, meta)).toEqual({ ok: true, events: [], duplicate: true });
    const c = decide({ type: 'CompleteSave', data: completeData }, running, meta);
    expect(c.ok).toBe(true);
    if (c.ok) events.push(...c.events);
    events.push(makeEvent('ImageVerified', 'a-1', { imagePath: '/img/by-hand.vmsave', host: 'host-a', checks: [] }, { source: 'verifier', at: now }));
    const verified = fold(events);
    expect(verified.status).toBe('verified');
    expect(imagesOf([verified])).toEqual([expect.objectContaining({ jobId: 'a-1', vm: 'web-1', host: 'host-a', imagePath: '/img/by-hand.vmsave', status: 'verified' })]);
  });

  it('is never retried: a retryable failure of its one attempt ends it', () => {
    const a = decide({ type: 'AdoptImage', jobId: 'a-3', data }, fold([]), { source: 'x', now });
    const failed = fold([
      ...(a.ok ? a.events : []),
      makeEvent(
        'SaveFailed',
        'a-3',
        { attempt: 1, stage: 'migrate', reason: 'no heartbeat', code: 'executor-lost', retryable: true, host: 'host-a', fencingToken: 0, vmResumed: false },
        { source: 'scheduler', at: now },
      ),
    ]);
    const r = decideRetry({ type: 'Retry', delayMs: 10, maxAttempts: 3 }, failed, { source: 'scheduler', now });
    expect(r).toMatchObject({ ok: true, events: [{ type: 'SaveFailed', data: { retryable: false, reason: expect.stringMatching(/adopted/) } }] });
  });

  it('refuses data that breaks its schema, naming the field', () => {
    expect(() => decide({ type: 'AdoptImage', jobId: 'a-2', data: { ...data, vm: 'bad name' } }, fold([]), { source: 'x', now })).toThrow(/vm/);
  });
});

describe('per-VM retention (VmDefinition.retention)', () => {
  it("a VM's own keep-last overrides its host's policy for its images only", () => {
    const images = [1, 2, 3, 4, 5].flatMap((n) => [img(n), img(n, { jobId: `o-${n}`, vm: 'db-1', imagePath: `/img/db-1-${n}.vmsave` })]);
    const policy = withVmRules({ perHost: { 'host-a': { keepLast: 4 } } }, [{ name: 'web-1', retention: { keepLast: 1 } }, { name: 'db-1' }]);
    const plan = planRetention(images, policy, { runningVms: ['web-1', 'db-1'] }, now);
    expect(
      plan.delete
        .filter((d) => d.vm === 'web-1')
        .map((d) => d.jobId)
        .sort(),
    ).toEqual(['s-001', 's-002', 's-003', 's-004']);
    expect(plan.delete.filter((d) => d.vm === 'db-1').map((d) => d.jobId)).toEqual(['o-1']);
  });

  it('maxAgeMs becomes the rule keepYoungerThanMs; a VM without retention keeps the policy unchanged', () => {
    const base = { keepLast: 3 };
    expect(withVmRules(base, [{ name: 'x' }])).toBe(base);
    const p = withVmRules(base, [{ name: 'x', retention: { maxAgeMs: 7 * 86_400_000 } }]);
    expect(ruleFor(p, 'x', 'h')).toEqual({ keepYoungerThanMs: 7 * 86_400_000 });
    expect(ruleFor(p, 'y', 'h')).toEqual({ keepLast: 3, keepYoungerThanMs: undefined });
  });
});

describe('planRetention invariants (property)', () => {
  const arbImage = fc.record({
    n: fc.integer({ min: 0, max: 40 }),
    vm: fc.constantFrom('a', 'b', 'c'),
    host: fc.constantFrom('h1', 'h2'),
    status: fc.constantFrom<KnownImage['status']>('verified', 'verified', 'rejected', 'failed-partial'),
    ageMs: fc.integer({ min: 0, max: 30 * 86_400_000 }),
  });
  const arbRule = fc.record({
    keepLast: fc.option(fc.integer({ min: 1, max: 5 }), { nil: undefined }),
    keepYoungerThanMs: fc.option(fc.integer({ min: 0, max: 10 * 86_400_000 }), { nil: undefined }),
  });
  const arbCase = fc.record({
    images: fc.uniqueArray(arbImage, { selector: (i) => i.n, maxLength: 25 }),
    rule: arbRule,
    perVm: fc.option(fc.record({ a: arbRule }), { nil: undefined }),
    running: fc.subarray(['a', 'b', 'c']),
    neededIdx: fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 5 }),
  });

  it('never deletes the only verified image of a VM that is not running, nor an image a queued job needs', () => {
    fc.assert(
      fc.property(arbCase, ({ images, rule, perVm, running, neededIdx }) => {
        const known: KnownImage[] = images.map((i) => ({ jobId: `j-${i.n}`, vm: i.vm, host: i.host, imagePath: `/img/${i.n}.vmsave`, status: i.status, at: ago(i.ageMs) }));
        const needed = neededIdx.map((n) => `/img/${n}.vmsave`);
        const plan = planRetention(known, { ...rule, perVm }, { runningVms: running, neededImages: needed }, now);
        // Every image is in exactly one list.
        expect(plan.delete.length + plan.keep.length).toBe(known.length);
        const deleted = new Set(plan.delete.map((d) => d.jobId));
        for (const d of plan.delete) expect(needed).not.toContain(d.imagePath);
        for (const vm of ['a', 'b', 'c']) {
          if (running.includes(vm)) continue;
          const verified = known.filter((i) => i.vm === vm && i.status === 'verified');
          if (verified.length > 0) expect(verified.some((i) => !deleted.has(i.jobId))).toBe(true);
        }
      }),
      { numRuns: 500 },
    );
  });

  it("with VM definitions' retention, every image of a VM with one is planned by that VM's rule alone", () => {
    const arbVmRet = fc.record({
      keepLast: fc.option(fc.integer({ min: 1, max: 5 }), { nil: undefined }),
      maxAgeMs: fc.option(fc.integer({ min: 0, max: 10 * 86_400_000 }), { nil: undefined }),
    });
    fc.assert(
      fc.property(arbCase, fc.option(arbVmRet, { nil: undefined }), ({ images, rule, running }, bRet) => {
        const known: KnownImage[] = images.map((i) => ({ jobId: `j-${i.n}`, vm: i.vm, host: i.host, imagePath: `/img/${i.n}.vmsave`, status: i.status, at: ago(i.ageMs) }));
        const withVm = planRetention(known, withVmRules({ ...rule, perHost: { h2: rule } }, [{ name: 'b', retention: bRet }]), { runningVms: running }, now);
        const bRule = bRet && (bRet.keepLast !== undefined || bRet.maxAgeMs !== undefined) ? { keepLast: bRet.keepLast, keepYoungerThanMs: bRet.maxAgeMs } : rule;
        // The same plan for b's images as a policy whose default is b's own rule, whatever the host.
        const alone = planRetention(known, bRule, { runningVms: running }, now);
        const ids = (p: typeof withVm, vm: string) =>
          p.delete
            .filter((d) => d.vm === vm)
            .map((d) => d.jobId)
            .sort();
        expect(ids(withVm, 'b')).toEqual(ids(alone, 'b'));
        // Other VMs are planned as without it.
        const without = planRetention(known, { ...rule, perHost: { h2: rule } }, { runningVms: running }, now);
        for (const vm of ['a', 'c']) expect(ids(withVm, vm)).toEqual(ids(without, vm));
      }),
      { numRuns: 300 },
    );
  });
});
