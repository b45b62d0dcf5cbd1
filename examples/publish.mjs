#!/usr/bin/env node
// A tiny stand-in for `nats req` on a JetStream subject, for shell scripts: publish one JSON
// payload with optional headers, print the PubAck and (with --answer) the admission answer.
//
//   node examples/publish.mjs vmsave.cmd.save '{"requestId":"hibernate-web-2","vm":"web-2"}' --msg-id hibernate-web-2 --answer
//
// Prints {"puback":{…}} and {"answer":{…}} lines. --answer subscribes to a fresh _INBOX subject and
// names it in the Vmsave-Reply-To header; --wait-ms bounds the wait (default 10000). Nothing is
// validated here: the scheduler's own answer says what is wrong with a bad payload.
import { parseArgs } from 'node:util';
import { createInbox, headers } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { connectToVmsave } from './save-and-follow.mjs';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { 'msg-id': { type: 'string' }, answer: { type: 'boolean' }, 'wait-ms': { type: 'string' } },
});
const [subject, payload] = positionals;
if (!subject || payload === undefined) {
  console.error('usage: publish.mjs SUBJECT JSON [--msg-id ID] [--answer] [--wait-ms N]');
  process.exit(2);
}
const nc = await connectToVmsave({ name: 'vmsave-publish-example' });
try {
  const h = headers();
  let sub;
  if (values.answer) {
    const inbox = createInbox(nc.options?.inboxPrefix);
    sub = nc.subscribe(inbox, { max: 1 });
    h.set('Vmsave-Reply-To', inbox);
  }
  const ack = await jetstream(nc).publish(subject, payload, { msgID: values['msg-id'], headers: h });
  console.log(JSON.stringify({ puback: { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate } }));
  if (sub && ack.duplicate) {
    sub.unsubscribe();
    console.log(JSON.stringify({ answer: null, why: 'duplicate publish: JetStream dropped it, so the scheduler never saw it; read the job events' }));
  } else if (sub) {
    const timer = setTimeout(() => sub.unsubscribe(), Number(values['wait-ms'] ?? 10_000));
    let answer = null;
    for await (const m of sub) answer = m.json();
    clearTimeout(timer);
    console.log(JSON.stringify({ answer }));
    if (!answer) process.exitCode = 1;
  }
} finally {
  await nc.drain();
}
