import { describe, expect, it } from 'vitest';
import { REGENERATE, generate, staleFiles } from '../src/index.ts';

describe('generated documents', () => {
  it('docs/asyncapi.yaml and docs/schemas/*.json are what the contracts generate today', async () => {
    const stale = await staleFiles(generate());
    expect(stale, `stale generated files: run \`${REGENERATE}\` and commit the result`).toEqual([]);
  });

  it('generation is deterministic', () => {
    const a = generate();
    const b = generate();
    expect([...a.files.keys()]).toEqual([...b.files.keys()]);
    for (const [k, v] of a.files) expect(b.files.get(k), k).toBe(v);
  });
});
