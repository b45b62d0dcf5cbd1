/** Host and port of a NATS or Redis server URL. */
export interface Endpoint {
  host: string;
  port: number;
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

export const isLoopback = (host: string): boolean => LOOPBACK.has(host) || host.startsWith('127.');

/**
 * The servers of a NATS_URL: comma-separated, each `nats://host:port`, `tls://…` or `host:port`
 * (the scheme may be left out, as nats.js allows); the port defaults to 4222.
 */
export function natsEndpoints(natsUrl: string): Endpoint[] {
  return natsUrl
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const u = new URL(/^[a-z]+:\/\//i.test(s) ? s : `nats://${s}`);
      return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : 4222 };
    });
}

/** Host and port of a REDIS_URL (`redis://[user:pass@]host[:port][/db]`); the port defaults to 6379. */
export function redisEndpoint(redisUrl: string): Endpoint {
  const u = new URL(redisUrl);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port ? Number(u.port) : 6379 };
}

/** The same Redis URL with the password set (and any user name kept), for a server with `requirepass`. */
export function redisUrlWithPassword(redisUrl: string, password: string): string {
  const u = new URL(redisUrl);
  u.password = password;
  return u.toString();
}

/** A URL fit for a log line: the password replaced by `***`. */
export function redactUrl(url: string): string {
  return url.replace(/(\/\/[^:/@]*:)[^@/]*@/g, '$1***@');
}
