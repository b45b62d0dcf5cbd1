/**
 * The esbuild bundle of `vmsave` (scripts/bundle.mjs, what `npm run build` ships in dist/bin):
 * built fresh into a scratch directory, it answers like the sources, and what `--help` loads
 * (the entry chunk and its static imports) holds no NATS, Redis, QEMU, QMP or image code.
 */
import { spawn } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Metafile } from 'esbuild';
import { bundle } from '../scripts/bundle.mjs';
import { EXIT } from '../src/errors.ts';
import { vmsave } from './helpers.ts';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// Inside the package, so that the external native addons resolve from node_modules as in dist/bin.
const OUT = path.join(PKG, `.bundle-test-${process.pid}`);
let meta: Metafile;

beforeAll(async () => {
  meta = await bundle(OUT);
}, 120_000);
afterAll(async () => {
  await rm(OUT, { recursive: true, force: true });
});

function runBundle(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(OUT, 'main.js'), ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Every input module that loads with the entry chunk, before any command runs. */
function loadedAtStart(m: Metafile): string[] {
  const entry = Object.keys(m.outputs).find((k) => k.endsWith('main.js'))!;
  const seen = new Set<string>();
  const walk = (f: string) => {
    if (seen.has(f)) return;
    seen.add(f);
    for (const i of m.outputs[f]!.imports) if (i.kind === 'import-statement' && m.outputs[i.path]) walk(i.path);
  };
  walk(entry);
  return [...seen].flatMap((f) => Object.keys(m.outputs[f]!.inputs));
}

describe('the vmsave bundle', { timeout: 120_000 }, () => {
  it('--help loads no NATS, Redis, QEMU, QMP, image or zod code', () => {
    const inputs = loadedAtStart(meta);
    expect(inputs).toContain('src/cli.ts');
    expect(
      inputs.filter((i) =>
        /@nats-io|ioredis|zod|packages\/(qemu|qmp|image|ops|bus|store|client|jobs|contracts)\/|\.\.\/(qemu|qmp|image|ops|bus|store|client|jobs|contracts)\//.test(i),
      ),
    ).toEqual([]);
  });

  it('answers like the sources: help, a usage error, verify of a non-image', async () => {
    for (const args of [['--help'], ['verify', '--help'], ['jobs', '--help'], ['save', '--vm', 'x', '--format', 'zip']]) {
      const [b, s] = await Promise.all([runBundle(args), vmsave(args)]);
      expect({ code: b.code, stdout: b.stdout, stderr: b.stderr }, args.join(' ')).toEqual({ code: s.code, stdout: s.stdout, stderr: s.stderr });
    }
    const junk = path.join(os.tmpdir(), `vmsave-bundle-junk-${process.pid}.bin`);
    await writeFile(junk, Buffer.alloc(4096, 1));
    try {
      const r = await runBundle(['verify', junk, '--json'], { VMSAVE_STATE_DIR: path.join(OUT, 'state') });
      expect(r.code, r.stderr).toBe(EXIT.rejected);
      expect(JSON.parse(r.stdout)).toMatchObject({ kind: 'unknown', source: null, format: null, ok: false });
    } finally {
      await rm(junk, { force: true });
    }
  });

  it('a bus command loads its chunks (NATS included) and reports an unreachable bus', async () => {
    const r = await runBundle(['hosts'], { NATS_URL: 'nats://127.0.0.1:9', VMSAVE_NATS_PASS_CLIENT: '' });
    expect(r.code).toBe(EXIT.unreachable);
    expect(r.stderr).toMatch(/^vmsave: cannot connect to NATS at nats:\/\/127\.0\.0\.1:9/);
  });
});
