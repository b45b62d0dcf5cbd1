import { describe, expect, it } from 'vitest';
import { SaveRequest, makeEvent, type EventOf, type ImageFingerprint, type JobEvent, type VerificationCheck } from '@vmsave/contracts';
import { fold } from '@vmsave/jobs';
import type { VerifyResult } from '@vmsave/image';
import {
  checksOf,
  hostFilter,
  planVerification,
  preCheck,
  recordScrub,
  recordVerification,
  scrubTargets,
  sealSummaryCheck,
  trustedFingerprint,
  type PathFacts,
} from './decisions.ts';

const T0 = new Date('2026-01-01T00:00:00Z');
const J = 's-verifier-1';
const at = { source: 'test', at: T0 };
const request = SaveRequest.parse({ requestId: 'r1', vm: 'vm1' });
const started = { host: 'h1', attempt: 1, fencingToken: 3, imagePath: '/img/vm1.vmsave', format: 'sparse' as const, channels: 1, directIo: false, wasRunning: true, ramBytes: 1 };
const completedData = {
  host: 'h1',
  attempt: 1,
  fencingToken: 3,
  imagePath: '/img/vm1.vmsave',
  format: 'sparse' as const,
  bytes: 10,
  blocks: 2,
  durationMs: 5,
  throughputBytesPerSec: 1,
  vmState: 'running' as const,
  qemu: {},
};
const completed = makeEvent('SaveCompleted', J, completedData, at) as EventOf<'SaveCompleted'>;

const untilCompleted: JobEvent[] = [
  makeEvent('SaveRequested', J, { request }, at),
  makeEvent('SaveScheduled', J, { host: 'h1', attempt: 1, fencingToken: 3, deadlineAt: new Date(T0.getTime() + 60_000).toISOString() }, at),
  makeEvent('SaveStarted', J, started, at),
  completed,
];
const check = (name: string, status: VerificationCheck['status']): VerificationCheck => ({ name, status, detail: `${name} ${status}` });
const fp: ImageFingerprint = { ino: '12', size: 10, mtimeNs: '100', ctimeNs: '100' };
const same = (a: ImageFingerprint, b: ImageFingerprint) => JSON.stringify(a) === JSON.stringify(b);

describe('recordVerification: which checks make ImageVerified and which ImageRejected', () => {
  const state = fold(untilCompleted);
  const cases: Array<[string, VerificationCheck[], 'ImageVerified' | 'ImageRejected']> = [
    ['every check passes', [check('header.magic', 'pass'), check('stream.complete', 'pass')], 'ImageVerified'],
    ['warnings and skips only', [check('header.magic', 'pass'), check('sparseness', 'warn'), check('format.restorable-here', 'skip')], 'ImageVerified'],
    ['one failed check among passes', [check('header.magic', 'pass'), check('stream.complete', 'fail')], 'ImageRejected'],
    ['the image is missing', [check('image.exists', 'fail')], 'ImageRejected'],
    ['the path is outside the image directory', [check('image.location', 'fail')], 'ImageRejected'],
  ];
  for (const [when, checks, expected] of cases) {
    it(`given a completed save, when ${when}, then ${expected} with every check`, () => {
      const d = recordVerification(state, { imagePath: '/img/vm1.vmsave', host: 'h1', checks, fingerprint: fp }, T0);
      expect(d.ok).toBe(true);
      if (!d.ok) return;
      expect(d.events).toHaveLength(1);
      expect(d.events[0]).toMatchObject({ type: expected, jobId: J, source: 'verifier', data: { imagePath: '/img/vm1.vmsave', host: 'h1', checks, fingerprint: fp } });
    });
  }

  it('given a job already verified, when verified again (redelivery), then the rule is named and nothing is recorded', () => {
    const verified = fold([...untilCompleted, makeEvent('ImageVerified', J, { imagePath: '/img/vm1.vmsave', checks: [] }, at)]);
    const d = recordVerification(verified, { imagePath: '/img/vm1.vmsave', host: 'h1', checks: [check('header.magic', 'pass')] }, T0);
    expect(d).toMatchObject({ ok: false, rule: 'job-terminal' });
  });

  it('given a save still running, then it refuses with illegal-transition', () => {
    const d = recordVerification(fold(untilCompleted.slice(0, 3)), { imagePath: '/img/vm1.vmsave', host: 'h1', checks: [] }, T0);
    expect(d).toMatchObject({ ok: false, rule: 'illegal-transition' });
  });
});

