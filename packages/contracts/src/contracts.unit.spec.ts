import { describe, expect, it } from 'vitest';
import { JobEvent, SaveRequest, RestoreRequest, WorkItem, jobIdFor, makeEvent, parseEventSubject, subjects, upcast, jobEventTypes } from './index.ts';

describe('subjects', () => {
  it('builds event subjects that round-trip', () => {
    const s = subjects.evt('s-abc', 'SaveStarted');
    expect(s).toBe('vmsave.evt.s-abc.SaveStarted');
    expect(parseEventSubject(s)).toEqual({ jobId: 's-abc', type: 'SaveStarted' });
    expect(parseEventSubject('vmsave.cmd.save')).toBeUndefined();
  });
  it('refuses tokens that would break the subject space', () => {
    expect(() => subjects.work('a.b')).toThrow(/host "a.b" cannot be used/);
    expect(() => subjects.work('*')).toThrow();
    expect(() => subjects.evt('x>', 'T')).toThrow();
  });
});

describe('commands', () => {
  it('applies defaults to a minimal save request', () => {
    const r = SaveRequest.parse({ requestId: 'r1', vm: 'web-1' });
    expect(r).toMatchObject({ schemaVersion: 1, format: 'auto', channels: 1, directIo: false, after: 'running', priority: 'normal' });
  });
  it('names the field and the rule on bad input', () => {
    const res = SaveRequest.safeParse({ requestId: 'r1', vm: 'web 1', channels: 0 });
    expect(res.success).toBe(false);
    const issues = res.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(issues).toContain('vm: VM name: start with a letter or digit, then letters, digits, . _ - (max 63)');
    expect(issues).toContain('channels: channels: at least 1');
  });
  it("a restore's content check: state by default, full on request, anything else refused naming the field", () => {
    expect(RestoreRequest.parse({ requestId: 'r1', image: 'a.vmsave' }).verify).toBe('state');
    expect(RestoreRequest.parse({ requestId: 'r1', image: 'a.vmsave', verify: 'full' }).verify).toBe('full');
    const res = RestoreRequest.safeParse({ requestId: 'r1', image: 'a.vmsave', verify: 'ram' });
    expect(res.success).toBe(false);
    expect(res.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual(['verify: verify: state or full']);
  });
  it('refuses an image path with a newline', () => {
    const res = RestoreRequest.safeParse({ requestId: 'r1', image: 'a\nb' });
    expect(res.success).toBe(false);
    expect(res.error!.issues[0]!.path).toEqual(['image']);
  });
  it('derives stable, distinct job ids per kind and request', () => {
    expect(jobIdFor('save', 'x')).toBe(jobIdFor('save', 'x'));
    expect(jobIdFor('save', 'x')).not.toBe(jobIdFor('restore', 'x'));
    expect(jobIdFor('save', 'x')).not.toBe(jobIdFor('save', 'y'));
    expect(jobIdFor('save', 'x')).toMatch(/^s-[0-9a-f]{20}$/);
  });
});

describe('events', () => {
  const request = SaveRequest.parse({ requestId: 'r1', vm: 'web-1' });
  it('round-trips every event built with makeEvent', () => {
    const e = makeEvent('SaveRequested', 's-1', { request }, { source: 'test' });
    expect(JobEvent.parse(JSON.parse(JSON.stringify(e)))).toEqual(e);
  });
  it('lists every event type once', () => {
    expect(new Set(jobEventTypes).size).toBe(jobEventTypes.length);
    expect(jobEventTypes).toContain('ImageVerified');
    expect(jobEventTypes).toContain('RestoreFailed');
  });
  it('forward compatibility: a newer writer with an extra optional field parses in this reader', () => {
    const e = { ...makeEvent('SaveRejected', 's-1', { rule: 'vm-exists', message: 'no such VM' }, { source: 'test' }), extra: 1 };
    (e.data as Record<string, unknown>).hint = 'added in a later minor version';
    const parsed = JobEvent.parse(upcast(e));
    expect(parsed.type).toBe('SaveRejected');
    expect('hint' in parsed.data).toBe(false);
  });
  it('backward compatibility: an event without schemaVersion (older writer) gets version 1', () => {
    const { schemaVersion: _v, ...old } = makeEvent('SaveRejected', 's-1', { rule: 'r', message: 'm' }, { source: 't' });
    expect(JobEvent.parse(old).schemaVersion).toBe(1);
  });
  it('refuses an event whose type is unknown', () => {
    expect(JobEvent.safeParse({ ...makeEvent('SaveRejected', 's-1', { rule: 'r', message: 'm' }, { source: 't' }), type: 'Nope' }).success).toBe(false);
  });
  it('work items carry a resolved format', () => {
    const w = { kind: 'save', jobId: 's-1', attempt: 1, fencingToken: 3, host: 'h1', deadlineAt: new Date().toISOString(), format: 'auto', request };
    expect(WorkItem.safeParse(w).success).toBe(false);
    expect(WorkItem.safeParse({ ...w, format: 'sparse' }).success).toBe(true);
  });
});
