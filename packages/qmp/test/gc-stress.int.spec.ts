import { describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));

describe('usocket transport under garbage collection', () => {
  it('survives hundreds of connect/close cycles with forced GC', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-gc-'));
    try {
      const { stdout } = await promisify(execFile)(process.execPath, ['--expose-gc', '--conditions=development', '--import', 'tsx', path.join(here, 'gc-stress.ts'), dir], {
        cwd: path.join(here, '..'),
        timeout: 120_000,
      });
      expect(stdout).toContain('survived');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
