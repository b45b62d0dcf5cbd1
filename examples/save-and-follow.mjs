#!/usr/bin/env node
// Publish a save (or restore) request to vmsave, get its admission answer, and follow the job's
// events to the end. Stranger code: the NATS client, ajv and the JSON Schemas only. The events are
// read without any JetStream consumer (the `client` user may create none): direct gets on
// `$JS.API.DIRECT.GET.VMSAVE_EVT` for what is stored, a core subscription as the wake-up for what
// is new (`readEvents` below).
//
//   NATS_URL=nats://127.0.0.1:4222 node examples/save-and-follow.mjs save '{"vm":"web-1","format":"sparse"}'
//   node examples/save-and-follow.mjs restore '{"image":"web-1-s-0123456789abcdef0123.vmsave"}'
//
// With vmsave's NATS roles, add NATS_USER=client NATS_PASS=… (docs/operations.md).
// Prints one JSON line per step: {"step":"puback"}, {"step":"admission"}, {"step":"event"}…,
// {"step":"end"}. Exits 0 when the job ended well (ImageVerified / RestoreCompleted), 1 when it
// ended otherwise, 2 on a usage error or a time-out.
import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { connect, createInbox, headers } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { jobIdFor, loadSchemas } from './schemas.mjs';

const EVENT_STREAM = 'VMSAVE_EVT';

/**
 * Connect as NATS_USER / NATS_PASS (if set) to NATS_URL (comma-separated for a cluster). With a
 * user, every inbox is made under `_INBOX.<user>`: with vmsave's NATS users that is the only
 * inbox prefix a user may subscribe to (NATS_INBOX_PREFIX overrides it).
 */
export function connectToVmsave({
  servers = process.env.NATS_URL || 'nats://127.0.0.1:4222',
  user = process.env.NATS_USER,
  pass = process.env.NATS_PASS,
  inboxPrefix = process.env.NATS_INBOX_PREFIX || (user ? `_INBOX.${user}` : undefined),
  name = 'vmsave-example',
} = {}) {
  return connect({
    servers: servers
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
    user,
    pass,
    inboxPrefix,
    name,
  });
}

/**
 * Publish one command and wait for the scheduler's admission answer.
 *
 * - The JetStream PubAck (`{ stream, seq, duplicate }`) arrives on the publish's own reply subject.
 * - The admission answer arrives on the inbox named in the `Vmsave-Reply-To` header; subscribe
 *   before publishing. `Nats-Msg-Id` = requestId makes a re-publish (e.g. after a lost PubAck) safe.
 * - A re-publish JetStream recognises (`pubAck.duplicate`) gets no second answer: `admission` is
 *   undefined then, and the job's events tell its state.
 */
export async function submit(nc, kind, request, { schemas = loadSchemas(), admissionTimeoutMs = 10_000 } = {}) {
  schemas.check(kind === 'save' ? 'SaveRequest' : kind === 'restore' ? 'RestoreRequest' : 'CancelRequest', request);
  const js = jetstream(nc);
  const inbox = createInbox(nc.options?.inboxPrefix);
  const sub = nc.subscribe(inbox, { max: 1 });
  const h = headers();
  h.set('Vmsave-Reply-To', inbox);
  let pubAck;
  try {
    pubAck = await js.publish(`vmsave.cmd.${kind}`, JSON.stringify(request), { msgID: request.requestId, headers: h });
  } catch (err) {
    sub.unsubscribe();
    throw err;
  }
  const jobId = kind === 'cancel' ? request.jobId : jobIdFor(kind, request.requestId);
  if (pubAck.duplicate) {
    sub.unsubscribe();
    return { jobId, pubAck, admission: undefined };
  }
  const timer = setTimeout(() => sub.unsubscribe(), admissionTimeoutMs);
  let admission;
  try {
    for await (const m of sub) admission = schemas.check('AdmissionReply', m.json());
  } finally {
    clearTimeout(timer);
  }
  return { jobId, pubAck, admission };
}

const SUCCESS = new Set(['ImageVerified', 'RestoreCompleted']);
const FINAL = new Set(['ImageVerified', 'ImageRejected', 'SaveRejected', 'SaveCancelled', 'RestoreCompleted', 'RestoreRejected', 'RestoreCancelled']);

