import { upcast } from '@vmsave/contracts';
import type { z } from 'zod';
import { BusValidationError } from './errors.ts';

/** zod issues as `field: message` lines (the field path joined with dots, `(root)` for the whole). */
export function describeIssues(error: z.ZodError): string[] {
  return error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(root)'}: ${i.message}`);
}

const decoder = new TextDecoder('utf-8', { fatal: true });

/** Decode UTF-8 JSON and validate it; throws BusValidationError naming the field and the rule. */
export function decodeMessage<S extends z.ZodType>(schema: S, data: Uint8Array, what: string): z.infer<S> {
  let text: string;
  try {
    text = decoder.decode(data);
  } catch (cause) {
    throw new BusValidationError(`${what}: payload is not valid UTF-8`, ['(root): not UTF-8'], { cause });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw new BusValidationError(`${what}: payload is not JSON (${(cause as Error).message})`, ['(root): not JSON'], { cause });
  }
  const res = schema.safeParse(upcast(json));
  if (!res.success) {
    const issues = describeIssues(res.error);
    throw new BusValidationError(`${what}: ${issues.slice(0, 5).join('; ')}${issues.length > 5 ? ` (+${issues.length - 5} more)` : ''}`, issues);
  }
  return res.data;
}

export function encodeMessage<S extends z.ZodType>(schema: S, value: z.input<S>, what: string): { value: z.infer<S>; data: Uint8Array } {
  const res = schema.safeParse(value);
  if (!res.success) {
    const issues = describeIssues(res.error);
    throw new BusValidationError(`${what}: ${issues.join('; ')}`, issues);
  }
  return { value: res.data, data: new TextEncoder().encode(JSON.stringify(res.data)) };
}
