import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';

/** The part of a pino logger the server uses. */
export interface MetricsLog {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface MetricsServer extends AsyncDisposable {
  /** The port it listens on (useful when asked for port 0 … never: 0 means off). */
  readonly port: number;
  readonly host: string;
  close(): Promise<void>;
}

/**
 * Serve `GET /metrics` (Prometheus text format) from `registry` on `host:port`. Port 0 turns it
 * off (resolves undefined). A port that cannot be bound (in use, no permission) is logged as an
 * error and the service goes on without metrics, rather than failing for want of an endpoint.
 */
export async function serveMetrics(registry: Registry, opts: { host: string; port: number; log: MetricsLog }): Promise<MetricsServer | undefined> {
  if (opts.port === 0) return undefined;
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('only GET /metrics\n');
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (body) => {
        res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        opts.log.error({ err: (err as Error)?.message ?? String(err) }, 'collecting metrics failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('collecting metrics failed; see the service log\n');
      },
    );
  });
  server.keepAliveTimeout = 5_000;
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port, opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    opts.log.error(
      { err: (err as Error)?.message ?? String(err), host: opts.host, port: opts.port },
      `metrics endpoint NOT serving: cannot listen on ${opts.host}:${opts.port} (set VMSAVE_METRICS_PORT to a free port, or 0 for off)`,
    );
    return undefined;
  }
  server.unref();
  const port = (server.address() as AddressInfo).port;
  opts.log.info({ host: opts.host, port }, `metrics at http://${opts.host.includes(':') ? `[${opts.host}]` : opts.host}:${port}/metrics`);
  const close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return { port, host: opts.host, close, [Symbol.asyncDispose]: close };
}
