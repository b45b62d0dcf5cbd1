import { describe, expect, it } from 'vitest';
import { isTransient, retryTransient } from './retry.ts';

describe('transient NATS failures', () => {
  it.each(['jetstream is not enabled', "no responders: 'vmsave.evt.x.SaveFailed'", 'TIMEOUT', 'no suitable peers for placement'])('%s is transient', (m) =>
    expect(isTransient(new Error(m))).toBe(true),
  );
  it('looks through the cause chain', () => {
    expect(isTransient(new Error('publish failed', { cause: new Error('jetstream is not enabled') }))).toBe(true);
  });
  it('a validation error is not transient', () => {
    expect(isTransient(new Error('maximum payload exceeded'))).toBe(false);
  });
  it('retries until the call succeeds, and gives up on a permanent error at once', async () => {
    let n = 0;
    expect(
      await retryTransient(async () => {
        if (++n < 3) throw new Error('TIMEOUT');
        return n;
      }),
    ).toBe(3);
    let m = 0;
    await expect(
      retryTransient(async () => {
        m++;
        throw new Error('bad request');
      }),
    ).rejects.toThrow('bad request');
    expect(m).toBe(1);
  });
});
