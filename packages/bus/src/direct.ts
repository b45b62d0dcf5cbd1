/**
 * Reading a stream without any consumer: `$JS.API.DIRECT.GET.<stream>` (streams with
 * `allow_direct: true`) for what is stored, and a core NATS subscription on the same subjects as
 * the wake-up for what is new. This is how clients and the dashboard read the event log and the
 * host announcements, so their NATS users need no `CONSUMER.CREATE` at all (docs/decisions.md,
 * "Clients read without consumers").
 *
 * NATS 2.9.10 answers one message per request: by `seq`, the first at or after `seq` matching
 * `next_by_subj`, or the last matching `last_by_subj`; `404 Message Not Found` when there is none.
 * A live message on a core subscription carries no stream sequence, so it is never yielded
 * itself: it only says "read again from the last sequence yielded". Order and exactly-once
 * therefore come from the stream sequences alone.
 */
import type { MsgHdrs } from '@nats-io/nats-core';
import { streams, subjects } from '@vmsave/contracts';
import type { Bus } from './connection.ts';
import { isTransient } from './retry.ts';
import { sleep } from './follow.ts';

/** One direct-get question: a sequence, the next message at or after `seq` on a filter, or the last on a filter. */
export type DirectQuery = { seq: number } | { nextBySubj: string; seq: number } | { lastBySubj: string };

/** A message read by direct get, with its stream sequence. */
export interface DirectMessage {
  seq: number;
  subject: string;
  data: Uint8Array;
  headers?: MsgHdrs;
}

export interface DirectOptions {
  /** The stream (default the event log, `VMSAVE_EVT`). */
  stream?: string;
  /** Per-request timeout (default 5 s). */
  timeoutMs?: number;
}

/** The direct-get server answered something other than a message or 404. */
export class DirectGetError extends Error {
  override name = 'DirectGetError';
}

/**
 * One direct get. Null when no message matches (404). A stream without `allow_direct` has no
 * responder on its direct-get subject: that error says so.
 */
export async function directGet(bus: Bus, query: DirectQuery, opts: DirectOptions = {}): Promise<DirectMessage | null> {
  const stream = opts.stream ?? streams.events.name;
  const body = 'lastBySubj' in query ? { last_by_subj: query.lastBySubj } : 'nextBySubj' in query ? { seq: query.seq, next_by_subj: query.nextBySubj } : { seq: query.seq };
  let r: Awaited<ReturnType<Bus['nc']['request']>>;
  try {
    r = await bus.nc.request(`$JS.API.DIRECT.GET.${stream}`, JSON.stringify(body), { timeout: opts.timeoutMs ?? 5000 });
  } catch (err) {
    // A stream without allow_direct does not answer at all (2.9.10: a timeout, not "no responders").
    const what = /no responders|503/i.test(String((err as Error)?.message ?? err)) ? 'no responder' : `no answer (${(err as Error)?.message ?? err})`;
    throw new DirectGetError(`direct get on stream ${stream}: ${what}; is the stream there with allow_direct (set by a service's ensureStreams)?`, { cause: err });
  }
  const h = r.headers;
  const code = h?.code ?? 0;
  if (code === 404) return null;
  if (code !== 0) throw new DirectGetError(`direct get on stream ${stream} ${JSON.stringify(body)}: ${code} ${h?.description ?? ''}`.trim());
  const seq = Number(h?.get('Nats-Sequence'));
  const subject = h?.get('Nats-Subject') ?? '';
  if (!Number.isSafeInteger(seq) || seq < 1 || !subject) throw new DirectGetError(`direct get on stream ${stream}: answer without Nats-Sequence/Nats-Subject headers`);
  return { seq, subject, data: r.data, headers: h };
}

const isAll = (stream: string, filter: string) => Object.values(streams).some((s) => s.name === stream && s.subjects.length === 1 && s.subjects[0] === filter);

export interface ReadDirectOptions extends DirectOptions {
  /** Subject filter (default every subject of the stream). */
  filter?: string;
  /** First sequence (default 1). */
  fromSeq?: number;
  /**
   * `walk`: one `next_by_subj` get after another (one round trip per message, none wasted).
   * `seq`: `window` gets by sequence in flight at once up to the stream's last sequence, filtered
   * here (every message of the range is fetched). Default: `seq` when the filter is the whole
   * stream, `walk` otherwise.
   */
  strategy?: 'walk' | 'seq';
  /** Requests in flight with `seq` (default 256). */
  window?: number;
  signal?: AbortSignal;
}

