import { describe, expect, it } from 'vitest';
import { parseEnvFile } from '@vmsave/infra/env-file';
import { generateSecret } from '@vmsave/infra/servers';
import { isLoopback, natsEndpoints, redactUrl, redisEndpoint, redisUrlWithPassword } from '@vmsave/infra/urls';

describe('infra/lib', () => {
  it('parses .vmsave/env lines, skipping comments and stripping quotes and export', () => {
    expect(parseEnvFile('# secrets\nA=1\nexport B="two"\n\nC=\'3=3\'\nnot a line\n')).toEqual({ A: '1', B: 'two', C: '3=3' });
  });

  it('reads every server of a comma-separated NATS_URL, with or without scheme and port', () => {
    expect(natsEndpoints('nats://n1:4222, nats://n2:5222,n3')).toEqual([
      { host: 'n1', port: 4222 },
      { host: 'n2', port: 5222 },
      { host: 'n3', port: 4222 },
    ]);
    expect(natsEndpoints('tls://[::1]:4333')).toEqual([{ host: '::1', port: 4333 }]);
  });

  it('adds the password to a Redis URL and redacts it in logs', () => {
    expect(redisEndpoint('redis://127.0.0.1')).toEqual({ host: '127.0.0.1', port: 6379 });
    const url = redisUrlWithPassword('redis://127.0.0.1:6390/2', 'Secret123');
    expect(url).toBe('redis://:Secret123@127.0.0.1:6390/2');
    expect(redactUrl(url)).toBe('redis://:***@127.0.0.1:6390/2');
    expect(redactUrl('nats://u:p@h:1,nats://h2:2')).toBe('nats://u:***@h:1,nats://h2:2');
  });

  it('knows which hosts are this machine', () => {
    expect(['127.0.0.1', 'localhost', '::1', '127.0.1.1'].every(isLoopback)).toBe(true);
    expect(isLoopback('nats.example')).toBe(false);
  });

  it('generates letters-and-digits secrets of the asked length', () => {
    const s = generateSecret(32);
    expect(s).toMatch(/^[A-Za-z0-9]{32}$/);
    expect(generateSecret(32)).not.toBe(s);
  });
});
