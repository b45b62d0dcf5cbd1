import { createHash, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import fastifyStatic from '@fastify/static';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { HostName, JobId, VmName } from '@vmsave/contracts';
import { eventsOfJob, readHosts, type Bus, type Logger } from '@vmsave/bus';
import { closesAttempt, fold, JOB_STATUSES } from '@vmsave/jobs';
import { Projection, type JobView } from '@vmsave/store';
import { ProgressHub } from './progress.ts';
import { HeartbeatWatch } from './heartbeats.ts';
import { ReadModels, type HostRow } from './queries.ts';
import { Watermark, serveStream, type StreamDeps } from './stream.ts';

export interface DashboardOptions {
  bus: Bus;
  redis: Redis;
  /** Redis key prefix of the read models (`VMSAVE_REDIS_PREFIX`). */
  prefix: string;
  /** When set, every request (page, API, stream) needs this token. */
  token?: string;
  log: Logger;
  /** Run the read-model projection in this process (default true). */
  project?: boolean;
  /** Minimum interval between two relayed progress samples of one job (default 500 ms). */
  progressThrottleMs?: number;
  /** Bounds of the live stream for a browser that is behind (`coalesce.ts`). */
  liveStream?: Pick<StreamDeps, 'coalesce' | 'highWaterBytes'>;
  /** What the page header links to (`GET /api/links`): Grafana and each service's `/metrics`. */
  links?: { grafana?: string; metrics: { name: string; url: string }[] };
}

const STATES = JOB_STATUSES;

/** `a,b` or repeated parameters, as a list of trimmed non-empty strings. */
const list = z.preprocess(
  (v) =>
    v === undefined
      ? undefined
      : (Array.isArray(v) ? v : [v])
          .flatMap((s) => String(s).split(','))
          .map((s) => s.trim())
          .filter(Boolean),
  z.array(z.enum(STATES, { error: () => `must be one or more of ${STATES.join(', ')}` })).optional(),
);
const integer = (min: number, max: number) =>
  z.preprocess((v) => (v === undefined || v === '' ? undefined : Number(v)), z.number({ error: 'must be a number' }).int('must be an integer').min(min).max(max));

/** A time as ms since the epoch or an ISO 8601 date. */
const time = z.preprocess(
  (v) => (v === undefined || v === '' ? undefined : /^\d+$/.test(String(v)) ? Number(v) : Date.parse(String(v))),
  z.number({ error: 'must be a time: ms since the epoch or an ISO 8601 date' }).refine(Number.isFinite, 'must be a time: ms since the epoch or an ISO 8601 date').optional(),
);
const JobsQuery = z.object({
  state: list,
  kind: z.enum(['save', 'restore', 'drain'], { error: () => 'must be save, restore or drain' }).optional(),
  vm: VmName.optional(),
  host: HostName.optional(),
  since: time,
  until: time,
  order: z.enum(['newest', 'oldest'], { error: () => 'must be newest or oldest' }).default('newest'),
  limit: integer(1, 500).default(50),
  offset: integer(0, 1_000_000).default(0),
});
const JobParams = z.object({ id: JobId });
const VmParams = z.object({ vm: VmName });
const StreamQuery = z.object({ since: integer(0, Number.MAX_SAFE_INTEGER).optional() });
const LastEventId = integer(0, Number.MAX_SAFE_INTEGER);

/** A request the dashboard refuses, with the parameter at fault. */
export class DashboardHttpError extends Error {
  override readonly name = 'DashboardHttpError';
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly issues: string[] = [],
  ) {
    super(message);
  }
}

