// Validate vmsave bus messages with the published JSON Schemas (docs/schemas/*.json) and ajv.
// Stranger code: no vmsave package, only the schema files (copy docs/schemas next to your code
// and point VMSAVE_SCHEMAS_DIR at them).
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';

/** Where the schemas are in the vmsave repository, relative to this file. */
export const DEFAULT_SCHEMAS_DIR = new URL('../docs/schemas/', import.meta.url);

function dirUrl(dir) {
  if (dir instanceof URL) return dir;
  return pathToFileURL(dir.endsWith('/') ? dir : `${dir}/`);
}

/**
 * Load every schema in `dir` (default: $VMSAVE_SCHEMAS_DIR, else the repository's docs/schemas).
 * `check(name, value)` returns the value or throws with ajv's explanation; `errors(name, value)`
 * returns that explanation, or undefined when the value is valid.
 */
export function loadSchemas(dir = process.env.VMSAVE_SCHEMAS_DIR || DEFAULT_SCHEMAS_DIR) {
  const base = dirUrl(dir);
  const ajv = new Ajv({ allErrors: true });
  addFormats(ajv);
  const index = JSON.parse(readFileSync(new URL('index.json', base), 'utf8'));
  const validators = new Map();
  for (const file of readdirSync(base).filter((f) => f.endsWith('.json') && f !== 'index.json')) {
    validators.set(file.slice(0, -'.json'.length), ajv.compile(JSON.parse(readFileSync(new URL(file, base), 'utf8'))));
  }
  const errors = (name, value) => {
    const v = validators.get(name);
    if (!v) throw new Error(`no schema named ${name} in ${base.pathname}`);
    return v(value) ? undefined : ajv.errorsText(v.errors, { dataVar: name });
  };
  return {
    index,
    names: [...validators.keys()],
    errors,
    check(name, value) {
      const e = errors(name, value);
      if (e) throw new Error(`invalid ${name}: ${e}`);
      return value;
    },
  };
}

/**
 * A job's id, from the kind of request and its request id: "s-" (save) or "r-" (restore) and the
 * first 20 hex digits of sha256(kind + NUL + requestId). Known before any answer arrives.
 */
export function jobIdFor(kind, requestId) {
  const hex = createHash('sha256').update(`${kind}\0${requestId}`).digest('hex').slice(0, 20);
  return `${kind === 'save' ? 's' : 'r'}-${hex}`;
}