/** Whether a subject matches a NATS filter (`*` one token, `>` the rest). */
export function subjectMatches(filter: string, subject: string): boolean {
  const f = filter.split('.');
  const s = subject.split('.');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '>') return s.length > i;
    if (i >= s.length) return false;
    if (f[i] !== '*' && f[i] !== s[i]) return false;
  }
  return f.length === s.length;
}

/**
 * The stored messages matching `filter` from `fromSeq`, in sequence order, then it ends (at the
 * first 404 of a walk, or at the last sequence the stream had when a `seq` read began).
 */
export async function* readDirect(bus: Bus, opts: ReadDirectOptions = {}): AsyncGenerator<DirectMessage> {
  const stream = opts.stream ?? streams.events.name;
  const filter = opts.filter ?? Object.values(streams).find((s) => s.name === stream)?.subjects[0] ?? subjects.evtAll;
  let seq = Math.max(1, opts.fromSeq ?? 1);
  const strategy = opts.strategy ?? (isAll(stream, filter) ? 'seq' : 'walk');
  const o = { stream, timeoutMs: opts.timeoutMs };
  if (strategy === 'walk') {
    while (!opts.signal?.aborted) {
      const m = await retry(() => directGet(bus, { nextBySubj: filter, seq }, o), opts.signal);
      if (!m) return;
      yield m;
      seq = m.seq + 1;
    }
    return;
  }
  const info = await retry(() => bus.jsm.streams.info(stream), opts.signal);
  const last = info.state.last_seq;
  seq = Math.max(seq, info.state.first_seq);
  for await (const m of seqRange(bus, stream, seq, last, Math.max(1, opts.window ?? 256), opts.timeoutMs ?? 5000, opts.signal)) {
    if (m && subjectMatches(filter, m.subject)) yield m;
  }
}

/**
 * Direct gets of every sequence from `from` to `to`, `window` of them in flight, yielded in
 * sequence order (null: no message at that sequence, deleted or expired). Each request has its own
 * reply subject `<inbox>.<seq>` on one subscription, so a 404 (which names no sequence) is still
 * placed, and no per-request timer or promise is made (one nats.js `request` per get made a 10k read ~3x slower).
 * A sequence not answered within `timeoutMs` is asked again, up to 3 times.
 */
async function* seqRange(bus: Bus, stream: string, from: number, to: number, window: number, timeoutMs: number, signal?: AbortSignal): AsyncGenerator<DirectMessage | null> {
  const inbox = bus.newInbox();
  const api = `$JS.API.DIRECT.GET.${stream}`;
  const results = new Map<number, DirectMessage | null>();
  let failure: Error | undefined;
  let notify: (() => void) | undefined;
  const sub = bus.nc.subscribe(`${inbox}.*`, {
    callback: (err, m) => {
      if (err) failure ??= err;
      else {
        const s = Number(m.subject.slice(inbox.length + 1));
        const h = m.headers;
        const code = h?.code ?? 0;
        if (code === 404) results.set(s, null);
        else if (code !== 0)
          failure ??= new DirectGetError(
            `direct get on stream ${stream} {"seq":${s}}: ${code} ${h?.description ?? ''}${code === 503 ? ' (no responder: is the stream there with allow_direct?)' : ''}`.trim(),
          );
        else results.set(s, { seq: Number(h?.get('Nats-Sequence')), subject: h?.get('Nats-Subject') ?? '', data: m.data, headers: h });
      }
      notify?.();
    },
  });
  const ask = (s: number) => bus.nc.publish(api, JSON.stringify({ seq: s }), { reply: `${inbox}.${s}` });
  let next = from;
  let want = from;
  let retries = 0;
  const send = () => {
    while (next <= to && next - want < window) ask(next++);
  };
  try {
    send();
    while (want <= to && !signal?.aborted) {
      if (failure) throw failure;
      if (results.has(want)) {
        const m = results.get(want)!;
        results.delete(want);
        want++;
        retries = 0;
        send();
        yield m;
        continue;
      }
      let timedOut = false;
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          timedOut = true;
          resolve();
        }, timeoutMs);
        notify = () => {
          clearTimeout(t);
          resolve();
        };
      });
      notify = undefined;
      if (timedOut && !results.has(want)) {
        if (++retries > 3) throw new DirectGetError(`direct get on stream ${stream}: no answer for seq ${want} within ${timeoutMs} ms, ${retries} times (timeout)`);
        for (let s = want; s < next; s++) if (!results.has(s)) ask(s);
      }
    }
  } finally {
    sub.unsubscribe();
  }
}

