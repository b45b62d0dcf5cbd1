import { z } from 'zod';

/** A JSON Schema document (draft-07) as produced by `z.toJSONSchema`. */
export type JsonSchema = Record<string, unknown>;

export const JSON_SCHEMA_DRAFT = 'http://json-schema.org/draft-07/schema#';

/**
 * The JSON Schema of a zod schema, as a publisher or a reader sees it from outside.
 *
 * - `io: 'input'`: what vmsave's readers *accept*, so fields with a default are optional
 *   (a publisher may leave out `format`, `channels`, `schemaVersion`, …) and objects are left
 *   open (no `additionalProperties: false`): unknown fields are ignored, which is the
 *   schema-evolution rule. Output mode would close every object and require every default.
 * - `target: 'draft-7'`: the widest-supported draft; it is also the base of AsyncAPI 3's own
 *   schema format, so the same schema is embedded in `docs/asyncapi.yaml` unchanged.
 * - refinements (`.refine`) have no JSON Schema form and are dropped by zod; `unrepresentable:
 *   'throw'` makes anything else that cannot be expressed (transforms, dates, …) fail generation.
 */
export function jsonSchemaOf(schema: z.ZodType): JsonSchema {
  return z.toJSONSchema(schema, { io: 'input', target: 'draft-7', unrepresentable: 'throw' }) as JsonSchema;
}

/** Walk every sub-schema (objects and arrays of a JSON Schema), depth first, with its JSON pointer. */
export function* walkSchema(schema: unknown, pointer = ''): Generator<{ pointer: string; schema: JsonSchema }> {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) return;
  const s = schema as JsonSchema;
  yield { pointer, schema: s };
  for (const key of ['properties', 'patternProperties', 'definitions', '$defs'] as const) {
    const map = s[key];
    if (map && typeof map === 'object') {
      for (const [k, v] of Object.entries(map)) yield* walkSchema(v, `${pointer}/${key}/${escapePointer(k)}`);
    }
  }
  for (const key of ['items', 'additionalProperties', 'not', 'if', 'then', 'else', 'contains'] as const) {
    const sub = s[key];
    if (Array.isArray(sub)) for (const [i, v] of sub.entries()) yield* walkSchema(v, `${pointer}/${key}/${i}`);
    else yield* walkSchema(sub, `${pointer}/${key}`);
  }
  for (const key of ['oneOf', 'anyOf', 'allOf', 'prefixItems'] as const) {
    const list = s[key];
    if (Array.isArray(list)) for (const [i, v] of list.entries()) yield* walkSchema(v, `${pointer}/${key}/${i}`);
  }
}

const escapePointer = (k: string) => k.replace(/~/g, '~0').replace(/\//g, '~1');
