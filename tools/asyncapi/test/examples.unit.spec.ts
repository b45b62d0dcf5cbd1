import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { REPO } from '../src/index.ts';

const EXAMPLES = path.join(REPO, 'examples');

describe('examples/ are stranger code', () => {
  it('import only Node built-ins, the NATS client, ajv and each other', async () => {
    const files = (await readdir(EXAMPLES)).filter((f) => f.endsWith('.mjs'));
    expect(files).toEqual(expect.arrayContaining(['save-and-follow.mjs', 'tail-events.mjs', 'schemas.mjs', 'publish.mjs']));
    for (const f of files) {
      const src = await readFile(path.join(EXAMPLES, f), 'utf8');
      const specifiers = [...src.matchAll(/^\s*import\s[^'"]*['"]([^'"]+)['"]/gm), ...src.matchAll(/import\(\s*['"]([^'"]+)['"]/g)].map((m) => m[1]!);
      expect(specifiers.length, f).toBeGreaterThan(0);
      for (const s of specifiers) {
        expect(s, `${f} imports ${s}`).toMatch(/^(node:|@nats-io\/(transport-node|jetstream)$|ajv$|ajv-formats$|\.\/[\w-]+\.mjs$)/);
      }
    }
  });

  it('their package.json depends on no vmsave package', async () => {
    const pkg = JSON.parse(await readFile(path.join(EXAMPLES, 'package.json'), 'utf8')) as Record<string, Record<string, string>>;
    const deps = Object.keys({ ...pkg.dependencies, ...pkg.devDependencies });
    expect(deps.filter((d) => d.startsWith('@vmsave/'))).toEqual([]);
    expect(deps).toEqual(expect.arrayContaining(['@nats-io/transport-node', '@nats-io/jetstream', 'ajv']));
  });

  it('the documented job id derivation matches the contracts', async () => {
    const { jobIdFor } = await import('@vmsave/contracts');
    const stranger = (await import(pathToFileURL(path.join(EXAMPLES, 'schemas.mjs')).href)) as { jobIdFor(kind: string, id: string): string };
    for (const id of ['a', 'evacuate-host-a-web-1', 'x.y:z_1-2']) {
      expect(stranger.jobIdFor('save', id)).toBe(jobIdFor('save', id));
      expect(stranger.jobIdFor('restore', id)).toBe(jobIdFor('restore', id));
    }
  });
});
