/** What the dashboard's HTTP API and live stream send the page (see the README's HTTP table). */
import type { HostAnnouncement, JobEvent, ProgressSample } from '@vmsave/contracts';
import type { JobState } from '@vmsave/jobs/view';

export type { JobEvent, ProgressSample };

/** A job as the read models hold it, with the log sequence it includes and its latest progress. */
export interface JobView extends JobState {
  jobId: string;
  lastSeq: number;
  progress?: ProgressSample;
}

export interface JobsPage {
  items: JobView[];
  total: number;
  /** Jobs per status under the kind/VM/host filters. */
  totals: Record<string, number>;
  limit: number;
  offset: number;
  cursor: number;
}

export interface JobDetail {
  job: JobView;
  events: Array<{ seq: number; event: JobEvent }>;
}

export interface HostRow {
  host: string;
  announcement?: HostAnnouncement;
  running: number;
  queued: number;
  limit?: number;
  lastHeartbeatAt?: string;
}

export interface HostsAnswer {
  hosts: HostRow[];
  unscheduled: number;
}

export interface ThroughputPoint {
  t: number;
  bytesPerSec: number;
  jobs?: number;
}

export interface CompletedPoint {
  t: number;
  bytesPerSec: number;
  jobId: string;
}

export interface ThroughputAnswer {
  live: ThroughputPoint[];
  completed: CompletedPoint[];
}

/** A `job` message of the live stream. */
export interface JobMessage {
  seq: number;
  event: JobEvent;
  job: JobView;
  /** Earlier events of this job the stream left out (the page was behind): the latest stands for them. */
  superseded?: number;
}

/** A `summary` message: the page was too far behind for job messages; it reloads from the API. */
export interface SummaryMessage {
  seq: number;
  events: number;
  jobs: number;
  byType: Record<string, number>;
}
