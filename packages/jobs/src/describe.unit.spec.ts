import { describe, expect, it } from 'vitest';
import { makeEvent, SaveRequest } from '@vmsave/contracts';
import { describeEvent, describeState, jobJson } from './describe.ts';
import { fold } from './state.ts';

const at = { source: 'test', at: new Date('2026-01-01T00:00:00Z') };
const GiB = 2 ** 30;
const request = SaveRequest.parse({ requestId: 'r1', vm: 'web-1', format: 'sparse', channels: 4, directIo: true });

describe('describeEvent', () => {
  it('given each step of a save, then one line that names what matters', () => {
    expect(describeEvent(makeEvent('SaveRequested', 's-1', { request }, at))).toBe('save web-1 format=sparse channels=4 direct-io after=running priority=normal');
    expect(
      describeEvent(
        makeEvent(
          'SaveStarted',
          's-1',
          { host: 'h', attempt: 1, fencingToken: 1, imagePath: '/i/a', format: 'sparse', channels: 4, directIo: true, wasRunning: true, ramBytes: 4 * GiB },
          at,
        ),
      ),
    ).toBe('sparse, 4 channel(s), direct IO, to /i/a (4.00 GiB RAM, was running)');
    expect(
      describeEvent(
        makeEvent(
          'SaveCompleted',
          's-1',
          {
            host: 'h',
            attempt: 1,
            fencingToken: 1,
            imagePath: '/i/a',
            format: 'sparse',
            bytes: 4 * GiB,
            blocks: (1.5 * GiB) / 512,
            durationMs: 2600,
            throughputBytesPerSec: 1.6 * GiB,
            vmState: 'running',
            qemu: {},
          },
          at,
        ),
      ),
    ).toBe('4.00 GiB (1.50 GiB allocated) in 2.60 s, 1.60 GiB/s; VM running');
    expect(
      describeEvent(makeEvent('SaveFailed', 's-1', { attempt: 1, stage: 'migrate', reason: 'No space left on device', code: 'ENOSPC', retryable: false, vmResumed: true }, at)),
    ).toBe('at migrate (ENOSPC): No space left on device; VM resumed');
    expect(describeEvent(makeEvent('SaveRejected', 's-1', { rule: 'vm-exists', field: 'vm', message: 'vm: no announced host has a VM named "x"' }, at))).toBe(
      'rejected (vm-exists, vm): vm: no announced host has a VM named "x"',
    );
  });
  it('given a verdict, then the failed checks by name and the counts', () => {
    const checks = [
      { name: 'header.magic', status: 'pass' as const, detail: '' },
      { name: 'sparseness', status: 'fail' as const, detail: 'dense' },
    ];
    expect(describeEvent(makeEvent('ImageRejected', 's-1', { imagePath: '/i/a', checks }, at))).toBe('1 check(s) failed: sparseness (1 pass, 0 warn, 1 fail, 0 skip)');
    expect(describeEvent(makeEvent('ImageVerified', 's-1', { imagePath: '/i/a', checks: checks.slice(0, 1) }, at))).toBe('1 checks passed (1 pass, 0 warn, 0 fail, 0 skip)');
  });
  it('given an overdue verdict, then "verification overdue", the wait and what was done; the state line says it too', () => {
    const data = { imagePath: '/i/a', host: 'h', attempt: 1, waitedMs: 120_000 };
    expect(describeEvent(makeEvent('VerificationOverdue', 's-1', { ...data, notice: 1 }, at))).toBe(
      'verification overdue: no verdict 2m 00s after the save completed; verification asked again',
    );
    expect(describeEvent(makeEvent('VerificationOverdue', 's-1', { ...data, notice: 2 }, at))).toBe(
      'verification overdue: no verdict 2m 00s after the save completed; raised (no verifier answered)',
    );
    const s = fold([
      makeEvent('SaveRequested', 's-1', { request }, at),
      makeEvent('SaveScheduled', 's-1', { host: 'h', attempt: 1, fencingToken: 1, deadlineAt: at.at.toISOString() }, at),
      makeEvent(
        'SaveStarted',
        's-1',
        { host: 'h', attempt: 1, fencingToken: 1, imagePath: '/i/a', format: 'sparse', channels: 4, directIo: true, wasRunning: true, ramBytes: 1 },
        at,
      ),
      makeEvent(
        'SaveCompleted',
        's-1',
        {
          host: 'h',
          attempt: 1,
          fencingToken: 1,
          imagePath: '/i/a',
          format: 'sparse',
          bytes: 1,
          blocks: 1,
          durationMs: 1000,
          throughputBytesPerSec: 1,
          vmState: 'running',
          qemu: {},
        },
        at,
      ),
      makeEvent('VerificationOverdue', 's-1', { ...data, notice: 2, waitedMs: 240_000 }, at),
    ]);
    expect(describeState(s)).toContain('; verification overdue (no verdict after 4m 00s, raised: no verifier answered)');
    expect(jobJson(s).verificationOverdue).toMatchObject({ notice: 2, waitedMs: 240_000 });
  });
  it('given a restore through the quick gate, then it says so', () => {
    expect(
      describeEvent(
        makeEvent('RestoreCompleted', 'r-1', { host: 'h', attempt: 1, fencingToken: 1, imagePath: '/i/a', vm: 'web-1', durationMs: 1750, vmState: 'running', gate: 'quick' }, at),
      ),
    ).toBe('web-1 running in 1.75 s (image unchanged since verified: quick gate)');
  });
});

describe('describeState and jobJson', () => {
  it('given a rejected job, then the rule and the message; the JSON keeps stable keys', () => {
    const s = fold([makeEvent('SaveRequested', 's-1', { request }, at), makeEvent('SaveRejected', 's-1', { rule: 'vm-exists', field: 'vm', message: 'no such VM' }, at)]);
    expect(describeState(s)).toBe('save s-1 (web-1) rejected (vm-exists): no such VM');
    expect(Object.keys(jobJson(s))).toEqual([
      'jobId',
      'kind',
      'status',
      'vm',
      'host',
      'attempt',
      'format',
      'imagePath',
      'requestedAt',
      'updatedAt',
      'result',
      'lastFailure',
      'rejection',
      'checks',
      'verificationOverdue',
      'imageDeleted',
      'replicated',
      'replicationFailed',
      'fetched',
      'fetchFailed',
      'drain',
    ]);
  });
});
