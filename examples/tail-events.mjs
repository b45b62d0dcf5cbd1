#!/usr/bin/env node
// Print vmsave's event log, one line per event, from a given stream sequence on.
// Stranger code: the NATS client, ajv and the JSON Schemas only (no vmsave package).
//
//   node examples/tail-events.mjs                       # everything, then follow
//   node examples/tail-events.mjs --from-seq 1200       # from stream sequence 1200 on
//   node examples/tail-events.mjs --job s-0123456789abcdef0123 --no-follow
//   node examples/tail-events.mjs --type ImageRejected --json
//
// Options: --from-seq N, --job JOBID, --type TYPE, --no-follow (stop at the end of the log),
// --count N (stop after N events), --json (one JSON object per line instead of text).
// Connects to NATS_URL as NATS_USER / NATS_PASS (if set).
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { connectToVmsave, readEvents } from './save-and-follow.mjs';
import { loadSchemas } from './schemas.mjs';

/**
 * Read the log (`vmsave.evt.>` in stream VMSAVE_EVT) from stream sequence `fromSeq` on, without
 * any JetStream consumer: direct gets (`{"seq":N,"next_by_subj":filter}` on
 * `$JS.API.DIRECT.GET.VMSAVE_EVT`, one per event, up to the 404 at the end), then, with `follow`,
 * a core subscription that only says when to read again (`readEvents` in save-and-follow.mjs).
 * Order and "each event once" come from the stream sequences. Each event is checked against its
 * JSON Schema; one that fails is still delivered, with `invalid`.
 * Yields `{ seq, subject, event, invalid? }`.
 */
export async function* tailEvents(nc, { fromSeq = 1, jobId, type, follow = true, signal, schemas = loadSchemas() } = {}) {
  const filter = jobId || type ? `vmsave.evt.${jobId ?? '*'}.${type ?? '*'}` : 'vmsave.evt.>';
  for await (const m of readEvents(nc, { filter, fromSeq, follow, signal })) {
    let event;
    let invalid;
    try {
      event = JSON.parse(new TextDecoder().decode(m.data));
      invalid = schemas.errors(event?.type, event);
    } catch (err) {
      invalid = String(err.message ?? err);
    }
    yield { seq: m.seq, subject: m.subject, event, ...(invalid ? { invalid } : {}) };
  }
}

/** A short, human summary of an event's data. */
export function summarize(e) {
  const d = e.data ?? {};
  switch (e.type) {
    case 'SaveRequested':
      return `vm=${d.request?.vm} format=${d.request?.format} by=${d.request?.requestedBy ?? '-'}`;
    case 'RestoreRequested':
      return `image=${d.request?.image} vm=${d.vm ?? '-'}`;
    case 'SaveRejected':
    case 'RestoreRejected':
      return `rule=${d.rule}${d.field ? ` field=${d.field}` : ''}: ${d.message}`;
    case 'SaveScheduled':
    case 'RestoreScheduled':
      return `host=${d.host} attempt=${d.attempt}`;
    case 'SaveStarted':
      return `host=${d.host} format=${d.format} ram=${d.ramBytes}B image=${d.imagePath}`;
    case 'RestoreStarted':
      return `host=${d.host} vm=${d.vm?.name} image=${d.imagePath}`;
    case 'SaveCompleted':
      return `bytes=${d.bytes} allocated=${d.blocks * 512}B in ${d.durationMs}ms vm=${d.vmState}`;
    case 'RestoreCompleted':
      return `vm=${d.vm} ${d.vmState} in ${d.durationMs}ms`;
    case 'SaveFailed':
    case 'RestoreFailed':
      return `stage=${d.stage} code=${d.code} retryable=${d.retryable}: ${d.reason}`;
    case 'SaveRetrying':
    case 'RestoreRetrying':
      return `attempt=${d.attempt} in ${d.delayMs}ms after ${d.lastCode}`;
    case 'ImageVerified':
    case 'ImageRejected': {
      const failed = (d.checks ?? []).filter((c) => c.status === 'fail').map((c) => c.name);
      return `${d.checks?.length ?? 0} checks${failed.length ? `, failed: ${failed.join(', ')}` : ''}`;
    }
    default:
      return d.reason ? `reason=${d.reason}` : '';
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      'from-seq': { type: 'string' },
      job: { type: 'string' },
      type: { type: 'string' },
      'no-follow': { type: 'boolean' },
      count: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const limit = values.count ? Number(values.count) : Infinity;
  const ac = new AbortController();
  // `… | head` closes the pipe: stop quietly.
  process.stdout.on('error', (err) => {
    if (err.code === 'EPIPE') ac.abort();
    else throw err;
  });
  process.once('SIGINT', () => ac.abort());
  process.once('SIGTERM', () => ac.abort());
  const nc = await connectToVmsave({ name: 'vmsave-tail-events' });
  let n = 0;
  try {
    for await (const { seq, event, invalid } of tailEvents(nc, {
      fromSeq: values['from-seq'] ? Number(values['from-seq']) : 1,
      jobId: values.job,
      type: values.type,
      follow: !values['no-follow'],
      signal: ac.signal,
    })) {
      if (values.json) console.log(JSON.stringify({ seq, ...(invalid ? { invalid } : {}), event }));
      else console.log(`#${seq} ${event?.at} ${event?.jobId} ${event?.type} ${event ? summarize(event) : ''}${invalid ? `  !! ${invalid}` : ''}`);
      if (++n >= limit || ac.signal.aborted) break;
    }
  } finally {
    await nc.drain();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    console.error(err);
    process.exitCode = 2;
  });
}