/** The direct-get API subject of a stream (the stream has `allow_direct`; vmsave's services set it). */
const directGetSubject = (stream) => `$JS.API.DIRECT.GET.${stream}`;

/**
 * One direct get: a JetStream request answered by the stream itself, no consumer involved.
 * `body` is `{ seq }` (that sequence), `{ seq, next_by_subj }` (the first message at or after
 * `seq` on a subject filter) or `{ last_by_subj }`. The reply carries the message as its data
 * and its place in the headers `Nats-Sequence` and `Nats-Subject`; a reply with status 404 and
 * no data means there is no such message (for `next_by_subj`: the end of what is stored).
 * Returns `{ seq, subject, data }` or null.
 */
export async function directGet(nc, body, { stream = EVENT_STREAM, timeoutMs = 5000 } = {}) {
  let r;
  try {
    r = await nc.request(directGetSubject(stream), JSON.stringify(body), { timeout: timeoutMs });
  } catch (err) {
    // A stream without allow_direct does not answer at all (NATS 2.9: a time-out).
    const hint = /permission/i.test(String(err?.message)) ? 'this NATS user may not read it' : 'is the stream there, with allow_direct (vmsave sets it when its services start)?';
    throw new Error(`direct get on ${stream} ${JSON.stringify(body)}: ${err?.message ?? err}; ${hint}`, { cause: err });
  }
  const code = r.headers?.code ?? 0;
  if (code === 404) return null;
  if (code !== 0) throw new Error(`direct get on ${stream} ${JSON.stringify(body)}: ${code} ${r.headers?.description ?? ''}`);
  return { seq: Number(r.headers.get('Nats-Sequence')), subject: r.headers.get('Nats-Subject'), data: r.data };
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The stored messages of stream `stream` (default the event log) matching `filter`, from
 * stream sequence `fromSeq` on, in stream order, each once; yields `{ seq, subject, data }`.
 * Without `follow` it ends at the end of what is stored; with `follow` it then waits for new
 * ones until `signal` aborts.
 *
 * How it follows without a consumer: a core NATS subscription on `filter`, opened (and flushed)
 * BEFORE the history is read, so nothing published afterwards can be missed. A live message has
 * no stream sequence, so it is never yielded itself: it only says "read again from the last
 * sequence". The subscriber may hear a publish a moment before the stream has stored it: such a
 * message is looked for again every 50 ms for `settleMs` (one the stream dropped as a duplicate
 * never comes). A read every `pollMs` catches wake-ups lost while the connection was away.
 */
export async function* readEvents(nc, { filter = 'vmsave.evt.>', fromSeq = 1, follow = false, signal, stream = EVENT_STREAM, pollMs = 5000, settleMs = 2000 } = {}) {
  /** Live messages heard but not read from the stream yet: subject + data → when heard. */
  const heard = new Map();
  const keyOf = (subject, data) => `${subject} ${new TextDecoder().decode(data)}`;
  let dirty = true;
  let wake;
  const poke = () => {
    dirty = true;
    wake?.();
  };
  let sub;
  let poll;
  if (follow) {
    sub = nc.subscribe(filter, {
      callback: (err, m) => {
        if (err) return;
        heard.set(keyOf(m.subject, m.data), Date.now());
        poke();
      },
    });
    await nc.flush(); // the server has the subscription before the first read
    poll = setInterval(poke, pollMs);
  }
  signal?.addEventListener('abort', poke);
  let seq = Math.max(1, fromSeq);
  let failures = 0;
  try {
    while (!signal?.aborted) {
      dirty = false;
      // Everything stored from `seq` on: one request per message, up to the 404.
      try {
        for (;;) {
          const m = await directGet(nc, { seq, next_by_subj: filter }, { stream });
          if (!m) break;
          seq = m.seq + 1;
          heard.delete(keyOf(m.subject, m.data));
          yield m;
          if (signal?.aborted) return;
        }
        failures = 0;
      } catch (err) {
        // While following, a failed read (e.g. NATS reconnecting) is tried again a few times.
        if (!follow || signal?.aborted || ++failures > 5 || /permission/i.test(String(err?.message))) throw err;
        await sleep(500 * failures);
        continue;
      }
      if (!follow) return;
      const now = Date.now();
      for (const [k, at] of heard) if (now - at > settleMs) heard.delete(k);
      if (heard.size) {
        await sleep(50); // heard, not stored yet: read again in a moment
        continue;
      }
      if (dirty) continue;
      await new Promise((resolve) => {
        wake = resolve;
        if (dirty || signal?.aborted) resolve();
      });
      wake = undefined;
    }
  } finally {
    signal?.removeEventListener('abort', poke);
    clearInterval(poll);
    sub?.unsubscribe();
  }
}

/**
 * Read one job's events from the log (from its first event, or `fromSeq`), validating each
 * against its schema, until the job has ended or `timeoutMs` has passed (the job itself goes on):
 * - ImageVerified / ImageRejected end a save (SaveCompleted is followed by the verifier's verdict);
 * - RestoreCompleted ends a restore; *Rejected and *Cancelled end either;
 * - *Failed ends it when `retryable` is false; when true the scheduler normally follows with
 *   *Retrying within a moment; if none comes in `retryGraceMs`, the attempts are used up.
 * Reads by direct get (`readEvents`): no JetStream consumer is created, none is needed.
 */
export async function followJob(nc, jobId, { schemas = loadSchemas(), fromSeq = 1, timeoutMs = 10 * 60_000, retryGraceMs = 5000, onEvent } = {}) {
  const ac = new AbortController();
  const events = [];
  let end;
  let graceTimer;
  const timeout = setTimeout(() => {
    end ??= { outcome: 'timeout' };
    ac.abort();
  }, timeoutMs);
  try {
    for await (const m of readEvents(nc, { filter: `vmsave.evt.${jobId}.>`, fromSeq, follow: true, signal: ac.signal })) {
      const event = JSON.parse(new TextDecoder().decode(m.data));
      const invalid = schemas.errors(event.type, event) ?? undefined;
      const entry = { seq: m.seq, subject: m.subject, event, ...(invalid ? { invalid } : {}) };
      events.push(entry);
      onEvent?.(entry);
      clearTimeout(graceTimer);
      if (FINAL.has(event.type)) {
        end = { outcome: SUCCESS.has(event.type) ? 'succeeded' : 'ended', type: event.type };
        break;
      }
      if (event.type.endsWith('Failed')) {
        const failed = { outcome: 'ended', type: event.type };
        if (!event.data.retryable) {
          end = failed;
          break;
        }
        graceTimer = setTimeout(() => {
          end ??= failed;
          ac.abort();
        }, retryGraceMs);
      }
    }
  } finally {
    clearTimeout(timeout);
    clearTimeout(graceTimer);
  }
  return { ...(end ?? { outcome: 'timeout' }), events };
}

async function main(argv) {
  const [kind, json = '{}'] = argv;
  if (kind !== 'save' && kind !== 'restore') {
    console.error("usage: save-and-follow.mjs save|restore '<request JSON>'  (requestId defaults to a fresh one)");
    return 2;
  }
  const request = { requestId: `example-${randomUUID()}`, ...JSON.parse(json) };
  const schemas = loadSchemas();
  const out = (o) => console.log(JSON.stringify(o));
  const nc = await connectToVmsave();
  try {
    const { jobId, pubAck, admission } = await submit(nc, kind, request, { schemas });
    out({ step: 'puback', jobId, stream: pubAck.stream, seq: pubAck.seq, duplicate: pubAck.duplicate });
    if (!pubAck.duplicate) {
      out({ step: 'admission', admission: admission ?? null });
      if (!admission) return 2;
    }
    const end = await followJob(nc, jobId, {
      schemas,
      timeoutMs: Number(process.env.FOLLOW_TIMEOUT_MS || 10 * 60_000),
      onEvent: (e) => out({ step: 'event', seq: e.seq, type: e.event.type, at: e.event.at, data: e.event.data, ...(e.invalid ? { invalid: e.invalid } : {}) }),
    });
    out({ step: 'end', jobId, outcome: end.outcome, type: end.type ?? null });
    return end.outcome === 'succeeded' ? 0 : end.outcome === 'timeout' ? 2 : 1;
  } finally {
    await nc.drain();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      console.error(err);
      process.exitCode = 2;
    },
  );
}
