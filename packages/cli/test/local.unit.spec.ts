import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadLocalConfig } from '../src/config.ts';

describe('loadLocalConfig (this host, as the local commands see it)', () => {
  it('VMSAVE_HOST names the host when set; otherwise the machine name as a bus token', () => {
    expect(loadLocalConfig({ VMSAVE_HOST: 'rack-7' }).host).toBe('rack-7');
    expect(loadLocalConfig({}).host).toBe(os.hostname().replace(/[^A-Za-z0-9_-]/g, '-'));
  });

  it('a VMSAVE_HOST that is not a subject token is refused, naming the variable', () => {
    expect(() => loadLocalConfig({ VMSAVE_HOST: 'a b' })).toThrow(/VMSAVE_HOST: letters, digits/);
  });

  it('directories default under VMSAVE_STATE_DIR, each overridable, all absolute', () => {
    const c = loadLocalConfig({ VMSAVE_STATE_DIR: 'st', VMSAVE_QMP_DIR: '/run/q' });
    const base = path.resolve('st');
    expect(c).toMatchObject({ stateDir: base, vmDir: path.join(base, 'vms'), imageDir: path.join(base, 'images'), qmpDir: '/run/q', logDir: path.join(base, 'logs') });
  });
});
