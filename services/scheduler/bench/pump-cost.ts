/**
 * What one `pump()` costs with N jobs waiting, in isolation (no NATS, no Redis): the scheduler's
 * state is filled with N requested jobs spread over H hosts whose slots are all taken, so pump
 * walks and sorts the whole queue and dispatches nothing. The load benchmark calls pump once per
 * command, per foreign log event and per tick; this shows how each call grows with the backlog.
 *
 *   npx tsx bench/pump-cost.ts [--backlogs 1000,5000,10000] [--hosts 50]
 */
import { performance } from 'node:perf_hooks';
import { makeEvent, type JobEvent } from '@vmsave/contracts';
import { createLogger, type Bus } from '@vmsave/bus';
import { evolve, initialState } from '@vmsave/jobs';
import type { Leases } from '@vmsave/store';
import { loadConfig } from '../src/config.ts';
import { Journal } from '../src/journal.ts';
import { Placement } from '../src/placement.ts';
import { SchedulerState } from '../src/state.ts';
import { pickNext, type QueuedJob } from '../src/policy.ts';
import { hostName, hostOfVm, vmName } from './fleet.ts';
import { percentile } from './stats.ts';

const argv = process.argv.slice(2);
const opt = (k: string, d: string) => {
  const i = argv.indexOf(`--${k}`);
  return i >= 0 ? argv[i + 1]! : d;
};
const backlogs = opt('backlogs', '1000,5000,10000').split(',').map(Number);
const hosts = Number(opt('hosts', '50'));
const vms = 1000;

async function measure(n: number): Promise<{ pumpMs: number[]; pickMs: number[] }> {
  const cfg = loadConfig({});
  // The scheduler's state and its placement part, without NATS or Redis (nothing is dispatched).
  const log = createLogger('pump-cost', { level: 'silent' });
  const state = new SchedulerState();
  const deps = { bus: {} as Bus, state, leases: {} as Leases, cfg, log };
  const journal = new Journal({ ...deps, wake: () => undefined });
  const placement = new Placement({ ...deps, journal, signal: new AbortController().signal });
  const s = { hosts: state.hosts as Map<string, { announcement: unknown; lastSeenMs: number }>, put: state.put.bind(state), pump: () => placement.pump() };
  const now = new Date().toISOString();
  for (let h = 0; h < hosts; h++) {
    s.hosts.set(hostName(h), {
      lastSeenMs: Date.now(),
      announcement: {
        schemaVersion: 1,
        host: hostName(h),
        executorId: 'x',
        at: now,
        startedAt: now,
        sharedImageDir: false,
        qemu: { version: '10.0.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
        imageDir: '/images',
        freeBytes: 2 ** 50,
        vms: Array.from({ length: vms / hosts }, (_, k) => ({ name: vmName(k * hosts + h), uuid: 'u', machine: 'q35', memoryMiB: 1024, vcpus: 1, status: 'running' })),
      },
    });
  }
  const add = (id: string, events: JobEvent[]) => s.put(id, events.reduce(evolve, initialState()));
  // Two running jobs per host: every slot is taken, so pump only walks the queue.
  for (let h = 0; h < hosts * 2; h++) {
    const id = `s-busy${h}`;
    const vm = vmName(h % vms);
    add(id, [
      makeEvent(
        'SaveRequested',
        id,
        { request: { schemaVersion: 1, requestId: id, vm, format: 'auto', channels: 1, directIo: false, after: 'running', priority: 'normal' } },
        { source: 'probe' },
      ),
      makeEvent('SaveScheduled', id, { host: hostName(hostOfVm(h % vms, hosts)), attempt: 1, fencingToken: h + 1, deadlineAt: now }, { source: 'probe' }),
    ]);
  }
  for (let i = 0; i < n; i++) {
    const id = `s-q${i}`;
    add(id, [
      makeEvent(
        'SaveRequested',
        id,
        { request: { schemaVersion: 1, requestId: id, vm: vmName(i % vms), format: 'auto', channels: 1, directIo: false, after: 'running', priority: 'normal' } },
        { source: 'probe', at: new Date(Date.now() + i) },
      ),
    ]);
  }
  const pumpMs: number[] = [];
  for (let k = 0; k < 60; k++) {
    const t = performance.now();
    await s.pump();
    pumpMs.push(performance.now() - t);
  }
  // pickNext alone, on the same queue.
  const queue: QueuedJob[] = Array.from({ length: n }, (_, i) => ({
    jobId: `s-q${i}`,
    host: hostName(hostOfVm(i % vms, hosts)),
    vm: vmName(i % vms),
    priority: 'normal',
    requestedAtMs: Date.now() + i,
  }));
  const active = new Map(Array.from({ length: hosts }, (_, h) => [hostName(h), 2] as const));
  const busy = new Set(Array.from({ length: hosts * 2 }, (_, h) => vmName(h)));
  const pickMs: number[] = [];
  for (let k = 0; k < 60; k++) {
    const t = performance.now();
    pickNext(queue, active, busy, () => 2, Date.now() + n);
    pickMs.push(performance.now() - t);
  }
  return { pumpMs: pumpMs.slice(10), pickMs: pickMs.slice(10) };
}

console.log('| jobs queued | pump() p50 | pump() p90 | of it pickNext() p50 |');
console.log('|---:|---:|---:|---:|');
for (const n of backlogs) {
  const { pumpMs, pickMs } = await measure(n);
  console.log(`| ${n.toLocaleString('en-US')} | ${percentile(pumpMs, 50).toFixed(2)} ms | ${percentile(pumpMs, 90).toFixed(2)} ms | ${percentile(pickMs, 50).toFixed(2)} ms |`);
}
