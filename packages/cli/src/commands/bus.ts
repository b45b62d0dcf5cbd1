/**
 * Commands that talk to the fleet over the bus: save, restore, cancel, jobs, job, watch, hosts.
 * What they accept is here; what they do is `../run/bus.ts`, loaded when one runs.
 */
import { lazy, type Command } from '../options.ts';

const run = () => import('../run/bus.ts');

/** `save --qmp SOCKET --out FILE`: a local save without the bus (`./offline.ts`). */
export const OFFLINE_SAVE_OPTIONS = {
  qmp: { type: 'string' },
  out: { type: 'string' },
  'vm-def': { type: 'string' },
} as const;
/** `restore FILE --local`: a local restore without the bus (`./offline.ts`). */
export const OFFLINE_RESTORE_OPTIONS = {
  'qmp-dir': { type: 'string' },
  'vm-def': { type: 'string' },
} as const;

const BUS_SAVE_OPTIONS = {
  vm: { type: 'string' },
  format: { type: 'string' },
  channels: { type: 'string' },
  'direct-io': { type: 'boolean' },
  after: { type: 'string' },
  priority: { type: 'string' },
  image: { type: 'string' },
  deadline: { type: 'string' },
  replicate: { type: 'string' },
  wait: { type: 'boolean' },
  'request-id': { type: 'string' },
} as const;

const saveCommand: Command = {
  name: 'save',
  summary: "save a VM's memory state (through the bus; with --qmp: locally, without the bus)",
  usage:
    'save --vm NAME [--format legacy|sparse|auto] [--channels N] [--direct-io] [--after quit|paused|running] [--priority high|normal|low] [--replicate bus|none] [--wait]  |  save --qmp SOCKET --out FILE [...]',
  help: [
    ['--vm NAME', 'the VM to save (bus mode)'],
    ['--format F', 'legacy, sparse (mapped-ram) or auto (default: sparse when the host supports it)'],
    ['--channels N', 'multifd channels, 1–64 (sparse only)'],
    ['--direct-io', 'bypass the page cache (sparse only)'],
    ['--after S', 'leave the VM quit, paused or running (default running)'],
    ['--priority P', 'high, normal or low (bus mode)'],
    ['--image PATH', "image file name inside the host's image directory (bus mode)"],
    ['--deadline SECONDS', 'give up after this long (bus mode)'],
    ['--replicate bus|none', "bus: copy the verified image to the bus's object store, so any host can restore it; none: not (default: the host's VMSAVE_REPLICATE)"],
    ['--request-id ID', 'idempotency key (default: a new one); the same id names the same job'],
    ['--wait', 'follow the job until verified (progress on a terminal)'],
    ['--qmp SOCKET', 'offline: save the QEMU behind this QMP socket, here, without the bus'],
    ['--out FILE', 'offline: the image to write'],
    ['--vm-def FILE', 'offline: the VM definition to record (default: read from the QEMU command line)'],
  ],
  options: { ...BUS_SAVE_OPTIONS, ...OFFLINE_SAVE_OPTIONS },
  run: lazy(run, (m) => m.save),
};

const restoreCommand: Command = {
  name: 'restore',
  summary: 'restore a VM from an image (through the bus; with --local/--qmp-dir: here, without the bus)',
  usage: 'restore IMAGE [--host H] [--after running|paused|as-saved] [--verify state|full] [--wait]  |  restore FILE --local [--qmp-dir DIR]',
  help: [
    [
      '--host H',
      'host to restore on (default: the host that wrote the image; when it is offline and the image was replicated, an online host); a host without a replicated image fetches it first',
    ],
    ['--after S', 'running, paused or as-saved (default as-saved)'],
    ['--verify V', 'content check before QEMU starts: state (default: the sealed device state) or full (every RAM chunk too; refused on an image with no seal)'],
    ['--priority P', 'high, normal or low'],
    ['--wait', 'follow the job until the VM runs'],
    ['--request-id ID', 'idempotency key'],
    ['--local', "restore here without the bus (also implied by --qmp-dir, or by a FILE that exists here outside the executor's image directory)"],
    ['--qmp-dir DIR', "offline: where the new QEMU's QMP socket goes (default: the executor's qmp directory)"],
    ['--vm-def FILE', "offline: start this definition instead of the image's own (RAM and machine must match)"],
  ],
  options: {
    host: { type: 'string' },
    after: { type: 'string' },
    verify: { type: 'string' },
    priority: { type: 'string' },
    wait: { type: 'boolean' },
    'request-id': { type: 'string' },
    local: { type: 'boolean' },
    ...OFFLINE_RESTORE_OPTIONS,
  },
  positionals: { min: 1, max: 1, names: 'IMAGE' },
  run: lazy(run, (m) => m.restore),
};

