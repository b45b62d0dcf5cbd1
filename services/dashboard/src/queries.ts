import type { Redis } from 'ioredis';
import type { HostAnnouncement } from '@vmsave/contracts';
import { keys, queryJobs, type JobQuery, type JobQueryPage, type Projection } from '@vmsave/store';
import { ON_HOST_STATUSES, type JobStatus } from '@vmsave/jobs';

const CHUNK = 500;

/** The page's filter: the store's one job query (`queryJobs`), with statuses typed. */
export type JobFilter = JobQuery & { states?: readonly JobStatus[]; offset: number };

/** A page of jobs, with the number matching and the jobs per status under the other filters. */
export type JobPage = JobQueryPage;

/**
 * Queries over the store's read models for the page. Every one reads an index
 * (`queryJobs`: sorted sets intersected in Redis), none walks the jobs.
 */
export class ReadModels {
  private readonly k;

  constructor(
    readonly projection: Projection,
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {
    this.k = keys(prefix);
  }

  jobs(f: JobFilter): Promise<JobPage> {
    return queryJobs(this.redis, this.prefix, f);
  }

  /** Running and queued jobs per host: the jobs of the on-host statuses' indexes (a fleet's in-flight jobs, not its history). */
  async hostLoads(): Promise<Map<string, HostLoad>> {
    const loads = new Map<string, HostLoad>();
    for (const status of ON_HOST_STATUSES) {
      for (let offset = 0; ; offset += CHUNK) {
        const ids = await this.redis.zrange(this.k.jobsByState(status), offset, offset + CHUNK - 1);
        for (const j of await this.projection.jobsByIds(ids)) {
          if (!j?.host || j.status !== status) continue;
          const l = loads.get(j.host) ?? { running: 0, queued: 0 };
          if (status === 'running') l.running++;
          else l.queued++;
          loads.set(j.host, l);
        }
        if (ids.length < CHUNK) break;
      }
    }
    return loads;
  }

  /** Jobs waiting for a host (admitted, not yet scheduled). */
  async unscheduled(): Promise<number> {
    return this.redis.zcard(this.k.jobsByState('requested'));
  }

  /** Recent finished saves with their average throughput, oldest first (for the chart). */
  async recentThroughput(limit = 500): Promise<Array<{ t: number; bytesPerSec: number; jobId: string; vm?: string }>> {
    const jobs = await this.projection.jobs({ limit });
    return jobs
      .filter((j) => j.kind === 'save' && j.result?.throughputBytesPerSec !== undefined && j.updatedAt)
      .map((j) => ({ t: Math.floor(Date.parse(j.updatedAt!) / 1000), bytesPerSec: j.result!.throughputBytesPerSec!, jobId: j.jobId!, vm: j.vm }))
      .sort((a, b) => a.t - b.t);
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
