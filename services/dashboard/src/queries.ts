import type { Redis } from 'ioredis';
import type { HostAnnouncement } from '@vmsave/contracts';
import { keys, type JobView, type Projection } from '@vmsave/store';
import { ON_HOST_STATUSES, type JobStatus } from '@vmsave/jobs';

export interface JobFilter {
  states?: readonly JobStatus[];
  vm?: string;
  host?: string;
  limit: number;
  offset: number;
}

export interface JobPage {
  items: JobView[];
  /** Number of jobs matching the filter. */
  total: number;
}

const CHUNK = 500;

/**
 * Queries over the store's read models that the store's own API does not answer directly
 * (a filter by state, by VM and host together, the total count for paging).
 */
export class ReadModels {
  private readonly k;
  private loadCache: { at: number; seq: number; value: Promise<Map<string, HostLoad>> } | undefined;

  constructor(
    readonly projection: Projection,
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.k = keys(prefix);
  }

  async jobs(f: JobFilter): Promise<JobPage> {
    const index = f.vm ? this.k.jobsByVm(f.vm) : f.host ? this.k.jobsByHost(f.host) : this.k.jobsAll;
    const needsScan = (f.states && f.states.length > 0) || (f.vm && f.host);
    if (!needsScan) {
      const [items, total] = await Promise.all([this.projection.jobs(f), this.redis.zcard(index)]);
      return { items, total };
    }
    // Filter while walking the index newest first; the page is cut out of the matches.
    const states = f.states?.length ? new Set<string>(f.states) : undefined;
    const match = (j: JobView) => (!states || states.has(j.status)) && (!f.host || j.host === f.host) && (!f.vm || j.vm === f.vm);
    const items: JobView[] = [];
    let total = 0;
    for await (const chunk of this.walk(index)) {
      for (const j of chunk) {
        if (!match(j)) continue;
        if (total >= f.offset && items.length < f.limit) items.push(j);
        total++;
      }
    }
    return { items, total };
  }

  /**
   * Running and queued jobs per host. It walks every job, so the answer is reused while the
   * read models have not moved (for at most five seconds).
   */
  async hostLoads(): Promise<Map<string, HostLoad>> {
    const seq = await this.projection.appliedSeq();
    const now = Date.now();
    if (!this.loadCache || this.loadCache.seq !== seq || now - this.loadCache.at > 5_000) {
      const value = this.computeLoads();
      this.loadCache = { at: now, seq, value };
      value.catch(() => (this.loadCache = undefined));
    }
    return this.loadCache.value;
  }

  private async computeLoads(): Promise<Map<string, HostLoad>> {
    const loads = new Map<string, HostLoad>();
    for await (const chunk of this.walk(this.k.jobsAll)) {
      for (const j of chunk) {
        if (!j.host || !ON_HOST_STATUSES.has(j.status as JobStatus)) continue;
        const l = loads.get(j.host) ?? { running: 0, queued: 0 };
        if (j.status === 'running') l.running++;
        else l.queued++;
        loads.set(j.host, l);
      }
    }
    return loads;
  }

  /** Jobs waiting for a host (admitted, not yet scheduled). */
  async unscheduled(): Promise<number> {
    let n = 0;
    for await (const chunk of this.walk(this.k.jobsAll)) n += chunk.filter((j) => j.status === 'requested').length;
    return n;
  }

  /** Recent finished saves with their average throughput, oldest first (for the chart). */
  async recentThroughput(limit = 500): Promise<Array<{ t: number; bytesPerSec: number; jobId: string; vm?: string }>> {
    const jobs = await this.projection.jobs({ limit });
    return jobs
      .filter((j) => j.kind === 'save' && j.result?.throughputBytesPerSec !== undefined && j.updatedAt)
      .map((j) => ({ t: Math.floor(Date.parse(j.updatedAt!) / 1000), bytesPerSec: j.result!.throughputBytesPerSec!, jobId: j.jobId!, vm: j.vm }))
      .sort((a, b) => a.t - b.t);
  }

  private async *walk(index: string): AsyncGenerator<JobView[]> {
    for (let offset = 0; ; offset += CHUNK) {
      const ids = await this.redis.zrevrange(index, offset, offset + CHUNK - 1);
      if (ids.length === 0) return;
      const raw = await this.redis.mget(ids.map((id) => this.k.job(id)));
      yield raw.filter((r): r is string => r !== null).map((r) => JSON.parse(r) as JobView);
      if (ids.length < CHUNK) return;
    }
  }
}

export interface HostLoad {
  running: number;
  queued: number;
}

export interface HostRow {
  host: string;
  /** Absent for a host that has jobs but has not announced itself (yet). */
  announcement?: HostAnnouncement;
  running: number;
  queued: number;
  /** The host's announced limit on concurrent jobs, when it announces one. */
  limit?: number;
  lastHeartbeatAt?: string;
}
