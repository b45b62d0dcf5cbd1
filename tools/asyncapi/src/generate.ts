import { Ajv, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { stringify } from 'yaml';
import { SCHEMA_VERSION, inboxPrefixOf, streams, subjects } from '@vmsave/contracts';
import { allMessages, channels, extraSchemas, operations, parameters, type ChannelInfo, type HeaderInfo, type MessageInfo } from './catalog.ts';
import { JSON_SCHEMA_DRAFT, jsonSchemaOf, type JsonSchema } from './schemas.ts';

/** Where each generated file goes, relative to the repository root. */
export const ASYNCAPI_PATH = 'docs/asyncapi.yaml';
export const SCHEMAS_DIR = 'docs/schemas';
export const REGENERATE = 'npm run generate -w tools/asyncapi';

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;

/** A draft-07 validator with the string formats zod emits (`date-time`, `uuid`, …). */
export function newAjv(): Ajv {
  const ajv = new Ajv({ allErrors: true, strict: true });
  addFormats(ajv);
  return ajv;
}

export class GenerationError extends Error {
  override name = 'GenerationError';
}

export interface Generated {
  /** Repository-relative path → file content. */
  files: Map<string, string>;
  /** Message name → its standalone JSON Schema. */
  schemas: Map<string, JsonSchema>;
}

/**
 * Build `docs/asyncapi.yaml` and `docs/schemas/*.json` in memory from the contracts package.
 * Throws when a channel's address disagrees with the contracts' subject builders, or an example
 * does not validate against its zod schema and its JSON Schema.
 */
export function generate(): Generated {
  checkAddresses();
  const ajv = newAjv();
  const schemas = new Map<string, JsonSchema>();
  const files = new Map<string, string>();

  const described = [
    ...allMessages().map((m) => ({ name: m.name, title: m.title, description: m.description ? `${m.summary} ${m.description}` : m.summary, schema: m.schema })),
    ...extraSchemas,
  ];
  for (const m of described) {
    if (schemas.has(m.name)) throw new GenerationError(`two messages are named ${m.name}`);
    const { $schema: _drop, ...body } = jsonSchemaOf(m.schema);
    const standalone: JsonSchema = { $schema: JSON_SCHEMA_DRAFT, title: m.title, description: m.description, ...body };
    schemas.set(m.name, standalone);
    files.set(`${SCHEMAS_DIR}/${m.name}.json`, `${JSON.stringify(standalone, null, 2)}\n`);
  }

  const validators = new Map<string, ValidateFunction>();
  for (const [name, schema] of schemas) validators.set(name, ajv.compile(schema));
  for (const m of allMessages()) {
    for (const e of m.examples) {
      const parsed = m.schema.safeParse(e.payload);
      if (!parsed.success) throw new GenerationError(`example ${m.name}/${e.name} fails the zod schema: ${parsed.error.message}`);
      const v = validators.get(m.name)!;
      if (!v(e.payload)) throw new GenerationError(`example ${m.name}/${e.name} fails its JSON Schema: ${ajv.errorsText(v.errors)}`);
      for (const h of Object.keys(e.headers ?? {})) {
        if (!m.headers?.[h]) throw new GenerationError(`example ${m.name}/${e.name} sets header ${h}, which the message does not declare`);
      }
    }
  }
  for (const x of extraSchemas) {
    const v = validators.get(x.name)!;
    for (const m of allMessages().filter((m) => x.schema.safeParse(m.examples[0]!.payload).success)) {
      if (!v(m.examples[0]!.payload)) throw new GenerationError(`${x.name} JSON Schema refuses the ${m.name} example: ${ajv.errorsText(v.errors)}`);
    }
  }

  files.set(`${SCHEMAS_DIR}/index.json`, `${JSON.stringify(schemaIndex(), null, 2)}\n`);
  files.set(ASYNCAPI_PATH, renderAsyncApi(schemas));
  return { files, schemas };
}

/** Which schema file validates which subject: the table a stranger's code can load. */
function schemaIndex() {
  return {
    description: `JSON Schemas (draft-07) of every vmsave bus message, schemaVersion ${SCHEMA_VERSION}. Generated from packages/contracts by tools/asyncapi (${REGENERATE}); do not edit.`,
    schemaVersion: SCHEMA_VERSION,
    messages: channels.flatMap((c) =>
      c.messages.map((m) => ({ name: m.name, file: `${m.name}.json`, subject: c.address ?? `(${c.title.toLowerCase()}: the reply subject)`, audience: c.audience })),
    ),
    unions: extraSchemas.map((x) => ({ name: x.name, file: `${x.name}.json`, description: x.description })),
  };
}

/** Every channel address agrees with the subject the contracts package builds, and with its message definition. */
function checkAddresses(): void {
  for (const c of channels) {
    if (c.address === null) continue;
    const params = [...c.address.matchAll(/\{(\w+)\}/g)].map((m) => m[1]!);
    for (const p of params) if (!parameters[p]) throw new GenerationError(`channel ${c.id}: parameter ${p} is not described`);
    if (params.length) {
      if (!c.sample) throw new GenerationError(`channel ${c.id}: a parameterised address needs a sample`);
      const filled = c.address.replace(/\{(\w+)\}/g, (_, p: string) => c.sample!.values[p] ?? `{${p}}`);
      if (filled !== c.sample.subject) throw new GenerationError(`channel ${c.id}: ${c.address} gives ${filled}, the contracts build ${c.sample.subject}`);
    }
    const wildcard = c.address.replace(/\{\w+\}/g, '*');
    const def = c.definition?.subject;
    const covered = def !== undefined && (def === wildcard || (def.endsWith('.>') && wildcard.startsWith(def.slice(0, -1))));
    if (!covered) throw new GenerationError(`channel ${c.id}: ${wildcard} is not the subject of its message definition (${def})`);
    if (c.transport.kind === 'jetstream') {
      const s = c.transport.stream;
      if (!s.subjects.some((f) => f === wildcard || (f.endsWith('.>') && wildcard.startsWith(f.slice(0, -1))) || f === c.address)) {
        throw new GenerationError(`channel ${c.id}: stream ${s.name} does not hold ${wildcard}`);
      }
    }
  }
}

const ref = (pointer: string) => ({ $ref: pointer });

function headersSchema(headers: Record<string, HeaderInfo>): JsonSchema {
  return {
    type: 'object',
    properties: Object.fromEntries(Object.entries(headers).map(([k, h]) => [k, { type: 'string', description: h.description }])),
    ...(Object.values(headers).some((h) => h.required)
      ? {
          required: Object.entries(headers)
            .filter(([, h]) => h.required)
            .map(([k]) => k),
        }
      : {}),
  };
}

function transportExtension(c: ChannelInfo) {
  const t = c.transport;
  if (t.kind !== 'jetstream') return { kind: t.kind === 'core' ? 'core NATS' : 'core NATS reply' };
  return {
    kind: 'JetStream',
    stream: t.stream.name,
    retention: t.stream.retention,
    storage: t.stream.storage,
    duplicateWindowMs: t.stream.duplicateWindowMs,
    ...(t.stream.maxMsgsPerSubject ? { maxMsgsPerSubject: t.stream.maxMsgsPerSubject } : {}),
    ...(t.stream.maxAgeMs ? { maxAgeMs: t.stream.maxAgeMs } : {}),
    // Read without a consumer: `$JS.API.DIRECT.GET.<stream>` (how the client role reads).
    ...(t.stream.allowDirect ? { allowDirect: true } : {}),
  };
}

function messageObject(m: MessageInfo, audience: string) {
  return {
    name: m.name,
    title: m.title,
    summary: m.summary,
    ...(m.description ? { description: m.description } : {}),
    contentType: 'application/json',
    ...(m.headers ? { headers: headersSchema(m.headers) } : {}),
    payload: ref(`#/components/schemas/${m.name}`),
    ...(m.correlationId ? { correlationId: m.correlationId } : {}),
    tags: [{ name: audience }],
    'x-vmsave-schema-file': `${SCHEMAS_DIR}/${m.name}.json`,
    examples: m.examples.map((e) => ({ name: e.name, summary: e.summary, ...(e.headers ? { headers: e.headers } : {}), payload: e.payload })),
  };
}

const DESCRIPTION = `
vmsave saves and restores the memory state of QEMU VMs. Other systems talk to it over NATS:
they **publish commands** (save, restore, cancel) into JetStream and **read the event log**.

**Point of view.** This document describes *vmsave* as the application: an operation with
\`action: receive\` is a message vmsave consumes (a client publishes it), \`action: send\` is one
vmsave publishes (a client may subscribe or read it). Channels tagged \`internal\` are between
vmsave's own services and listed for completeness; vmsave's \`client\` NATS role cannot use them.

**Answers.** A command published with a JetStream client gets the server's PubAck on the
publish's own NATS reply subject (\`{stream: "VMSAVE_CMD", seq, duplicate}\`). Because that reply
subject is taken, the scheduler's admission answer goes to the subject named in the
\`Vmsave-Reply-To\` header (under \`_INBOX.\`): one AdmissionReply, once the request is
admitted or rejected. A publish with the same \`Nats-Msg-Id\` inside the 24 h duplicate window
is dropped by JetStream (\`duplicate: true\` in the PubAck) and gets no second answer: read the
job's events (\`vmsave.evt.<jobId>.>\`) instead. The job id is derived from the request id:
\`s-\` (save) or \`r-\` (restore) + the first 20 hex digits of
sha256(\`save\` or \`restore\` + NUL + requestId).

**Schema evolution.** Within one \`schemaVersion\`, fields are only ever added, and only as
optional ones; readers ignore fields they do not know (no schema here sets
\`additionalProperties: false\`). A breaking change bumps \`schemaVersion\` and vmsave upcasts
the old shape on read. Fields with a default may be left out by a publisher.

Generated from packages/contracts by tools/asyncapi (\`${REGENERATE}\`); do not edit.
The JSON Schemas are also in \`docs/schemas/\` (draft-07); see \`docs/bus-api.md\`.
`.trim();

/** The streams the client role reads by direct get (`allowDirect` in the contracts; the dashboard also reads VMSAVE_DLQ). */
const directStreams = [streams.events, streams.hosts].map((s) => s.name).join(' and ');

function renderAsyncApi(schemas: Map<string, JsonSchema>): string {
  const doc = {
    asyncapi: '3.0.0',
    info: {
      title: 'vmsave bus',
      // 1.1: the partitioned command subjects `vmsave.cmd.<kind>.<NN>` (the bare ones stay accepted).
      version: `${SCHEMA_VERSION}.1.0`,
      description: DESCRIPTION,
      tags: [
        { name: 'public', description: 'For other systems: the client role may publish or read it.' },
        { name: 'internal', description: 'Between vmsave services; not for clients.' },
      ],
    },
    defaultContentType: 'application/json',
    servers: {
      local: {
        host: '127.0.0.1:4222',
        protocol: 'nats',
        description: 'The default NATS_URL. JetStream must be enabled. A cluster: any node.',
        security: [ref('#/components/securitySchemes/clientRole')],
      },
    },
    channels: Object.fromEntries(
      channels.map((c) => [
        c.id,
        {
          address: c.address,
          title: c.title,
          description: c.description,
          messages: Object.fromEntries(c.messages.map((m) => [m.name, ref(`#/components/messages/${m.name}`)])),
          ...(c.address && /\{/.test(c.address)
            ? { parameters: Object.fromEntries([...c.address.matchAll(/\{(\w+)\}/g)].map((p) => [p[1]!, ref(`#/components/parameters/${p[1]}`)])) }
            : {}),
          tags: [{ name: c.audience }],
          'x-vmsave-transport': transportExtension(c),
          'x-vmsave-publishers': c.publishers,
          'x-vmsave-consumers': c.consumers,
        },
      ]),
    ),
    operations: Object.fromEntries(
      operations.map((o) => {
        const ch = channels.find((c) => c.id === o.channel);
        if (!ch) throw new GenerationError(`operation ${o.id}: no channel ${o.channel}`);
        const replyCh = o.reply ? channels.find((c) => c.id === o.reply!.channel) : undefined;
        if (o.reply && !replyCh) throw new GenerationError(`operation ${o.id}: no reply channel ${o.reply.channel}`);
        return [
          o.id,
          {
            action: o.action,
            channel: ref(`#/channels/${ch.id}`),
            title: o.title,
            summary: o.summary,
            description: o.description,
            messages: ch.messages.map((m) => ref(`#/channels/${ch.id}/messages/${m.name}`)),
            ...(o.reply && replyCh
              ? {
                  reply: {
                    ...(o.reply.addressLocation ? { address: { location: o.reply.addressLocation, description: o.reply.description } } : {}),
                    channel: ref(`#/channels/${replyCh.id}`),
                    messages: replyCh.messages.map((m) => ref(`#/channels/${replyCh.id}/messages/${m.name}`)),
                  },
                }
              : {}),
            tags: [{ name: o.audience }],
          },
        ];
      }),
    ),
    components: {
      schemas: Object.fromEntries(
        [...schemas].map(([name, s]) => {
          const { $schema: _drop, ...body } = s;
          return [name, body];
        }),
      ),
      messages: Object.fromEntries(channels.flatMap((c) => c.messages.map((m) => [m.name, messageObject(m, c.audience)]))),
      parameters: Object.fromEntries(
        Object.entries(parameters).map(([k, p]) => [
          k,
          {
            description: p.description,
            ...(p.enum ? { enum: [...p.enum] } : {}),
            examples: [...p.examples],
          },
        ]),
      ),
      securitySchemes: {
        clientRole: {
          type: 'userPassword',
          description:
            `NATS user \`client\` (docs/operations.md): may publish \`${subjects.cmd.all}\` (save, restore, cancel, drain), subscribe \`${subjects.evtAll}\`, ` +
            `\`${subjects.progressAll}\` and its own inbox prefix \`${inboxPrefixOf('client')}.>\` (connect with that \`inboxPrefix\`), ` +
            `and read streams ${directStreams} without any consumer: direct get (\`$JS.API.DIRECT.GET.<stream>\`) and stream info; ` +
            'every `$JS.API.CONSUMER.>` call is refused. ' +
            `The scheduler's own user also publishes \`${subjects.cmd.save}\`, \`${subjects.cmd.restore}\` and \`${subjects.cmd.cancel}\`: ` +
            `a drain's child commands (with \`drainId\`), admitted as a client's; only clients publish \`${subjects.cmd.drain}\`. ` +
            'Its password is VMSAVE_NATS_PASS_CLIENT in .vmsave/env. A NATS without authorization needs none.',
        },
      },
    },
  };
  const header =
    `# GENERATED from packages/contracts by tools/asyncapi — do not edit; run \`${REGENERATE}\`.\n` +
    `# Streams: ${Object.values(streams)
      .map((s) => s.name)
      .join(', ')}.\n`;
  return header + stringify(doc, { lineWidth: 0, aliasDuplicateObjects: false });
}
