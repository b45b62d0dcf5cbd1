import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Parser, type AsyncAPIDocumentInterface } from '@asyncapi/parser';
import { beforeAll, describe, expect, it } from 'vitest';
import { subjects } from '@vmsave/contracts';
import { ASYNCAPI_PATH, REPO, newAjv } from '../src/index.ts';

let doc: AsyncAPIDocumentInterface;
let raw: string;

beforeAll(async () => {
  raw = await readFile(path.join(REPO, ASYNCAPI_PATH), 'utf8');
  const { document, diagnostics } = await new Parser().parse(raw);
  // Severity 0 = error, 1 = warning; 2/3 are information and hints (e.g. "3.1.0 exists").
  const serious = diagnostics.filter((d) => d.severity <= 1).map((d) => `${d.code} at ${d.path.join('.')}: ${d.message}`);
  expect(serious).toEqual([]);
  expect(document).toBeDefined();
  doc = document!;
}, 60_000);

/** Every subject the contracts spell, with sample tokens for the builders. */
function contractSubjects(): { key: string; subject: string }[] {
  const out: { key: string; subject: string }[] = [];
  const visit = (prefix: string, o: Record<string, unknown>) => {
    for (const [k, v] of Object.entries(o)) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (typeof v === 'string') out.push({ key, subject: v });
      else if (typeof v === 'function') out.push({ key, subject: k === 'partitioned' ? subjects.cmd.partitioned('save', 7) : (v as (...a: string[]) => string)('tok1', 'Tok2') });
      else if (v && typeof v === 'object') visit(key, v as Record<string, unknown>);
    }
  };
  visit('', subjects as unknown as Record<string, unknown>);
  return out;
}

/** Does a channel address (with `{param}`s) cover a subject (which may hold `*` or a trailing `>`)? */
function covers(address: string, subject: string): boolean {
  const a = address.split('.');
  const s = subject.split('.');
  if (s.at(-1) === '>') return s.length - 1 < a.length && s.slice(0, -1).every((t, i) => (t === '*' ? /^\{\w+\}$/.test(a[i]!) : t === a[i] || /^\{\w+\}$/.test(a[i]!)));
  return a.length === s.length && a.every((t, i) => (/^\{\w+\}$/.test(t) ? /^[^.*>]+$/.test(s[i]!) || s[i] === '*' : t === s[i]));
}

describe('docs/asyncapi.yaml', () => {
  it('is a valid AsyncAPI 3 document (the official parser)', () => {
    expect(doc.version()).toMatch(/^3\./);
    expect(raw.startsWith('# GENERATED')).toBe(true);
  });

  it('has a channel for every subject the contracts package spells', () => {
    const addresses = doc
      .channels()
      .all()
      .map((c) => c.address())
      .filter((a): a is string => !!a);
    for (const { key, subject } of contractSubjects()) {
      expect(
        addresses.some((a) => covers(a, subject)),
        `subjects.${key} = ${subject}`,
      ).toBe(true);
    }
  });

  it('parameterises <jobId>, <type>, <host>, <service> and <partition>', () => {
    const params = new Set(
      doc
        .channels()
        .all()
        .flatMap((c) =>
          c
            .parameters()
            .all()
            .map((p) => p.id()),
        ),
    );
    expect([...params].sort()).toEqual(['host', 'jobId', 'partition', 'service', 'type']);
    const type = doc.channels().get('jobEvents')!.parameters().get('type')!;
    expect(type.schema()?.enum()).toContain('ImageVerified');
  });

  it('says who sends what: vmsave receives commands and sends events, progress and host announcements', () => {
    const action = (id: string) => doc.operations().get(id)?.action();
    expect(action('receiveSaveRequest')).toBe('receive');
    expect(action('receiveRestoreRequest')).toBe('receive');
    expect(action('receiveCancelRequest')).toBe('receive');
    expect(action('sendJobEvent')).toBe('send');
    expect(action('sendProgress')).toBe('send');
    expect(action('sendHostAnnouncement')).toBe('send');
  });

  it('answers a command on the subject in its Vmsave-Reply-To header, and dedupes by Nats-Msg-Id', () => {
    const op = doc.operations().get('receiveSaveRequest')!;
    const reply = op.reply()!;
    expect(reply.address()?.location()).toBe('$message.header#/Vmsave-Reply-To');
    expect(
      reply
        .messages()
        .all()
        .map((m) => m.name()),
    ).toEqual(['AdmissionReply']);
    for (const name of ['SaveRequest', 'RestoreRequest', 'CancelRequest']) {
      const headers = doc.components().messages().get(name)!.headers()!.properties()!;
      expect(Object.keys(headers).sort(), name).toEqual(['Nats-Msg-Id', 'Vmsave-Reply-To']);
    }
    expect(Object.keys(doc.components().messages().get('ImageVerified')!.headers()!.properties()!)).toEqual(['Nats-Msg-Id']);
  });

  it('has an example for every message, and each validates against the message payload schema', () => {
    const ajv = newAjv();
    const messages = doc.components().messages().all();
    expect(messages.length).toBeGreaterThanOrEqual(31);
    for (const m of messages) {
      const examples = m.examples().all();
      expect(examples.length, m.name()).toBeGreaterThan(0);
      const { $schema: _s, ...schema } = m.payload()!.json() as Record<string, unknown>;
      const validate = ajv.compile(JSON.parse(JSON.stringify(schema, (k, v) => (k.startsWith('x-parser-') ? undefined : v))));
      for (const e of examples) expect(validate(e.payload()), `${m.name()}/${e.name()}: ${ajv.errorsText(validate.errors)}`).toBe(true);
    }
  });
});
