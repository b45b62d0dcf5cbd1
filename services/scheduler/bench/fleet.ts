/**
 * Simulated executors, all in the benchmark process: each host announces its VMs, sends a
 * heartbeat every second naming its in-flight jobs, and consumes `vmsave.work.<host>` (one durable
 * per host, as the real executor does: VMSAVE_WORK is a work-queue stream). A work item is "saved"
 * by emitting SaveStarted, sleeping a short while, and emitting SaveCompleted with the item's
 * attempt and fencing token, so the scheduler sees the slot free again.
 */
import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { makeEvent, messages, streams, subjects, WorkItem, type Heartbeat } from '@vmsave/contracts';
import { ack, publishCore, publishEvent, publishValidated, runConsumer, type Bus, type Logger } from '@vmsave/bus';

export interface FleetSpec {
  hosts: number;
  vms: number;
  /** Jobs a host runs at once (the scheduler's VMSAVE_HOST_LIMIT; the announcement leaves it unset). */
  hostLimit: number;
  /** Simulated save duration, uniform in [min, max] ms. */
  saveMs: [number, number];
  heartbeatMs?: number;
}

const GiB = 1024 ** 3;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const hostName = (i: number): string => `load-h${String(i).padStart(3, '0')}`;
export const vmName = (j: number): string => `load-vm${String(j).padStart(5, '0')}`;
/** VM j lives on host j mod hosts, so requests that go round-robin over the VMs also go round-robin over the hosts. */
export const hostOfVm = (j: number, hosts: number): number => j % hosts;

export class Fleet {
  private readonly ac = new AbortController();
  private readonly tasks: Promise<unknown>[] = [];
  private readonly inflight = new Map<string, Map<string, Heartbeat['jobs'][number]>>();
  private timer?: NodeJS.Timeout;
  private readonly executorId = `load-${randomUUID().slice(0, 8)}`;
  readonly startedAt = new Date().toISOString();
  /** Work items received and saves completed, for the progress line. */
  received = 0;
  completed = 0;
  /** Errors in the simulated executors (a publish that failed); they should stay 0. */
  errors = 0;
  /** Work items received for an attempt (`jobId.attempt`) already received: a save run twice. */
  duplicates = 0;
  private readonly seen = new Set<string>();

  constructor(
    private readonly bus: Bus,
    private readonly spec: FleetSpec,
    private readonly log: Logger,
  ) {
    // One work consumer per host listens on this signal.
    setMaxListeners(0, this.ac.signal);
  }

  /** Announce every host (awaited: the scheduler reads announcements when it starts). */
  async announce(): Promise<void> {
    const { hosts, vms } = this.spec;
    const perHost: string[][] = Array.from({ length: hosts }, () => []);
    for (let j = 0; j < vms; j++) perHost[hostOfVm(j, hosts)]!.push(vmName(j));
    const at = new Date().toISOString();
    await Promise.all(
      perHost.map((names, i) =>
        publishValidated(this.bus, messages.hostAnnouncement, subjects.host(hostName(i)), {
          host: hostName(i),
          executorId: `${this.executorId}-${i}`,
          at,
          startedAt: this.startedAt,
          qemu: { version: '10.0.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
          imageDir: '/var/lib/vmsave/images',
          freeBytes: 1024 * 1024 * GiB,
          throughputBytesPerSec: 1 * GiB,
          vms: names.map((name) => ({ name, uuid: randomUUID(), machine: 'q35', memoryMiB: 1024, vcpus: 1, status: 'running' })),
        }),
      ),
    );
  }

  /** Heartbeats and one work consumer per host, until `stop()`. */
  start(): void {
    const { hosts, hostLimit } = this.spec;
    for (let i = 0; i < hosts; i++) {
      const host = hostName(i);
      this.inflight.set(host, new Map());
      this.tasks.push(
        runConsumer(this.bus, {
          stream: streams.work.name,
          durable: `executor-${host}`,
          filterSubject: subjects.work(host),
          schema: WorkItem,
          service: `executor-${host}`,
          concurrency: hostLimit,
          ackWaitMs: 30_000,
          log: this.log,
          signal: this.ac.signal,
          handler: async (w) => {
            await this.run(host, w);
            return ack();
          },
        }).catch((err) => {
          if (!this.ac.signal.aborted) this.log.error({ err, host }, 'work consumer ended');
        }),
      );
    }
    const beat = () => {
      const at = new Date().toISOString();
      for (const [host, jobs] of this.inflight) {
        publishCore(this.bus, messages.heartbeat, subjects.heartbeat(host), { host, executorId: `${this.executorId}-${host}`, at, jobs: [...jobs.values()] });
      }
    };
    beat();
    this.timer = setInterval(beat, this.spec.heartbeatMs ?? 1000);
  }

  private async run(host: string, w: WorkItem): Promise<void> {
    this.received++;
    const attemptKey = `${w.jobId}.${w.attempt}`;
    if (this.seen.has(attemptKey)) this.duplicates++;
    else this.seen.add(attemptKey);
    const jobs = this.inflight.get(host)!;
    jobs.set(w.jobId, { jobId: w.jobId, attempt: w.attempt, stage: 'migrate', fencingToken: w.fencingToken });
    const source = `executor@${host}`;
    const id = (type: string) => `${w.jobId}.${w.attempt}.${type}`;
    const imagePath = `/var/lib/vmsave/images/${w.jobId}-${w.attempt}.vmsave`;
    const ramBytes = 1024 * 1024 * 1024;
    const format = w.kind === 'save' ? w.format : 'sparse';
    try {
      await publishEvent(
        this.bus,
        makeEvent(
          'SaveStarted',
          w.jobId,
          {
            host,
            attempt: w.attempt,
            fencingToken: w.fencingToken,
            imagePath,
            format,
            channels: 1,
            directIo: false,
            wasRunning: true,
            ramBytes,
          },
          { source, eventId: id('SaveStarted') },
        ),
      );
      const [lo, hi] = this.spec.saveMs;
      const ms = lo + Math.random() * (hi - lo);
      await sleep(ms);
      await publishEvent(
        this.bus,
        makeEvent(
          'SaveCompleted',
          w.jobId,
          {
            host,
            attempt: w.attempt,
            fencingToken: w.fencingToken,
            imagePath,
            format,
            bytes: ramBytes,
            blocks: ramBytes / 512,
            durationMs: Math.round(ms),
            throughputBytesPerSec: ramBytes / (ms / 1000),
            vmState: 'running',
            qemu: {},
          },
          { source, eventId: id('SaveCompleted') },
        ),
      );
      this.completed++;
    } catch (err) {
      this.errors++;
      this.log.error({ err, jobId: w.jobId }, 'simulated save could not publish its events');
    } finally {
      jobs.delete(w.jobId);
    }
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.ac.abort();
    await Promise.allSettled(this.tasks);
  }
}
