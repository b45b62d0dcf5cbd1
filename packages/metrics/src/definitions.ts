/**
 * Every vmsave metric: its stable name, help text, type, labels and buckets, in one table. The
 * services register what they export from here (`ServiceMetrics.counter('savesTotal')`…), the
 * Grafana dashboard's queries are checked against these names, and `docs/operations.md`
 * ("Metrics") lists them. Renaming one breaks dashboards and alerts: add, do not rename.
 */

/** Where a metric is exported from (every service also exports the `bus` ones and the process defaults). */
export type MetricOwner = 'bus' | 'scheduler' | 'executor' | 'verifier' | 'dashboard';

interface Base {
  name: string;
  help: string;
  labelNames: readonly string[];
  owner: MetricOwner;
}
export interface CounterDefinition extends Base {
  type: 'counter';
}
export interface GaugeDefinition extends Base {
  type: 'gauge';
}
export interface HistogramDefinition extends Base {
  type: 'histogram';
  buckets: readonly number[];
}
export type MetricDefinition = CounterDefinition | GaugeDefinition | HistogramDefinition;

const MiB = 1024 * 1024;
/** 1 MiB … 256 GiB in steps of 4. */
const BYTE_BUCKETS = Array.from({ length: 10 }, (_, i) => MiB * 4 ** i);
const JOB_SECONDS = [0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600];
const SAVE_LABELS = ['format', 'channels', 'direct_io'] as const;