describe('planVerification', () => {
  const all = hostFilter('*');
  it('verifies a completed save of a readable host', () => {
    expect(planVerification(completed, fold(untilCompleted), all)).toEqual({ verify: true });
  });
  it('skips other hosts', () => {
    expect(planVerification(completed, fold(untilCompleted), hostFilter('h2, h3'))).toMatchObject({ verify: false, reason: 'other-host' });
  });
  it('skips a job that is not waiting for verification (already verified, or replayed before its history)', () => {
    const verified = fold([...untilCompleted, makeEvent('ImageRejected', J, { imagePath: '/img/vm1.vmsave', checks: [] }, at)]);
    expect(planVerification(completed, verified, all)).toMatchObject({ verify: false, reason: 'not-waiting' });
    expect(planVerification(completed, fold([]), all)).toMatchObject({ verify: false, reason: 'not-waiting' });
  });
});

describe('hostFilter (VMSAVE_VERIFY_HOSTS)', () => {
  it('reads a list with spaces and empty entries, and * for all', () => {
    const f = hostFilter(' a, ,b ');
    expect([f('a'), f('b'), f('c')]).toEqual([true, true, false]);
    expect(hostFilter('a,*')('z')).toBe(true);
    expect(hostFilter('')('a')).toBe(false);
  });
});

describe('preCheck: the image is read only if it is a regular file inside an announced image directory', () => {
  const facts = (f: Partial<PathFacts>): PathFacts => ({
    imagePath: '/img/vm1.vmsave',
    readable: true,
    realPath: '/img/vm1.vmsave',
    regularFile: true,
    imageDirs: ['/img'],
    host: 'h1',
    ...f,
  });
  const cases: Array<[string, Partial<PathFacts>, string | undefined, RegExp?]> = [
    ['a file in the directory', {}, undefined],
    ['a file in a subdirectory', { imagePath: '/img/evac/vm1.vmsave', realPath: '/img/evac/vm1.vmsave' }, undefined],
    ['a file in the second announced directory', { imageDirs: ['/old', '/img'] }, undefined],
    ['a missing file', { readable: false, realPath: undefined, regularFile: undefined }, 'image.exists', /not readable here/],
    ['a file outside', { imagePath: '/etc/shadow', realPath: '/etc/shadow' }, 'image.location', /outside the image directory of host h1 \(\/img\); not read/],
    ['a sibling directory with the same prefix', { imagePath: '/img2/x.vmsave', realPath: '/img2/x.vmsave' }, 'image.location', /outside/],
    ['a symlink inside that points outside', { realPath: '/secret/x' }, 'image.location', /resolves to \/secret\/x\) is outside/],
    ['a dot-dot path', { imagePath: '/img/../etc/passwd', realPath: '/etc/passwd' }, 'image.location', /outside/],
    ['the directory itself', { imagePath: '/img', realPath: '/img', regularFile: false }, 'image.location', /outside/],
    ['a FIFO inside', { regularFile: false }, 'image.location', /not a regular file/],
    ['a relative path', { imagePath: 'vm1.vmsave', realPath: '/img/vm1.vmsave' }, 'image.location', /not an absolute path/],
    ['a host that announced no directory', { imageDirs: [] }, 'image.location', /announced no image directory/],
  ];
  for (const [what, f, failed, detail] of cases) {
    it(`${what}: ${failed ? `${failed} fails` : 'read'}`, () => {
      const c = preCheck(facts(f));
      if (!failed) expect(c).toBeUndefined();
      else {
        expect(c).toMatchObject({ name: failed, status: 'fail' });
        expect(c!.detail).toMatch(detail!);
      }
    });
  }
});