function retry<T>(fn: () => Promise<T>, signal?: AbortSignal): Promise<T> {
  return (async () => {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (!isTransient(err) || signal?.aborted || attempt >= 4) throw err;
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
  })();
}

export interface FollowOptions extends DirectOptions {
  signal?: AbortSignal;
  /** Read again even without a wake-up this often (default 5 s): a core message lost on a reconnect. */
  pollMs?: number;
  /**
   * How long a live message not yet found by direct get is looked for again (default 2 s, at
   * growing intervals): the stream may store it a moment after the core subscriber hears it, or
   * never (a duplicate `Nats-Msg-Id`).
   */
  settleMs?: number;
  /** Told about a failed read (it is retried after a pause); for a log line. */
  onError?: (err: unknown, attempt: number) => void;
}

/**
 * The stored messages matching `filter` from `fromSeq`, then every new one, each exactly once and
 * in sequence order, until `signal` aborts.
 *
 * The core subscription is opened before the history is read, so nothing published after that
 * moment is missed. Each live message only wakes the reader: it reads by direct get from the last
 * sequence it yielded, so the gap between history and live is closed by the stream itself and a
 * live message is never yielded without its sequence. A live message the stream does not have
 * yet (the subscriber can hear a publish before the stream stores it) is remembered by its
 * subject and bytes and looked for again for `settleMs`. A poll every `pollMs`, and a read after
 * every reconnect, catch wake-ups lost while NATS was away.
 */
export async function* followDirect(bus: Bus, filter: string, fromSeq: number, opts: FollowOptions = {}): AsyncGenerator<DirectMessage> {
  const signal = opts.signal;
  const pollMs = opts.pollMs ?? 5000;
  const settleMs = opts.settleMs ?? 2000;
  const keyOf = (subject: string, data: Uint8Array) => `${subject}\u0000${Buffer.from(data).toString('base64')}`;
  /** Live messages heard but not yet read from the stream: key → times they were heard. */
  const heard = new Map<string, number[]>();
  let dirty = true;
  let wake: (() => void) | undefined;
  const poke = () => {
    dirty = true;
    wake?.();
  };
  const sub = bus.nc.subscribe(filter, {
    callback: (err, m) => {
      if (err) return;
      const k = keyOf(m.subject, m.data);
      const list = heard.get(k) ?? [];
      list.push(Date.now());
      heard.set(k, list);
      poke();
    },
  });
  const offReconnect = bus.onReconnect(poke);
  const poll = setInterval(poke, pollMs);
  signal?.addEventListener('abort', poke);
  let next = Math.max(1, fromSeq);
  let retryDelay = 0;
  let failures = 0;
  try {
    while (!signal?.aborted) {
      dirty = false;
      try {
        for await (const m of readDirect(bus, { ...opts, filter, fromSeq: next })) {
          next = m.seq + 1;
          const k = keyOf(m.subject, m.data);
          const list = heard.get(k);
          if (list) {
            list.shift();
            if (!list.length) heard.delete(k);
          }
          yield m;
          if (signal?.aborted) return;
        }
        failures = 0;
      } catch (err) {
        if (signal?.aborted) return;
        opts.onError?.(err, ++failures);
        dirty = true;
        await sleep(Math.min(5000, 100 * 2 ** Math.min(failures, 6)), signal);
        continue;
      }
      // Forget live messages the stream never stored.
      const now = Date.now();
      for (const [k, list] of heard) {
        while (list.length && now - list[0]! > settleMs) list.shift();
        if (!list.length) heard.delete(k);
      }
      if (heard.size) {
        // Heard but not readable yet: read again soon, backing off.
        retryDelay = Math.min(200, retryDelay ? retryDelay * 2 : 1);
        await sleep(retryDelay, signal);
        continue;
      }
      retryDelay = 0;
      if (dirty) continue;
      await new Promise<void>((resolve) => {
        wake = resolve;
        if (dirty || signal?.aborted) resolve();
      });
      wake = undefined;
    }
  } finally {
    signal?.removeEventListener('abort', poke);
    clearInterval(poll);
    offReconnect();
    sub.unsubscribe();
  }
}
