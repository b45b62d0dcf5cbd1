import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadCliConfig } from '../src/config.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'vmsave-cli-natsurl-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('NATS_URL from .vmsave/nats.url', () => {
  it("is vmsave's own NATS that npm start announced, when NATS_URL is unset", () => {
    writeFileSync(path.join(dir, 'nats.url'), 'nats://127.0.0.1:4223\n');
    expect(loadCliConfig({ VMSAVE_DATA_DIR: dir }).NATS_URL).toBe('nats://127.0.0.1:4223');
  });

  it('never overrides an explicit NATS_URL, and without the file the default stays', () => {
    writeFileSync(path.join(dir, 'nats.url'), 'nats://127.0.0.1:4223\n');
    expect(loadCliConfig({ VMSAVE_DATA_DIR: dir, NATS_URL: 'nats://n1:4222' }).NATS_URL).toBe('nats://n1:4222');
    rmSync(path.join(dir, 'nats.url'));
    expect(loadCliConfig({ VMSAVE_DATA_DIR: dir }).NATS_URL).toBe('nats://127.0.0.1:4222');
  });
});
