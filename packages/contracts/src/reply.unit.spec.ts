import { describe, expect, it } from 'vitest';
import { inboxPrefixOf, isReplySubject, REPLY_SUBJECT_MAX, subjects } from './index.ts';

describe('isReplySubject', () => {
  it('accepts inboxes as NATS clients make them', () => {
    expect(isReplySubject('_INBOX.Qz7vLr0VbIgXgD3mPq1x2A')).toBe(true);
    expect(isReplySubject('_INBOX.my-answers')).toBe(true);
    expect(isReplySubject('_INBOX.Qz7vLr0VbIgXgD3mPq1x2A.42')).toBe(true);
    expect(isReplySubject('_INBOX.client.a_b-c.1')).toBe(true);
    expect(isReplySubject(`_INBOX.${'a'.repeat(REPLY_SUBJECT_MAX - '_INBOX.'.length)}`)).toBe(true);
  });

  it("accepts the private inbox prefixes of vmsave's users (`_INBOX.<user>.<nuid>`), executor hosts with : included", () => {
    expect(inboxPrefixOf('client')).toBe('_INBOX.client');
    for (const user of ['client', 'scheduler', 'dashboard', 'executor-h1', 'executor-rack-2:b', 'billing']) {
      expect(isReplySubject(`${inboxPrefixOf(user)}.Qz7vLr0VbIgXgD3mPq1x2A`), user).toBe(true);
    }
    expect(isReplySubject(inboxPrefixOf('client'))).toBe(true);
    expect(() => inboxPrefixOf('a.b')).toThrow(/NATS user "a.b" cannot be used in a subject/);
    expect(() => inboxPrefixOf('>')).toThrow(/NATS user/);
  });

  it.each([
    subjects.evt('s-0123456789abcdef0123', 'ImageVerified'),
    subjects.work('hv-1'),
    subjects.dlq('executor'),
    subjects.control('hv-1'),
    subjects.cmd.save,
    '>',
    '*',
    '_INBOX.>',
    '_INBOX.*',
    '_INBOX.',
    '_INBOX',
    '_INBOX..x',
    '_INBOX.x.',
    '_INBOX.a.*.b',
    '_INBOX.a b',
    '_INBOX.a\nb',
    '_inbox.abc',
    ' _INBOX.abc',
    '_INBOX.abc ',
    '',
    `_INBOX.${'a'.repeat(REPLY_SUBJECT_MAX - '_INBOX.'.length + 1)}`,
  ])('refuses %j', (s) => {
    expect(isReplySubject(s)).toBe(false);
  });
});
