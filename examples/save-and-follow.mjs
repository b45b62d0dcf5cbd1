#!/usr/bin/env node
// Publish a save (or restore) request to vmsave, get its admission answer, and follow the job's
// events to the end. Stranger code: the NATS client, ajv and the JSON Schemas only.
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
import { DeliverPolicy, jetstream } from '@nats-io/jetstream';
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

/**
 * Read one job's events from the log (from its first event, or `fromSeq`), validating each
 * against its schema, until the job has ended:
 * - ImageVerified / ImageRejected end a save (SaveCompleted is followed by the verifier's verdict);
 * - RestoreCompleted ends a restore; *Rejected and *Cancelled end either;
 * - *Failed ends it when `retryable` is false; when true the scheduler normally follows with
 *   *Retrying within a moment; if none comes in `retryGraceMs`, the attempts are used up.
 */
export async function followJob(nc, jobId, { schemas = loadSchemas(), fromSeq, timeoutMs = 10 * 60_000, retryGraceMs = 5000, onEvent } = {}) {
  const js = jetstream(nc);
  const consumer = await js.consumers.get(EVENT_STREAM, {
    filter_subjects: `vmsave.evt.${jobId}.>`, // a string: an array needs NATS ≥ 2.10
    ...(fromSeq ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: fromSeq } : { deliver_policy: DeliverPolicy.All }),
  });
  const messages = await consumer.consume();
  const events = [];
  let end;
  let graceTimer;
  const timeout = setTimeout(() => {
    end ??= { outcome: 'timeout' };
    void messages.close();
  }, timeoutMs);
  try {
    for await (const m of messages) {
      const event = m.json();
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
          void messages.close();
        }, retryGraceMs);
      }
    }
  } finally {
    clearTimeout(timeout);
    clearTimeout(graceTimer);
    await messages.close();
  }
  return { ...end, events };
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
