import { describe, expect, it } from 'vitest';
import { inboxPrefixFor } from './connection.ts';
import { BusEnv, busOptions, parseEnv } from './env.ts';

describe('inbox prefix of a connection', () => {
  it("is `_INBOX.<user>` for a user (the only inboxes vmsave's NATS permissions let it subscribe to), nats.js's default without one", () => {
    expect(inboxPrefixFor({ user: 'client' })).toBe('_INBOX.client');
    expect(inboxPrefixFor({ user: 'executor-rack-2:b' })).toBe('_INBOX.executor-rack-2:b');
    expect(inboxPrefixFor({})).toBeUndefined();
  });

  it('NATS_INBOX_PREFIX wins, and is checked: no wildcard, no empty token', () => {
    const c = parseEnv(BusEnv, { NATS_USER: 'billing', NATS_INBOX_PREFIX: '_INBOX.billing.eu' }, 'test');
    expect(inboxPrefixFor(busOptions(c, 'x'))).toBe('_INBOX.billing.eu');
    for (const bad of ['_INBOX.>', '_INBOX.a.*', '_INBOX..a', 'vmsave.work.h1', '_INBOX.a b']) {
      expect(() => parseEnv(BusEnv, { NATS_INBOX_PREFIX: bad }, 'test'), bad).toThrow(/NATS_INBOX_PREFIX: _INBOX then dot-separated tokens/);
    }
  });

  it('a user name that is not one subject token needs NATS_INBOX_PREFIX, and the error says so', () => {
    expect(() => inboxPrefixFor({ user: 'ops.team' })).toThrow(/NATS_USER "ops.team" is not one subject token.*NATS_INBOX_PREFIX/);
    expect(inboxPrefixFor({ user: 'ops.team', inboxPrefix: '_INBOX.ops' })).toBe('_INBOX.ops');
  });
});