function parse<S extends z.ZodType>(schema: S, value: unknown, where: string): z.infer<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : where}: ${i.message}`);
  throw new DashboardHttpError(400, 'invalid-request', `invalid ${where}: ${issues.join('; ')}`, issues);
}

const COOKIE = 'vmsave_dashboard_token';
const SECURITY_HEADERS = {
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  // A token in the address must not leak to other sites.
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
} as const;

const digest = (s: string) => createHash('sha256').update(s).digest();

/** Where a request presented a token, if anywhere: header, query, or the cookie set by an earlier `?token=`. */
function presentedToken(req: FastifyRequest): { token: string; via: 'header' | 'query' | 'cookie' } | undefined {
  const auth = req.headers.authorization;
  if (auth?.startsWith('Bearer ')) return { token: auth.slice(7).trim(), via: 'header' };
  const q = (req.query as Record<string, unknown> | undefined)?.token;
  if (typeof q === 'string' && q) return { token: q, via: 'query' };
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === COOKIE) return { token: decodeURIComponent(v.join('=')), via: 'cookie' };
  }
  return undefined;
}

const redactUrl = (url: string) => url.replace(/([?&]token=)[^&]*/g, '$1…');

/**
 * The dashboard's HTTP server: a read-only JSON API over the Redis read models and the event
 * log, a live server-sent-event stream, and the page in `public/`.
 *
 * @example
 * const app = await createDashboard({ bus, redis, prefix: 'vmsave', log });
 * await app.listen({ host: '127.0.0.1', port: 8080 });
 */
export async function createDashboard(opts: DashboardOptions): Promise<FastifyInstance> {
  const { bus, redis, prefix, log } = opts;
  const projection = new Projection(redis, prefix);
  const models = new ReadModels(projection, redis, prefix);
  const watermark = new Watermark(projection);
  const progress = new ProgressHub(bus, { throttleMs: opts.progressThrottleMs, log });
  const heartbeats = new HeartbeatWatch(bus);
  const streamsOpen = new Set<AbortController>();
  const stopProjection = new AbortController();
  let projecting: Promise<void> | undefined;

  // Fastify's own request lines are off: they would print a ?token= query. The onResponse hook logs redacted ones.
  const app: FastifyInstance = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    return503OnClosing: true,
    // On close, also drop kept-alive browser connections instead of waiting for them to time out.
    forceCloseConnections: true,
  });

  /* ---------- access ---------- */

  const expected = opts.token ? digest(opts.token) : undefined;
  app.addHook('onRequest', async (req, reply) => {
    reply.headers(SECURITY_HEADERS);
    if (!expected || req.url === '/healthz') return;
    const got = presentedToken(req);
    if (!got || !timingSafeEqual(digest(got.token), expected)) {
      reply.header('www-authenticate', 'Bearer realm="vmsave dashboard"');
      return reply.code(401).send({ error: 'unauthorized', message: 'this dashboard needs an access token: Authorization: Bearer <token> or ?token=<token>' });
    }
    // A page opened with ?token= loads its scripts and styles without it: remember it in a cookie.
    if (got.via === 'query') reply.header('set-cookie', `${COOKIE}=${encodeURIComponent(got.token)}; HttpOnly; SameSite=Strict; Path=/`);
  });

  app.addHook('onResponse', async (req, reply) => {
    const line = { method: req.method, url: redactUrl(req.url), status: reply.statusCode, ms: Math.round(reply.elapsedTime) };
    if (reply.statusCode >= 500) log.error(line, 'request failed');
    else log.debug(line, 'request');
  });

  app.setErrorHandler((err, req, reply) => {
    if (err instanceof DashboardHttpError) return reply.code(err.statusCode).send({ error: err.code, message: err.message, issues: err.issues });
    const e = err as { statusCode?: number; message?: string };
    if (e.statusCode && e.statusCode < 500) return reply.code(e.statusCode).send({ error: 'bad-request', message: e.message });
    log.error({ err, url: redactUrl(req.url) }, 'request failed');
    return reply.code(500).send({ error: 'internal', message: 'internal error; see the dashboard log' });
  });

  /* ---------- API ---------- */

  const withProgress = (j: JobView) => (j.status === 'running' && j.jobId ? { ...j, progress: progress.current(j.jobId) } : j);

  app.get('/api/jobs', async (req) => {
    const q = parse(JobsQuery, req.query, 'query');
    // The cursor is read first: the page includes at least every event up to it.
    const cursor = await projection.appliedSeq();
    const page = await models.jobs({ states: q.state, kind: q.kind, vm: q.vm, host: q.host, since: q.since, until: q.until, order: q.order, limit: q.limit, offset: q.offset });
    return { items: page.items.map(withProgress), total: page.total, totals: page.totals, limit: q.limit, offset: q.offset, cursor };
  });

  app.get('/api/jobs/:id', async (req) => {
    const { id } = parse(JobParams, req.params, 'path');
    const [view, history] = await Promise.all([projection.job(id), eventsOfJob(bus, id)]);
    const lastSeq = history.at(-1)?.seq ?? 0;
    if (!view && history.length === 0) throw new DashboardHttpError(404, 'not-found', `no job ${id}`);
    // The read model may lag the log by a moment; the log is the truth.
    const job = view && view.lastSeq >= lastSeq ? view : { ...fold(history.map((e) => e.event)), lastSeq };
    return { job: withProgress(job), events: history };
  });

  app.get('/api/hosts', async () => {
    const [announcements, loads, unscheduled] = await Promise.all([
      (async () => {
        const out = [];
        for await (const a of readHosts(bus)) out.push(a);
        return out;
      })(),
      models.hostLoads(),
      models.unscheduled(),
    ]);
    const rows = new Map<string, HostRow>();
    for (const a of announcements) {
      const load = loads.get(a.host) ?? { running: 0, queued: 0 };
      rows.set(a.host, { host: a.host, announcement: a, ...load, limit: a.maxConcurrentJobs, lastHeartbeatAt: heartbeats.get(a.host)?.at });
    }
    for (const [host, load] of loads) if (!rows.has(host)) rows.set(host, { host, ...load, lastHeartbeatAt: heartbeats.get(host)?.at });
    return { hosts: [...rows.values()].sort((a, b) => a.host.localeCompare(b.host)), unscheduled };
  });

  app.get('/api/images/latest/:vm', async (req) => {
    const { vm } = parse(VmParams, req.params, 'path');
    const latest = await projection.latestImage(vm);
    if (!latest) throw new DashboardHttpError(404, 'not-found', `no verified image of VM ${vm}`);
    return latest;
  });

  app.get('/api/links', async () => opts.links ?? { metrics: [] });

  app.get('/api/throughput', async () => ({ live: progress.throughputHistory(), completed: await models.recentThroughput() }));

  app.get('/api/stream', async (req, reply) => {
    const q = parse(StreamQuery, req.query, 'query');
    // A reconnecting EventSource sends the id of the last event it received: that wins.
    const header = req.headers['last-event-id'];
    const resume = header !== undefined ? parse(LastEventId, Array.isArray(header) ? header[0] : header, 'Last-Event-ID') : undefined;
    let from = resume ?? q.since;
    if (from === undefined) from = await projection.appliedSeq(); // live only
    const ac = new AbortController();
    streamsOpen.add(ac);
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, {
      ...SECURITY_HEADERS,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    raw.on('close', () => ac.abort());
    log.debug({ from, resumed: resume !== undefined }, 'live stream opened');
    try {
      await serveStream(raw, from, { bus, projection, watermark, progress, log, ...opts.liveStream }, ac.signal);
    } finally {
      streamsOpen.delete(ac);
    }
  });

  app.get('/healthz', async (_req, reply) => {
    const nats = !bus.nc.isClosed();
    const redisOk = redis.status === 'ready';
    return reply.code(nats && redisOk ? 200 : 503).send({ ok: nats && redisOk, nats, redis: redisOk, projecting: projecting !== undefined });
  });

  /* ---------- the page ---------- */

  // uPlot's script is in the bundle; its style sheet is served from node_modules (no CDN).
  const require = createRequire(import.meta.url);
  const vendor = {
    'uplot.min.css': { type: 'text/css; charset=utf-8', body: readFileSync(require.resolve('uplot/dist/uPlot.min.css')) },
  } as const;
  app.get('/vendor/:file', async (req, reply) => {
    const f = vendor[(req.params as { file: string }).file as keyof typeof vendor];
    if (!f) throw new DashboardHttpError(404, 'not-found', 'no such file');
    return reply.type(f.type).header('cache-control', 'public, max-age=86400').send(f.body);
  });
  // The bundled script (`dist/public/app.js`) first, then the static files of `public/`.
  const bundleDir = await pageBundle(log);
  await app.register(fastifyStatic, { root: [bundleDir, fileURLToPath(new URL('../public/', import.meta.url))], index: 'index.html', cacheControl: false });
  app.addHook('onSend', async (req, reply, payload) => {
    if (!req.url.startsWith('/api/') && !req.url.startsWith('/vendor/')) reply.header('cache-control', 'no-cache');
    return payload;
  });

  /* ---------- lifecycle ---------- */

  app.addHook('onReady', async () => {
    progress.start();
    heartbeats.start();
    watermark.advance(await projection.appliedSeq());
    const built = await projection.ensureIndexes();
    if (built) log.info({ jobs: built }, 'read models: state and kind indexes built over the stored jobs');
    if (opts.project ?? true) {
      const plog = log.child({ component: 'projection' });
      projecting = projection
        .run(bus, {
          signal: stopProjection.signal,
          log: plog,
          onApplied: ({ seq, event }) => {
            watermark.advance(seq);
            // The attempt that reported progress is over: its transfer no longer counts.
            if (closesAttempt(event, 'attempt' in event.data ? event.data.attempt : 0)) progress.forget(event.jobId);
          },
        })
        .catch((err) => {
          if (!stopProjection.signal.aborted) plog.error({ err }, 'projection stopped');
        });
    }
  });

  // Live streams never end on their own: end them first, so close() does not wait for browsers.
  app.addHook('preClose', async () => {
    for (const ac of streamsOpen) ac.abort();
  });
  app.addHook('onClose', async () => {
    stopProjection.abort();
    // The log reader may miss an abort that lands while it is still subscribing; the bus's
    // close ends it then, so do not wait on it forever.
    const settled = await Promise.race([projecting?.then(() => true), new Promise((r) => setTimeout(r, 3_000, false).unref())]);
    if (settled === false) log.warn('projection did not stop within 3 s; it ends when the bus closes');
    await progress.close();
    heartbeats.close();
  });

  return app;
}

/**
 * Where the page's bundled script is. Run from the sources (dev, tests) the bundle is built
 * first when it is missing or older than its inputs; an installed package ships it built.
 * (This file is `src/server.ts` or `dist/server.js`: the package root is one level up either way.)
 */
async function pageBundle(log: Logger): Promise<string> {
  const dir = fileURLToPath(new URL('../dist/public/', import.meta.url));
  const script = new URL('../scripts/build-browser.mjs', import.meta.url);
  if (existsSync(fileURLToPath(new URL('../src/browser/main.ts', import.meta.url))) && existsSync(fileURLToPath(script))) {
    const { ensureBrowserBundle } = (await import(script.href)) as { ensureBrowserBundle(): Promise<{ built: boolean; why?: string }> };
    const r = await ensureBrowserBundle();
    if (r.built) log.info({ dir, why: r.why }, 'built the page bundle');
  } else if (!existsSync(`${dir}app.js`)) {
    throw new Error(`the dashboard page's bundle ${dir}app.js is missing: run npm run build -w @vmsave/dashboard`);
  }
  return dir;
}
