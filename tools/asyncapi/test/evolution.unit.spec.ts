import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { JobEvent, jobEventTypes, upcast, type JobEventType } from '@vmsave/contracts';
import { REPO, SCHEMAS_DIR, examples, newAjv, walkSchema, type JsonSchema } from '../src/index.ts';

/*
 * The schema-evolution rule, checked for every event type against the *published* JSON Schemas
 * (docs/schemas, what a stranger validates with) and against vmsave's own zod reader:
 * within one schemaVersion, fields are only added, as optional ones, and readers ignore fields
 * they do not know. So
 *   forward:  a newer writer's event (one optional field added anywhere) passes today's reader;
 *   backward: an older writer's event (one of today's optional fields absent) passes today's
 *             reader, and today's event passes a newer reader (today's schema plus a field).
 */

const load = async (name: string) => JSON.parse(await readFile(path.join(REPO, SCHEMAS_DIR, `${name}.json`), 'utf8')) as JsonSchema;
const clone = <T>(v: T): T => structuredClone(v);
type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** JSON-pointer-ish paths of every object inside a payload (the root is []). */
function objectPaths(v: unknown, at: (string | number)[] = []): (string | number)[][] {
  if (Array.isArray(v)) return v.flatMap((x, i) => objectPaths(x, [...at, i]));
  if (!isObj(v)) return [];
  return [at, ...Object.entries(v).flatMap(([k, x]) => objectPaths(x, [...at, k]))];
}
const get = (v: unknown, p: (string | number)[]) => p.reduce<unknown>((o, k) => (o as Obj)[k as string], v);

/** Paths of today's optional properties present in an example, found through the schema. */
function optionalPaths(schema: JsonSchema, value: unknown, at: (string | number)[] = []): (string | number)[][] {
  if (Array.isArray(value) && isObj(schema.items)) return value.flatMap((x, i) => optionalPaths(schema.items as JsonSchema, x, [...at, i]));
  if (!isObj(value) || !isObj(schema.properties)) return [];
  const required = new Set((schema.required as string[] | undefined) ?? []);
  return Object.entries(schema.properties as Record<string, JsonSchema>).flatMap(([k, sub]) =>
    k in value ? [...(required.has(k) ? [] : [[...at, k]]), ...optionalPaths(sub, value[k], [...at, k])] : [],
  );
}

/** The sub-schema at a payload path (through properties and items). */
function schemaAt(schema: JsonSchema, p: (string | number)[]): JsonSchema {
  return p.reduce<JsonSchema>((s, k) => (typeof k === 'number' ? (s.items as JsonSchema) : (s.properties as Record<string, JsonSchema>)[k]!), schema);
}

const ajv = newAjv();
const cases = jobEventTypes.map((type) => ({ type, example: examples.eventExamples[type as JobEventType] as Obj }));

describe('schema evolution, every event type, through the published JSON Schemas', () => {
  it('no published schema closes an object (additionalProperties: false), so readers ignore unknown fields', async () => {
    const files = (await readdir(path.join(REPO, SCHEMAS_DIR))).filter((f) => f.endsWith('.json') && f !== 'index.json');
    expect(files.length).toBeGreaterThanOrEqual(32);
    for (const f of files) {
      for (const { pointer, schema } of walkSchema(await load(f.replace(/\.json$/, '')))) {
        expect(schema.additionalProperties, `${f}#${pointer}`).not.toBe(false);
        expect(schema.unevaluatedProperties, `${f}#${pointer}`).not.toBe(false);
      }
    }
  });

  it('fields with a default are optional for a publisher (input mode)', async () => {
    const save = await load('SaveRequest');
    expect(save.required).toEqual(['requestId', 'vm']);
    const event = await load('SaveStarted');
    expect(event.required).not.toContain('schemaVersion');
  });

  it.each(cases)('$type: the example carries every optional field of data, so the checks below bite', async ({ type, example }) => {
    const schema = await load(type);
    const data = schemaAt(schema, ['data']);
    expect(Object.keys(example.data as Obj).sort()).toEqual(Object.keys(data.properties as Obj).sort());
  });

  it.each(cases)("$type: forward — an event with one optional field added anywhere passes today's readers", async ({ type, example }) => {
    const schema = await load(type);
    const validate = ajv.compile(schema);
    const validateAny = ajv.compile(await load('JobEvent'));
    const paths = objectPaths(example);
    expect(paths.length).toBeGreaterThanOrEqual(2);
    for (const p of paths) {
      const newer = clone(example);
      (get(newer, p) as Obj).addedInALaterVersion = { any: ['shape', 1, true] };
      const where = `${type} + field at /${p.join('/')}`;
      expect(validate(newer), `${where}: ${ajv.errorsText(validate.errors)}`).toBe(true);
      expect(validateAny(newer), `${where} (JobEvent.json): ${ajv.errorsText(validateAny.errors)}`).toBe(true);
      const parsed = JobEvent.safeParse(upcast(newer));
      expect(parsed.success, `${where} (zod): ${parsed.error?.message}`).toBe(true);
      // zod strips unknown fields, except in objects declared open (QEMU's migration stats pass through).
      const open =
        schemaAt(
          schema,
          p.map((k) => (typeof k === 'number' ? 0 : k)),
        ).additionalProperties !== undefined;
      expect(JSON.stringify(parsed.data).includes('addedInALaterVersion'), where).toBe(open);
    }
  });

  it.each(cases)("$type: backward — an event without one of today's optional fields passes today's readers", async ({ type, example }) => {
    const schema = await load(type);
    const validate = ajv.compile(schema);
    for (const p of optionalPaths(schema, example)) {
      const older = clone(example);
      delete (get(older, p.slice(0, -1)) as Obj)[p.at(-1) as string];
      const where = `${type} - /${p.join('/')}`;
      expect(validate(older), `${where}: ${ajv.errorsText(validate.errors)}`).toBe(true);
      expect(JobEvent.safeParse(upcast(older)).success, `${where} (zod)`).toBe(true);
    }
  });

  it.each(cases)("$type: backward — today's event passes a newer reader whose schema has one more optional field", async ({ type, example }) => {
    const schema = await load(type);
    for (const p of objectPaths(example)) {
      const newer = clone(schema);
      const at = schemaAt(
        newer,
        p.map((k) => (typeof k === 'number' ? 0 : k)),
      );
      if (!isObj(at.properties)) continue;
      (at.properties as Obj).addedInALaterVersion = { type: 'string' };
      const validate = ajv.compile(newer);
      expect(validate(example), `${type} reader + field at /${p.join('/')}: ${ajv.errorsText(validate.errors)}`).toBe(true);
    }
  });

  it("a breaking change is a new schemaVersion, which today's schema refuses (it needs an upcaster)", async () => {
    const validate = ajv.compile(await load('SaveStarted'));
    expect(validate({ ...examples.eventExamples.SaveStarted, schemaVersion: 2 })).toBe(false);
    expect(validate({ ...examples.eventExamples.SaveStarted, schemaVersion: 1 })).toBe(true);
  });
});