export const METRICS = {
  /* ---------- every service (bus) ---------- */
  eventsPublished: {
    type: 'counter',
    owner: 'bus',
    name: 'vmsave_events_published_total',
    help: 'Job events this process appended to the event log, by event type (duplicates the server dropped are not counted).',
    labelNames: ['type'],
  },
  busRedeliveries: {
    type: 'counter',
    owner: 'bus',
    name: 'vmsave_bus_redeliveries_total',
    help: 'JetStream messages delivered to this process again (msg.info.redelivered), by stream and durable consumer.',
    labelNames: ['stream', 'consumer'],
  },
  busDeadLetters: {
    type: 'counter',
    owner: 'bus',
    name: 'vmsave_bus_dead_letters_total',
    help: 'Messages this process refused and parked in vmsave.dlq.<service>; stored="false" when the dead letter itself could not be published (lost).',
    labelNames: ['stored'],
  },
  busReconnects: {
    type: 'counter',
    owner: 'bus',
    name: 'vmsave_bus_reconnects_total',
    help: 'Times the NATS connection came back after a disconnect.',
    labelNames: [],
  },
  busDisconnects: {
    type: 'counter',
    owner: 'bus',
    name: 'vmsave_bus_disconnects_total',
    help: 'Times the NATS connection was lost.',
    labelNames: [],
  },
  busConnected: {
    type: 'gauge',
    owner: 'bus',
    name: 'vmsave_bus_connected',
    help: '1 while the NATS connection is up, 0 while it is reconnecting.',
    labelNames: [],
  },

  /* ---------- scheduler ---------- */
  admissions: {
    type: 'counter',
    owner: 'scheduler',
    name: 'vmsave_admissions_total',
    help: 'Admission outcomes, from the events the scheduler appends: outcome="accepted" (SaveRequested/RestoreRequested, rule="none") or "rejected" (SaveRejected/RestoreRejected, with the rule, including rejections placement decides later).',
    labelNames: ['kind', 'outcome', 'rule'],
  },
  admissionSeconds: {
    type: 'histogram',
    owner: 'scheduler',
    name: 'vmsave_admission_seconds',
    help: 'Time from a command reaching the scheduler to its admission being decided and answered (includes waiting for earlier state changes).',
    labelNames: [],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  },
  jobs: {
    type: 'gauge',
    owner: 'scheduler',
    name: 'vmsave_jobs',
    help: 'Jobs the active scheduler knows (folded from the whole event log), by kind and status.',
    labelNames: ['kind', 'state'],
  },
  queueDepth: {
    type: 'gauge',
    owner: 'scheduler',
    name: 'vmsave_scheduler_queue_depth',
    help: 'Admitted jobs waiting to be handed to a host, by the host they are placed on ("" while no host is known).',
    labelNames: ['host'],
  },
  activeJobs: {
    type: 'gauge',
    owner: 'scheduler',
    name: 'vmsave_scheduler_active_jobs',
    help: 'Jobs scheduled or running on each host.',
    labelNames: ['host'],
  },
  ownedPartitions: {
    type: 'gauge',
    owner: 'scheduler',
    name: 'vmsave_scheduler_owned_partitions',
    help: 'VM partitions (of 16) this scheduler owns and acts on now.',
    labelNames: [],
  },

  /* ---------- executor ---------- */
  saves: {
    type: 'counter',
    owner: 'executor',
    name: 'vmsave_saves_total',
    help: 'Save attempts this executor ended, by format and outcome (completed, failed, cancelled).',
    labelNames: ['format', 'outcome'],
  },
  saveSeconds: {
    type: 'histogram',
    owner: 'executor',
    name: 'vmsave_save_seconds',
    help: 'Duration of each completed save (SaveCompleted.durationMs), by format, multifd channels and direct IO.',
    labelNames: SAVE_LABELS,
    buckets: JOB_SECONDS,
  },
  saveBytes: {
    type: 'histogram',
    owner: 'executor',
    name: 'vmsave_save_bytes',
    help: 'Allocated size on disk of each completed save (SaveCompleted.blocks × 512), by format, multifd channels and direct IO.',
    labelNames: SAVE_LABELS,
    buckets: BYTE_BUCKETS,
  },
  restores: {
    type: 'counter',
    owner: 'executor',
    name: 'vmsave_restores_total',
    help: 'Restore attempts this executor ended, by image format and outcome (completed, failed, cancelled).',
    labelNames: ['format', 'outcome'],
  },
  restoreSeconds: {
    type: 'histogram',
    owner: 'executor',
    name: 'vmsave_restore_seconds',
    help: 'Duration of each completed restore (RestoreCompleted.durationMs), by the image’s format, channels and direct IO (read from its header).',
    labelNames: SAVE_LABELS,
    buckets: JOB_SECONDS,
  },
  restoreBytes: {
    type: 'histogram',
    owner: 'executor',
    name: 'vmsave_restore_bytes',
    help: 'Allocated size on disk of each image restored, by its format, channels and direct IO.',
    labelNames: SAVE_LABELS,
    buckets: BYTE_BUCKETS,
  },
  imageDirFreeBytes: {
    type: 'gauge',
    owner: 'executor',
    name: 'vmsave_executor_image_dir_free_bytes',
    help: 'Bytes available to the executor in its image directory’s file system (statfs).',
    labelNames: [],
  },
  imageDirSizeBytes: {
    type: 'gauge',
    owner: 'executor',
    name: 'vmsave_executor_image_dir_size_bytes',
    help: 'Total size of the image directory’s file system (statfs).',
    labelNames: [],
  },
  qemuProcesses: {
    type: 'gauge',
    owner: 'executor',
    name: 'vmsave_executor_qemu_processes',
    help: 'QEMU processes with a QMP socket in this executor’s QMP directory (the VMs it runs or drives).',
    labelNames: [],
  },
  replicationBytes: {
    type: 'counter',
    owner: 'executor',
    name: 'vmsave_replication_bytes_total',
    help: 'Image bytes moved to (upload) or from (download) the bus object store (ImageReplicated, ImageFetched).',
    labelNames: ['direction'],
  },

  /* ---------- verifier ---------- */
  verifications: {
    type: 'counter',
    owner: 'verifier',
    name: 'vmsave_verifications_total',
    help: 'Verdicts this verifier recorded: outcome="verified" (ImageVerified) or "rejected" (ImageRejected).',
    labelNames: ['outcome'],
  },
  verificationChecks: {
    type: 'counter',
    owner: 'verifier',
    name: 'vmsave_verification_checks_total',
    help: 'Checks in the verdicts this verifier recorded, by check name and status (pass, warn, fail, skip).',
    labelNames: ['check', 'status'],
  },
  scrubBytes: {
    type: 'counter',
    owner: 'verifier',
    name: 'vmsave_scrub_bytes_total',
    help: 'Image bytes read again by the verifier’s scrub of stored images (0 until a scrub runs).',
    labelNames: [],
  },
} as const satisfies Record<string, MetricDefinition>;

export type MetricKey = keyof typeof METRICS;
type Of<T extends MetricDefinition['type']> = { [K in MetricKey]: (typeof METRICS)[K]['type'] extends T ? K : never }[MetricKey];
export type CounterKey = Of<'counter'>;
export type GaugeKey = Of<'gauge'>;
export type HistogramKey = Of<'histogram'>;
export type LabelsOf<K extends MetricKey> = (typeof METRICS)[K]['labelNames'][number];

/** Every vmsave metric name (without the `_bucket`/`_sum`/`_count` series of histograms). */
export const metricNames = (): string[] => Object.values(METRICS).map((m) => m.name);