const cancelCommand: Command = {
  name: 'cancel',
  summary: 'cancel a queued or running job',
  usage: 'cancel JOB [--reason TEXT]',
  help: [['--reason TEXT', 'recorded in the log']],
  options: { reason: { type: 'string' } },
  positionals: { min: 1, max: 1, names: 'JOB' },
  run: lazy(run, (m) => m.cancel),
};

const drainCommand: Command = {
  name: 'drain',
  summary: 'save every VM of a host (within its limits and priorities), and with --to restore each one on the target',
  usage: 'drain --host A [--to B | --to any] [--after quit] [--format legacy|sparse|auto] [--priority high|normal|low] [--wait]',
  help: [
    ['--host A', 'the host to empty: every VM its latest announcement lists as running or paused'],
    ['--to B|any', 'restore each saved VM on host B (any: where the scheduler places it) once its image is verified'],
    ['--after quit', 'what happens to each VM on A after its save (quit, the default and only choice)'],
    ['--format F', 'legacy, sparse or auto (default auto)'],
    ['--priority P', 'high, normal or low: of every save and restore of the drain'],
    ['--replicate bus|none', "copy each verified image to the bus's object store (default: the host's own default)"],
    ['--request-id ID', 'idempotency key (default: a new one); the same id names the same drain'],
    ['--wait', 'follow the drain until every VM is done (one line per VM as it moves on); exit 4 if any VM was not drained'],
  ],
  options: {
    host: { type: 'string' },
    to: { type: 'string' },
    after: { type: 'string' },
    format: { type: 'string' },
    priority: { type: 'string' },
    replicate: { type: 'string' },
    wait: { type: 'boolean' },
    'request-id': { type: 'string' },
  },
  run: lazy(
    () => import('../run/drain.ts'),
    (m) => m.drain,
  ),
};

const jobsCommand: Command = {
  name: 'jobs',
  summary: 'list jobs, newest first',
  usage: 'jobs [--vm NAME] [--host NAME] [--kind K] [--state S[,S…]] [--limit N]',
  // The state list comes from @vmsave/jobs: loaded for this --help only, not for every start.
  help: async () => {
    const { JOB_STATUSES } = await import('@vmsave/jobs');
    return [
      ['--vm NAME', "only this VM's jobs"],
      ['--host NAME', "only this host's jobs"],
      ['--kind K', 'only save, restore or drain jobs'],
      ['--state S', `only these states (${JOB_STATUSES.join(', ')})`],
      ['--limit N', 'at most N jobs (default 20)'],
    ];
  },
  options: { vm: { type: 'string' }, host: { type: 'string' }, kind: { type: 'string' }, state: { type: 'string' }, limit: { type: 'string' } },
  run: lazy(run, (m) => m.jobs),
};

const jobCommand: Command = {
  name: 'job',
  summary: "a job's whole event history and its state",
  usage: 'job JOB',
  help: [],
  options: {},
  positionals: { min: 1, max: 1, names: 'JOB' },
  run: lazy(run, (m) => m.job),
};

const watchCommand: Command = {
  name: 'watch',
  summary: 'live events (and progress) until Ctrl-C',
  usage: 'watch [--job JOB] [--progress] [--count N] [--from-start]',
  help: [
    ['--job JOB', 'only this job'],
    ['--progress', 'also show progress samples'],
    ['--count N', 'stop after N events'],
    ['--from-start', 'replay the log from its start first'],
  ],
  options: { job: { type: 'string' }, progress: { type: 'boolean' }, count: { type: 'string' }, 'from-start': { type: 'boolean' } },
  run: lazy(run, (m) => m.watch),
};

const hostsCommand: Command = {
  name: 'hosts',
  summary: 'hosts as their executors last announced them',
  usage: 'hosts',
  help: [],
  options: {},
  run: lazy(run, (m) => m.hosts),
};

export const busCommands: Command[] = [saveCommand, restoreCommand, cancelCommand, drainCommand, jobsCommand, jobCommand, watchCommand, hostsCommand];
