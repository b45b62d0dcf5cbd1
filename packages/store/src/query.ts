import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { JOB_STATUSES } from '@vmsave/jobs';
import { keys } from './keys.ts';
import type { JobView } from './projection.ts';

/** A page of jobs out of the read model's indexes (`jobs:all`, `jobs:state:*`, `jobs:kind:*`, `jobs:vm:*`, `jobs:host:*`). */
export interface JobQuery {
  /** Any of these statuses (none: every status). */
  states?: readonly string[];
  kind?: string;
  vm?: string;
  host?: string;
  /** Requested at or after / before this time (ms since the epoch). */
  since?: number;
  until?: number;
  /** `newest` first (the default) or `oldest` first, by request time. */
  order?: 'newest' | 'oldest';
  limit: number;
  offset?: number;
}

export interface JobQueryPage {
  items: JobView[];
  /** Jobs matching the whole query. */
  total: number;
  /** Jobs per status under the same kind/vm/host filters (neither the status nor the time filter). */
  totals: Record<string, number>;
}

/**
 * One page of jobs, filtered and sorted in Redis: the sorted sets of the filters are intersected
 * (ZINTERSTORE into a scratch key, smallest first, dropped in the same transaction), the page is
 * cut by score (request time) with LIMIT, and only its jobs are read. No filter walks the jobs.
 * The one query of the dashboard's API and of `vmsave jobs`.
 */
export async function queryJobs(redis: Redis, prefix: string, q: JobQuery): Promise<JobQueryPage> {
  const k = keys(prefix);
  const states = [...new Set(q.states ?? [])];
  const filters = [q.kind ? k.jobsByKind(q.kind) : undefined, q.vm ? k.jobsByVm(q.vm) : undefined, q.host ? k.jobsByHost(q.host) : undefined].filter(
    (x): x is string => x !== undefined,
  );
  const min = q.since !== undefined ? String(q.since) : '-inf';
  const max = q.until !== undefined ? `(${q.until}` : '+inf';
  const offset = q.offset ?? 0;
  const scratch: string[] = [];
  const tx = redis.multi();
  /** Commands queued so far: where each answer is in the transaction's replies. */
  let queued = 0;
  const q1 = <T>(x: T): T => {
    queued++;
    return x;
  };

  // The set of the status filter: one status's index, or the union of several.
  let stateSet: string | undefined;
  if (states.length === 1) stateSet = k.jobsByState(states[0]!);
  else if (states.length > 1) {
    stateSet = k.scratch(`u:${randomUUID()}`);
    scratch.push(stateSet);
    q1(tx).zunionstore(stateSet, states.length, ...states.map((s) => k.jobsByState(s)), 'AGGREGATE', 'MAX');
  }
  const sets = [...filters, ...(stateSet ? [stateSet] : [])];
  let index: string;
  if (sets.length === 0) index = k.jobsAll;
  else if (sets.length === 1) index = sets[0]!;
  else {
    index = k.scratch(`i:${randomUUID()}`);
    scratch.push(index);
    // Every index holds the same score (request time) for a job: MAX keeps it.
    q1(tx).zinterstore(index, sets.length, ...sets, 'AGGREGATE', 'MAX');
  }
  const pageAt = queued;
  if (q.order === 'oldest') q1(tx).zrange(index, min, max, 'BYSCORE', 'LIMIT', offset, q.limit);
  else q1(tx).zrange(index, max, min, 'BYSCORE', 'REV', 'LIMIT', offset, q.limit);
  if (min === '-inf' && max === '+inf') q1(tx).zcard(index);
  else q1(tx).zcount(index, min, max);
  // Totals per status under the other filters.
  const counted = filters.length === 0 ? undefined : filters.length === 1 ? filters[0]! : k.scratch(`f:${randomUUID()}`);
  if (counted && filters.length > 1) {
    scratch.push(counted);
    q1(tx).zinterstore(counted, filters.length, ...filters, 'AGGREGATE', 'MAX');
  }
  const totalsAt = queued;
  for (const s of JOB_STATUSES) {
    if (counted) tx.zintercard(2, k.jobsByState(s), counted);
    else tx.zcard(k.jobsByState(s));
  }
  if (scratch.length) tx.del(...scratch);
  const res = await tx.exec();
  if (!res) throw new Error('the read-model query was aborted');
  for (const [err] of res) if (err) throw err;
  const ids = res[pageAt]![1] as string[];
  const total = Number(res[pageAt + 1]![1]);
  const totals: Record<string, number> = {};
  JOB_STATUSES.forEach((s, i) => {
    totals[s] = Number(res[totalsAt + i]![1]);
  });
  if (ids.length === 0) return { items: [], total, totals };
  const raw = await redis.mget(ids.map((id) => k.job(id)));
  const items = raw.filter((r): r is string => r !== null).map((r) => JSON.parse(r) as JobView);
  return { items, total, totals };
}
