/**
 * Two active schedulers (`src/main.ts` twice, as their own processes) on a private nats-server
 * and the real Redis (a prefix of their own): they split the 16 VM partitions, admit commands on
 * every partition exactly once, still admit a save on the bare subject (an old client), and keep
 * a per-host limit of 1 while both dispatch to the one host. One is SIGKILLed: the other takes
 * all 16 partitions within a few partition TTLs and admits and runs the rest.
 *
 * Executors are simulated in this process (`bench/fleet.ts`: started, a short sleep, completed).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jobIdFor, messages, PARTITIONS, partitionOf, subjects, type SaveRequestInput } from '@vmsave/contracts';
import { Bus, createLogger, publishValidated, readLog } from '@vmsave/bus';
import { testUrls, uniq, waitFor } from '@vmsave/testkit';
import { Fleet, vmName } from '../bench/fleet.ts';
import { startNats, startScheduler, stop, type Proc } from '../bench/procs.ts';

const log = createLogger('multi-test', { level: 'silent' });
const PARTITION_TTL_MS = 2000;
let dir: string;
let nats: { proc: Proc; url: string };
let bus: Bus;
let fleet: Fleet;
const schedulers: Record<string, Proc> = {};
let env: Record<string, string>;

/** The scheduler's pino lines, parsed (its log file). */
async function lines(p: Proc): Promise<Array<Record<string, unknown>>> {
  const text = await readFile(p.logFile, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** The partitions a scheduler last said it owns (`partitions owned`). */
async function owned(p: Proc): Promise<number[] | undefined> {
  const last = (await lines(p)).filter((l) => l.msg === 'partitions owned').at(-1);
  return last?.partitions as number[] | undefined;
}

/** Two VMs of the fleet per partition (the fleet's VM j is `vmName(j)`, all on host 0). */
const VMS = 400;
function vmsByPartition(perPartition: number): string[][] {
  const out: string[][] = Array.from({ length: PARTITIONS }, () => []);
  for (let j = 0; j < VMS; j++) {
    const p = partitionOf(vmName(j));
    if (out[p]!.length < perPartition) out[p]!.push(vmName(j));
  }
  return out;
}

const run = uniq('multi');
const save = (vm: string, n: number): SaveRequestInput => ({ requestId: `${run}-${n}-${vm}`, vm, format: 'legacy' });
const published: string[] = [];

async function publishSave(req: SaveRequestInput, bare = false): Promise<void> {
  const subject = bare ? subjects.cmd.save : subjects.cmd.partitioned('save', partitionOf(req.vm));
  await publishValidated(bus, messages.saveRequest, subject, req, { msgId: req.requestId });
  published.push(jobIdFor('save', req.requestId));
}

/** The whole log: per job its event types in order, and the most jobs on the host at once (log order). */
async function fromLog(): Promise<{ types: Map<string, string[]>; maxOnHost: number }> {
  const types = new Map<string, string[]>();
  const onHost = new Set<string>();
  let maxOnHost = 0;
  for await (const { event } of readLog(bus, {})) {
    types.set(event.jobId, [...(types.get(event.jobId) ?? []), event.type]);
    if (event.type === 'SaveScheduled') onHost.add(event.jobId);
    if (event.type === 'SaveCompleted' || event.type === 'SaveFailed' || event.type === 'SaveCancelled') onHost.delete(event.jobId);
    maxOnHost = Math.max(maxOnHost, onHost.size);
  }
  return { types, maxOnHost };
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-multi-'));
  nats = await startNats(dir);
  bus = await Bus.connect({ servers: nats.url, name: 'multi-test' });
  await bus.ensureStreams();
  // One host, limit 1 (VMSAVE_HOST_LIMIT), VMs of every partition on it.
  fleet = new Fleet(bus, { hosts: 1, vms: VMS, hostLimit: 2, saveMs: [20, 60], heartbeatMs: 300 }, log);
  await fleet.announce();
  fleet.start();
  const { redisUrl } = await testUrls();
  env = {
    NATS_URL: nats.url,
    REDIS_URL: redisUrl,
    VMSAVE_REDIS_PREFIX: uniq('sched-multi'),
    VMSAVE_HOST_LIMIT: '1',
    VMSAVE_PARTITION_TTL_MS: String(PARTITION_TTL_MS),
    VMSAVE_LEASE_TTL_MS: '10000',
    VMSAVE_TICK_MS: '200',
    VMSAVE_VERDICT_TIMEOUT_MS: '86400000',
    VMSAVE_METRICS_PORT: '0',
    VMSAVE_LOG_LEVEL: 'info',
  };
  schedulers.a = await startScheduler(dir, { ...env, VMSAVE_SCHEDULER_ID: 'sched-a' }, { name: 'sched-a' });
  schedulers.b = await startScheduler(dir, { ...env, VMSAVE_SCHEDULER_ID: 'sched-b' }, { name: 'sched-b' });
});

afterAll(async () => {
  for (const p of Object.values(schedulers)) await stop(p);
  await fleet?.stop();
  await bus?.close();
  if (nats) await stop(nats.proc);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('two active schedulers', () => {
  it('split the 16 partitions between them', async () => {
    const split = await waitFor(
      'the partitions split between the two',
      async () => {
        const [a, b] = [await owned(schedulers.a!), await owned(schedulers.b!)];
        if (!a?.length || !b?.length || a.length + b.length !== PARTITIONS) return undefined;
        return { a, b };
      },
      30_000,
      100,
    );
    expect([...split.a, ...split.b].sort((x, y) => x - y)).toEqual(Array.from({ length: PARTITIONS }, (_, i) => i));
    expect(split.a.length).toBe(8);
    expect(split.b.length).toBe(8);
  });

  it('admit commands on every partition exactly once, and a save on the bare subject, within the host limit of 1', async () => {
    const batch = vmsByPartition(2).flat();
    for (const vm of batch) await publishSave(save(vm, 1));
    // An old client: the bare subject, forwarded (or admitted) by the `_global` holder.
    await publishSave(save(batch[0]!, 99), true);
    await waitFor(
      'every save completed',
      async () => {
        const { types } = await fromLog();
        return published.every((id) => types.get(id)?.includes('SaveCompleted')) || undefined;
      },
      120_000,
      250,
    );
    const { types, maxOnHost } = await fromLog();
    for (const id of published) expect(types.get(id)!.filter((t) => t === 'SaveRequested')).toHaveLength(1);
    expect(maxOnHost).toBe(1);
    expect(fleet.duplicates).toBe(0);
    // Both dispatched to the one host: each scheduled saves of its own partitions (SaveScheduled by its id is not in the event, so by partition).
    const [a, b] = [await owned(schedulers.a!), await owned(schedulers.b!)];
    const scheduledIn = (ps: number[]) =>
      batch.filter((vm) => ps.includes(partitionOf(vm))).filter((vm) => types.get(jobIdFor('save', save(vm, 1).requestId))?.includes('SaveScheduled'));
    expect(scheduledIn(a!).length).toBeGreaterThan(0);
    expect(scheduledIn(b!).length).toBeGreaterThan(0);
  });

  it('one SIGKILLed: the other owns all 16 within a few TTLs and admits and runs the rest', async () => {
    const before = published.length;
    const batch = vmsByPartition(1).flat();
    // Commands in flight when one scheduler dies.
    for (const vm of batch.slice(0, 8)) await publishSave(save(vm, 2));
    schedulers.b!.child.kill('SIGKILL');
    await new Promise<void>((r) => (schedulers.b!.child.exitCode !== null || schedulers.b!.child.signalCode !== null ? r() : schedulers.b!.child.once('exit', () => r())));
    const killedAt = Date.now();
    await waitFor('sched-a to own all 16 partitions', async () => ((await owned(schedulers.a!))?.length === PARTITIONS ? true : undefined), 10 * PARTITION_TTL_MS, 100);
    const takeoverMs = Date.now() - killedAt;
    for (const vm of batch.slice(8)) await publishSave(save(vm, 2));
    await publishSave(save(batch[1]!, 98), true);
    // Commands the dead one had taken but not acked come back after the consumer's ack wait (30 s).
    await waitFor(
      'every save completed after the takeover',
      async () => {
        const { types } = await fromLog();
        return published.every((id) => types.get(id)?.includes('SaveCompleted')) || undefined;
      },
      150_000,
      250,
    );
    const { types, maxOnHost } = await fromLog();
    for (const id of published) expect(types.get(id)!.filter((t) => t === 'SaveRequested')).toHaveLength(1);
    expect(published.length - before).toBe(batch.length + 1);
    expect(maxOnHost).toBe(1);
    expect(fleet.duplicates).toBe(0);
    // Within a few partition TTLs (the members' heartbeat ages out, the dead one's leases expire).
    expect(takeoverMs).toBeLessThan(10 * PARTITION_TTL_MS);
  });
});