describe('checksOf and trustedFingerprint', () => {
  it('carries each image check as name, status and detail', () => {
    const r: VerifyResult = {
      kind: 'vmsave',
      ok: false,
      checks: [
        { name: 'header.magic', status: 'pass', detail: 'ok' },
        { name: 'stream.complete', status: 'fail', detail: 'cut' },
      ],
    };
    expect(checksOf(r)).toEqual([
      { name: 'header.magic', status: 'pass', detail: 'ok' },
      { name: 'stream.complete', status: 'fail', detail: 'cut' },
    ]);
  });
  it('vouches for a fingerprint only when the file did not change while it was read', () => {
    expect(trustedFingerprint(fp, { ...fp }, same)).toEqual(fp);
    expect(trustedFingerprint(fp, { ...fp, mtimeNs: '101' }, same)).toBeUndefined();
    expect(trustedFingerprint(undefined, fp, same)).toBeUndefined();
    expect(trustedFingerprint(fp, undefined, same)).toBeUndefined();
  });
});

describe('the seal: seal.summary, scrub targets and scrub verdicts', () => {
  const seal = { algorithm: 'crc32', chunkBytes: 4 << 20, chunks: 16, stateDigest: 'aabbccdd', ramDigest: '01020304' };
  it('seal.summary passes when the image holds the recorded seal, fails naming each differing field, and is absent when neither has one', () => {
    expect(sealSummaryCheck(seal, { ...seal })).toMatchObject({ name: 'seal.summary', status: 'pass' });
    const c = sealSummaryCheck(seal, { ...seal, ramDigest: 'ffffffff', chunks: 17 });
    expect(c).toMatchObject({ name: 'seal.summary', status: 'fail' });
    expect(c!.detail).toContain('chunks (17, recorded 16)');
    expect(c!.detail).toContain('ramDigest (ffffffff, recorded 01020304)');
    expect(sealSummaryCheck(seal, undefined)).toMatchObject({ status: 'fail', detail: expect.stringContaining('the image has none') });
    expect(sealSummaryCheck(undefined, seal)).toMatchObject({ status: 'skip' });
    expect(sealSummaryCheck(undefined, undefined)).toBeUndefined();
  });
  const verified = fold([...untilCompleted, makeEvent('ImageVerified', J, { imagePath: '/img/vm1.vmsave', host: 'h1', checks: [], seal }, at)]);
  it('scrubs only verified saves of readable hosts, with the seal their verdict recorded', () => {
    const other = { ...verified, jobId: 's-other', host: 'h2' };
    const completedOnly = fold(untilCompleted);
    expect(scrubTargets([{ state: verified, seal }, { state: other }, { state: completedOnly }], hostFilter('h1'))).toEqual([
      { jobId: J, host: 'h1', imagePath: '/img/vm1.vmsave', seal },
    ]);
  });
  it('records nothing when every check passed, ImageRejected with scrub: true when one failed', () => {
    expect(recordScrub(verified, { imagePath: '/img/vm1.vmsave', host: 'h1', checks: [check('seal.ram', 'pass')] }, T0)).toEqual({ ok: true, events: [] });
    const d = recordScrub(verified, { imagePath: '/img/vm1.vmsave', host: 'h1', checks: [check('seal.state', 'pass'), check('seal.ram', 'fail')], seal }, T0);
    expect(d.ok && d.events[0]).toMatchObject({
      type: 'ImageRejected',
      source: 'verifier',
      data: { scrub: true, seal, checks: [{ name: 'seal.state' }, { name: 'seal.ram', status: 'fail' }] },
    });
  });
});
