import { describe, expect, it } from 'vitest';
import { OpCancelled, OpError, classify } from './errors.ts';

describe('classify', () => {
  it('a system error code anywhere in the cause chain wins, and only EAGAIN/EBUSY are retryable', () => {
    const enospc = Object.assign(new Error('write failed'), { code: 'ENOSPC' });
    expect(classify(new Error('outer', { cause: enospc }))).toEqual({ code: 'ENOSPC', retryable: false, message: 'outer' });
    expect(classify(Object.assign(new Error('busy'), { code: 'EBUSY' }))).toMatchObject({ code: 'EBUSY', retryable: true });
  });

  it("a system error known only from its message (QEMU's error text)", () => {
    expect(classify(new Error('Unable to write to file: No space left on device')).code).toBe('ENOSPC');
    expect(classify(new Error('Could not open: Permission denied')).code).toBe('EACCES');
  });

  it('otherwise the error\'s own code and retryability, or "error"', () => {
    expect(classify(Object.assign(new Error('x'), { code: 'qmp-timeout', retryable: true }))).toEqual({ code: 'qmp-timeout', retryable: true, message: 'x' });
    expect(classify('plain')).toEqual({ code: 'error', retryable: false, message: 'plain' });
  });
});

describe('OpError', () => {
  it('keeps stage, code, cause and what happened to the VM and image; OpCancelled is one', () => {
    const cause = new Error('qemu');
    const e = new OpCancelled('save cancelled', 'migrate', 'cancelled', false, { cause, vmResumed: true, imageKept: '/i' });
    expect(e).toBeInstanceOf(OpError);
    expect(e).toMatchObject({ name: 'OpCancelled', stage: 'migrate', code: 'cancelled', retryable: false, vmResumed: true, imageKept: '/i', cause });
  });
});
