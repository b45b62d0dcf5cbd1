import { constants } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { QmpAbortedError, QmpCommandError, QmpDisconnectedError, QmpTimeoutError, type QmpClient } from '@vmsave/qmp';
import {
  MigrationAbortedError,
  MigrationCancelledError,
  MigrationFailedError,
  MigrationStalledError,
  QemuError,
  QemuExitedError,
  QemuInvalidArgumentError,
  QemuStateError,
  QemuUnsupportedError,
  type MigrationDirection,
  type QemuStage,
} from './errors.ts';
import type { VmExit } from './process.ts';

export type SaveFormat = 'legacy' | 'sparse';

/** File descriptors on the image, opened by the caller. QEMU gets its own copies. */
export interface MigrationFds {
  /** Write-only (save) or read-only (restore), without O_DIRECT. Always needed. */
  buffered: number;
  /** Same access mode plus O_DIRECT, opened separately (not a dup). Needed with `directIo`. */
  direct?: number;
}

export interface MigrationProgress {
  direction: MigrationDirection;
  /** QEMU's migration status: setup, active, device, completed, failed, cancelling, cancelled, … */
  status: string;
  /** Bytes, from query-migrate's `ram` (absent on a restoring QEMU: then 0). */
  total: number;
  transferred: number;
  remaining: number;
  /** Throughput as QEMU reports it (`ram.mbps`, megabits per second). */
  mbps: number;
  /** Pages sent in full, and zero pages. */
  normal: number;
  duplicate: number;
  /** `ram.page-size` (bytes per page of `normal`/`duplicate`), when QEMU reports it. */
  pageSize?: number;
  /** Since `migrate`/`migrate-incoming` was issued. */
  elapsedMs: number;
}

/** Keeps the (optional) link to the QEMU process so errors can quote its stderr. */
export interface MigrationProcessInfo {
  stderr(): string;
  readonly exited: Promise<VmExit>;
  readonly exitStatus: VmExit | undefined;
}

export interface MigrationOptions {
  fds: MigrationFds;
  /** Where the QEMU stream starts in the image, in bytes. */
  offset: number;
  format: SaveFormat;
  /** multifd-channels for sparse (default 1, as libvirt). Ignored for legacy. */
  channels?: number;
  /** Page I/O with O_DIRECT (sparse only; needs `fds.direct`). */
  directIo?: boolean;
  /**
   * Save only: QEMU's `max-bandwidth` in bytes/s for this migration (0 = unlimited, the
   * default; QEMU's own default of 128 MiB/s would make every save crawl). The previous value
   * is put back afterwards.
   */
  maxBandwidth?: number;
  signal?: AbortSignal;
  onProgress?(sample: MigrationProgress): void;
  /** How often to poll query-migrate (capped at 500 ms). Default 250. */
  progressIntervalMs?: number;
  /**
   * Fail when neither status nor bytes moved for this long. Default 60 s for
   * a save, 120 s for a restore (a restoring QEMU reports no byte counts, so
   * there this is the longest time a status may last).
   */
  stallTimeoutMs?: number;
  /** Deadline of each QMP command. Default 10 s. */
  commandTimeoutMs?: number;
  /** The QEMU process, to quote its stderr in errors. */
  process?: MigrationProcessInfo;
}

/**
 * A live save (precopy while the guest runs): QEMU copies RAM in passes, rewriting the pages the
 * guest dirtied since the last pass (mapped-ram: at their fixed place in the file), and stops the
 * guest only for the final pass, when what is left fits in `downtimeLimitMs` at the bandwidth it
 * measures. When the guest dirties faster than the disk takes it, the passes do not converge: after
 * `maxPasses` passes or `maxLiveMs`, vmsave stops the guest itself and the rest is a stopped copy.
 */
export interface LiveSaveOptions {
  /** QEMU's `downtime-limit` (ms) for the final pass. Default 100. */
  downtimeLimitMs?: number;
  /** Stop the guest (stopped copy of the rest) once QEMU starts pass `maxPasses + 1`. Default 8. */
  maxPasses?: number;
  /** Stop the guest once the live phase has lasted this long (ms). Default 20 000. */
  maxLiveMs?: number;
}

export interface SaveOptions extends MigrationOptions {
  /** Copy RAM while the guest runs (see {@link LiveSaveOptions}); default a save of a paused VM. */
  live?: LiveSaveOptions;
}

/** One precopy pass over RAM, as sampled from query-migrate (`dirty-sync-count`). */
export interface MigrationPass {
  /** From 1. */
  pass: number;
  /** Bytes QEMU wrote in this pass. */
  bytes: number;
  /** When the pass began, ms since `migrate`. */
  startMs: number;
}

/** How a live save ended its live phase. */
export interface LiveSaveOutcome {
  /** `converged`: QEMU stopped the guest for the final pass itself; `passes`/`time`: vmsave stopped it (stopped copy of the rest). */
  switchover: 'converged' | 'passes' | 'time';
  /** Epoch ms (QEMU's STOP event timestamp) when the guest stopped. */
  stoppedAtEpochMs: number | undefined;
  downtimeLimitMs: number;
}

export interface RestoreOptions extends MigrationOptions {
  /**
   * QEMU ≥ 9.1: exit when the incoming migration fails (QEMU's default) or stay
   * up with `failed` + `error-desc` in query-migrate. Default false: the reason
   * then arrives over QMP, and the caller disposes of the QEMU. Either way a
   * failed incoming migration cannot be retried in that process.
   */
  exitOnError?: boolean;
  /**
   * The queries and settings {@link prepareIncoming} already made on this QEMU (before it had
   * the image): skipped here when the plan for these options is the one applied then; otherwise
   * made again. Only the fdset and `migrate-incoming` remain.
   */
  prepared?: PreparedIncoming;
}

/** What {@link prepareIncoming} found and set on a QEMU waiting with `-incoming defer`. */
export interface PreparedIncoming {
  support: MigrationSupport;
  /** The plan whose capabilities and parameters were set (JSON). */
  planKey: string;
}

export interface MigrationRamStats {
  total: number;
  transferred: number;
  remaining: number;
  normal: number;
  normalBytes: number;
  duplicate: number;
  mbps: number;
  pagesPerSecond: number;
  dirtySyncCount: number;
  pageSize: number;
}

export interface MigrationStats {
  direction: MigrationDirection;
  format: SaveFormat;
  channels: number;
  directIo: boolean;
  offset: number;
  /** Our own clock, from issuing migrate/migrate-incoming to seeing `completed`. */
  wallTimeMs: number;
  /** QEMU's `total-time`, `setup-time`, `downtime` (ms) when it reports them. */
  totalTimeMs: number | undefined;
  setupTimeMs: number | undefined;
  downtimeMs: number | undefined;
  ram: MigrationRamStats | undefined;
  capabilities: Record<string, boolean>;
  parameters: Record<string, unknown>;
  /** The final query-migrate answer, as QEMU sent it. */
  queryMigrate: Record<string, unknown>;
  /** Passes over RAM (save only; sampled every poll, so passes shorter than a poll merge). */
  passes: MigrationPass[];
  /** Set for a live save. */
  live?: LiveSaveOutcome;
  /** Our own clock: the queries, fdset and settings before migrate/migrate-incoming was issued (ms). */
  setupMs?: number;
  /** Our own clock: after `completed`, removing the fdset and waiting for QEMU to drop it (ms). */
  cleanupMs?: number;
}

/** What a QEMU process reported about migration support (from query-migrate-capabilities/-parameters). */
export interface MigrationSupport {
  capabilities: ReadonlyMap<string, boolean>;
  parameters: Readonly<Record<string, unknown>>;
}

export interface MigrationPlan {
  /** Set before everything else, only when needed (compression off before mapped-ram goes on). */
  preParameters: Record<string, unknown>;
  capabilities: Array<{ capability: string; state: boolean }>;
  parameters: Record<string, unknown>;
  channels: number;
  directIo: boolean;
}

/** Capabilities that break, hang or corrupt a migration to a file; switched off when found on. */
const FILE_INCOMPATIBLE_CAPABILITIES = [
  'postcopy-ram',
  'postcopy-preempt',
  'return-path',
  'switchover-ack',
  'pause-before-switchover',
  'background-snapshot',
  'xbzrle',
  'x-colo',
  'zero-copy-send',
  'release-ram',
];

const ACTIVE_STATUSES = new Set([
  'setup',
  'active',
  'device',
  'pre-switchover',
  'cancelling',
  'postcopy-active',
  'postcopy-paused',
  'postcopy-recover-setup',
  'postcopy-recover',
  'colo',
  'wait-unplug',
]);

const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;
const DEFAULT_DOWNTIME_LIMIT_MS = 100;
const DEFAULT_MAX_PASSES = 8;
const DEFAULT_MAX_LIVE_MS = 20_000;

/** `file:/dev/fdset/N,offset=0xHEX`, the URI QEMU takes for an fdset-backed image. */
export function buildMigrationUri(fdsetId: number, offset: number): string {
  return `file:/dev/fdset/${fdsetId},offset=0x${offset.toString(16)}`;
}

/**
 * Decides the capabilities and parameters for one save or restore. Pure:
 * throws for requests this QEMU or the file transport cannot honour.
 */
export function planMigration(
  direction: MigrationDirection,
  options: Pick<SaveOptions, 'format' | 'channels' | 'directIo' | 'offset' | 'fds' | 'maxBandwidth' | 'live'>,
  support: MigrationSupport,
): MigrationPlan {
  const { format } = options;
  if (format !== 'legacy' && format !== 'sparse') throw new QemuInvalidArgumentError(`unknown format ${String(format)}`);
  if (!Number.isSafeInteger(options.offset) || options.offset < 0) {
    throw new QemuInvalidArgumentError(`offset must be a non-negative integer, got ${options.offset}`);
  }
  const sparse = format === 'sparse';
  const directIo = options.directIo === true;
  const channels = options.channels ?? 1;
  if (!Number.isInteger(channels) || channels < 1 || channels > 255) {
    throw new QemuInvalidArgumentError(`channels must be an integer in 1..255, got ${options.channels}`);
  }
  if (directIo && !sparse) throw new QemuInvalidArgumentError('direct IO needs the sparse (mapped-ram) format');
  const maxBandwidth = options.maxBandwidth ?? 0;
  if (!Number.isSafeInteger(maxBandwidth) || maxBandwidth < 0) {
    throw new QemuInvalidArgumentError(`maxBandwidth must be a non-negative integer (bytes/s), got ${options.maxBandwidth}`);
  }
  if (directIo && options.fds.direct === undefined) {
    // QEMU 10 answers `migrate` with {} and then segfaults when the fdset lacks the O_DIRECT fd.
    throw new QemuInvalidArgumentError('direct IO needs both fds: fds.direct (O_DIRECT) and fds.buffered');
  }
  const caps = support.capabilities;
  if (!caps.has('events')) throw new QemuUnsupportedError('this QEMU has no `events` migration capability');
  if (sparse && (!caps.has('mapped-ram') || !caps.has('multifd'))) {
    throw new QemuUnsupportedError('this QEMU cannot write the sparse format (no mapped-ram capability; QEMU ≥ 9.0 needed)');
  }
  const hasDirectIoParam = 'direct-io' in support.parameters;
  if (directIo && !hasDirectIoParam) {
    throw new QemuUnsupportedError('this QEMU has no direct-io migration parameter (QEMU ≥ 9.1 needed)');
  }

  const capabilities = [{ capability: 'events', state: true }];
  if (caps.has('mapped-ram')) capabilities.push({ capability: 'mapped-ram', state: sparse });
  if (caps.has('multifd')) capabilities.push({ capability: 'multifd', state: sparse });
  for (const name of FILE_INCOMPATIBLE_CAPABILITIES) {
    if (caps.get(name) === true) capabilities.push({ capability: name, state: false });
  }

  const preParameters: Record<string, unknown> = {};
  const compression = support.parameters['multifd-compression'];
  // multifd-compression set while mapped-ram is on makes every later
  // migrate-set-parameters fail; clear it while mapped-ram may still be off.
  if (typeof compression === 'string' && compression !== 'none') preParameters['multifd-compression'] = 'none';

  const live = direction === 'save' ? options.live : undefined;
  if (live) {
    const limit = live.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS;
    if (!Number.isInteger(limit) || limit < 1 || limit > 60_000)
      throw new QemuInvalidArgumentError(`live.downtimeLimitMs must be an integer in 1..60000, got ${live.downtimeLimitMs}`);
    if (live.maxPasses !== undefined && (!Number.isInteger(live.maxPasses) || live.maxPasses < 1))
      throw new QemuInvalidArgumentError(`live.maxPasses must be a positive integer, got ${live.maxPasses}`);
    if (live.maxLiveMs !== undefined && (!Number.isFinite(live.maxLiveMs) || live.maxLiveMs < 0))
      throw new QemuInvalidArgumentError(`live.maxLiveMs must be >= 0, got ${live.maxLiveMs}`);
    // auto-converge would throttle the guest's vCPUs for the whole save; vmsave prefers one
    // short stop (the pass limit) over a long slow-down.
    if (caps.get('auto-converge') === true) capabilities.push({ capability: 'auto-converge', state: false });
  }

  const parameters: Record<string, unknown> = {};
  if (direction === 'save') parameters['max-bandwidth'] = maxBandwidth;
  if (live) parameters['downtime-limit'] = live.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS;
  if (sparse) parameters['multifd-channels'] = channels;
  if (hasDirectIoParam) parameters['direct-io'] = directIo;

  return { preParameters, capabilities, parameters, channels: sparse ? channels : 1, directIo };
}

/** Reads an fd's open flags from /proc/self/fdinfo (Linux). Undefined when unavailable. */
async function fdFlags(fd: number): Promise<number | undefined> {
  try {
    const info = await readFile(`/proc/self/fdinfo/${fd}`, 'utf8');
    const match = /^flags:\s*([0-7]+)/m.exec(info);
    return match ? Number.parseInt(match[1] ?? '', 8) : undefined;
  } catch {
    return undefined;
  }
}

async function checkFds(direction: MigrationDirection, fds: MigrationFds, directIo: boolean): Promise<void> {
  // QEMU picks an fd from the fdset by access mode and O_DIRECT alone, and an
  // O_RDWR fd is refused for a restore: catch a wrong fd here, with a clear message.
  const wantMode = direction === 'save' ? constants.O_WRONLY : constants.O_RDONLY;
  const modeName = direction === 'save' ? 'O_WRONLY' : 'O_RDONLY';
  const O_ACCMODE = 3;
  const O_DIRECT = constants.O_DIRECT ?? 0;
  const check = async (fd: number, role: string, wantDirect: boolean): Promise<void> => {
    if (!Number.isInteger(fd) || fd < 0) throw new QemuInvalidArgumentError(`fds.${role} is not an fd: ${fd}`);
    const flags = await fdFlags(fd);
    if (flags === undefined) return;
    if ((flags & O_ACCMODE) !== wantMode) {
      throw new QemuInvalidArgumentError(`fds.${role} (fd ${fd}) must be opened ${modeName} for a ${direction}`);
    }
    if (O_DIRECT !== 0 && ((flags & O_DIRECT) !== 0) !== wantDirect) {
      throw new QemuInvalidArgumentError(`fds.${role} (fd ${fd}) must be opened ${wantDirect ? 'with' : 'without'} O_DIRECT`);
    }
  };
  await check(fds.buffered, 'buffered', false);
  if (directIo && fds.direct !== undefined) await check(fds.direct, 'direct', true);
}

/**
 * Saves the VM's state into caller-opened fds, as `file:/dev/fdset/N,offset=…`.
 * The VM should be paused ({@link pauseIfRunning}); a running guest is saved
 * live (legacy images then grow with every re-dirtied page). On success the
 * VM is in `postmigrate`. On any failure the migration is cancelled, the
 * fdset removed and max-bandwidth restored before the error is thrown.
 */
export function saveToFds(qmp: QmpClient, options: SaveOptions): Promise<MigrationStats> {
  return runMigration(qmp, 'save', options);
}

/**
 * Loads state into a QEMU started with `-incoming defer` from caller-opened
 * read-only fds. A QEMU whose incoming migration failed cannot be reused.
 */
export function restoreFromFds(qmp: QmpClient, options: RestoreOptions): Promise<MigrationStats> {
  return runMigration(qmp, 'restore', options);
}

interface Context {
  qmp: QmpClient;
  direction: MigrationDirection;
  options: RestoreOptions & SaveOptions;
  timeoutMs: number;
  passes: MigrationPass[];
  passSync: number;
  passStartBytes: number;
  live?: LiveSaveOutcome;
}

async function runMigration(qmp: QmpClient, direction: MigrationDirection, options: RestoreOptions & SaveOptions): Promise<MigrationStats> {
  const ctx: Context = { qmp, direction, options, timeoutMs: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS, passes: [], passSync: 0, passStartBytes: 0 };
  let stage: QemuStage = 'prepare';
  let fdsetId: number | undefined;
  let oldBandwidth: unknown;
  let started = false;
  let finished = false;
  const events = qmp.events({ names: ['MIGRATION', 'STOP'] });
  const setupFrom = performance.now();
  let result: MigrationStats | undefined;

  try {
    const prepared = direction === 'restore' ? options.prepared : undefined;
    let support: MigrationSupport;
    let currentParameters: Readonly<Record<string, unknown>>;
    let runState = 'inmigrate';
    if (prepared) {
      // Queried (and the state checked) by prepareIncoming on this QEMU before it had the image.
      support = prepared.support;
      currentParameters = support.parameters;
    } else {
      const q = await queryMigrationState(ctx, direction, stage);
      support = q.support;
      currentParameters = q.support.parameters;
      runState = q.runState;
      if (direction === 'save' && options.live && q.running) {
        ctx.live = { switchover: 'converged', stoppedAtEpochMs: undefined, downtimeLimitMs: options.live.downtimeLimitMs ?? DEFAULT_DOWNTIME_LIMIT_MS };
      }
    }
    const plan = planMigration(direction, options, support);
    await checkFds(direction, options.fds, plan.directIo);
    const settled = !!prepared && JSON.stringify(plan) === prepared.planKey;

    if (direction === 'save' && runState === 'postmigrate') {
      // After a completed save QEMU refuses to save again from postmigrate; a cont/stop cycle
      // brings it back to paused (the guest runs for the length of two QMP round trips).
      await call(ctx, stage, 'cont');
      await call(ctx, stage, 'stop');
    }

    stage = 'add-fd';
    const opaque = `vmsave ${direction}`;
    fdsetId = (await qmp.addFd(options.fds.buffered, { opaque: `${opaque} buffered`, ...callOptions(ctx) }).catch(rethrow(ctx, stage))).fdsetId;
    if (plan.directIo && options.fds.direct !== undefined) {
      await qmp.addFd(options.fds.direct, { fdsetId, opaque: `${opaque} direct`, ...callOptions(ctx) }).catch(rethrow(ctx, stage));
    }

    // Parameters, capabilities, parameters: sent back to back (QMP runs them in order) and all
    // awaited before the migration starts; the first refusal, in order, is the error.
    if (direction === 'save') oldBandwidth = currentParameters['max-bandwidth'];
    stage = 'set-parameters';
    if (!settled) await applyPlan(ctx, plan);

    stage = 'migrate';
    const uri = buildMigrationUri(fdsetId, options.offset);
    const startedAt = performance.now();
    if (direction === 'save') {
      await call(ctx, stage, 'migrate', { uri });
    } else {
      const args: Record<string, unknown> = { uri };
      const { major, minor } = qmp.greeting.version.qemu;
      if (major > 9 || (major === 9 && minor >= 1)) args['exit-on-error'] = options.exitOnError ?? false;
      await call(ctx, stage, 'migrate-incoming', args);
    }
    started = true;

    stage = 'transfer';
    const final = await follow(ctx, events, startedAt);
    finished = true;
    if (direction === 'save') notePass(ctx, final, performance.now() - startedAt);
    result = toStats(ctx, plan, final, performance.now() - startedAt);
    result.setupMs = startedAt - setupFrom;
    return result;
  } catch (error) {
    if (started && !finished) await cancel(ctx);
    throw await toQemuError(ctx, error, stage);
  } finally {
    events.end();
    const cleanupFrom = performance.now();
    if (qmp.runState === 'running') {
      const cleanup = { timeoutMs: ctx.timeoutMs };
      if (fdsetId !== undefined) await removeFdset(qmp, fdsetId, ctx.timeoutMs);
      if (oldBandwidth !== undefined) {
        await qmp.execute('migrate-set-parameters', { 'max-bandwidth': oldBandwidth }, cleanup).catch(() => undefined);
      }
    }
    if (result) result.cleanupMs = performance.now() - cleanupFrom;
  }
}

/**
 * The four queries before a migration (sent at once: QMP answers them in order, one round trip
 * instead of four) and the state checks on their answers: no migration active, nothing blocking
 * a save, a restore's QEMU waiting with `-incoming defer`.
 */
async function queryMigrationState(ctx: Context, direction: MigrationDirection, stage: QemuStage): Promise<{ support: MigrationSupport; runState: string; running: boolean }> {
  const [capabilityList, currentParameters, current, status] = await Promise.all([
    call<Array<{ capability: string; state: boolean }>>(ctx, stage, 'query-migrate-capabilities'),
    call<Record<string, unknown>>(ctx, stage, 'query-migrate-parameters'),
    call<{ status?: string; 'blocked-reasons'?: string[] }>(ctx, stage, 'query-migrate'),
    call<{ status: string; running: boolean }>(ctx, stage, 'query-status'),
  ]);
  if (current.status !== undefined && ACTIVE_STATUSES.has(current.status)) {
    throw new QemuStateError(`a migration is already ${current.status}`, stage);
  }
  const blocked = current['blocked-reasons'] ?? [];
  if (direction === 'save' && blocked.length > 0) {
    // Verbatim from QEMU, before any capability or fdset is touched.
    throw new MigrationFailedError(direction, stage, blocked.join('; '));
  }
  if (direction === 'restore' && status.status !== 'inmigrate') {
    throw new QemuStateError(`QEMU is ${status.status}, not waiting for an incoming migration (-incoming defer)`, stage);
  }
  return {
    support: { capabilities: new Map(capabilityList.map((c) => [c.capability, c.state])), parameters: currentParameters },
    runState: status.status,
    running: status.running,
  };
}

/**
 * Parameters, capabilities, parameters: sent back to back (QMP runs them in order) and all
 * awaited; the first refusal, in order, is the error.
 */
async function applyPlan(ctx: Context, plan: MigrationPlan): Promise<void> {
  const settings: Promise<unknown>[] = [];
  if (Object.keys(plan.preParameters).length > 0) settings.push(call(ctx, 'set-parameters', 'migrate-set-parameters', plan.preParameters));
  settings.push(call(ctx, 'set-capabilities', 'migrate-set-capabilities', { capabilities: plan.capabilities }));
  settings.push(call(ctx, 'set-parameters', 'migrate-set-parameters', plan.parameters));
  for (const p of settings) p.catch(() => undefined);
  for (const p of settings) await p;
}

/**
 * A restore's QMP set-up made ahead, on a QEMU waiting with `-incoming defer` before it has the
 * image (no fd, no `migrate-incoming`): the queries and state checks, then the capabilities and
 * parameters of the plan for these options. Pass the result as `prepared` to
 * {@link restoreFromFds}, which then only adds the fdset and starts the incoming migration. Any
 * failure rejects (converted like {@link restoreFromFds}'s); a caller may then restore without it.
 */
export async function prepareIncoming(
  qmp: QmpClient,
  options: Pick<RestoreOptions, 'format' | 'channels' | 'directIo' | 'offset' | 'signal' | 'commandTimeoutMs' | 'process'>,
): Promise<PreparedIncoming> {
  // The plan checks that direct IO comes with both fds: placeholders here, the real ones are checked by the restore.
  const fds: MigrationFds = { buffered: -1, ...(options.directIo ? { direct: -1 } : {}) };
  const all = { ...options, fds } as RestoreOptions & SaveOptions;
  const ctx: Context = { qmp, direction: 'restore', options: all, timeoutMs: options.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS, passes: [], passSync: 0, passStartBytes: 0 };
  let stage: QemuStage = 'prepare';
  try {
    const { support } = await queryMigrationState(ctx, 'restore', stage);
    const plan = planMigration('restore', all, support);
    stage = 'set-parameters';
    await applyPlan(ctx, plan);
    return { support, planKey: JSON.stringify(plan) };
  } catch (error) {
    throw await toQemuError(ctx, error, stage);
  }
}

/**
 * remove-fd closes our fds at once, but the set lingers (empty) while the
 * migration channel still holds its dup of them; QEMU closes that in a bottom
 * half after the status turns terminal. Wait briefly for the set to go, so
 * callers see a clean query-fdsets; a lingering empty set is harmless.
 */
async function removeFdset(qmp: QmpClient, fdsetId: number, timeoutMs: number): Promise<void> {
  try {
    await qmp.removeFd(fdsetId, undefined, { timeoutMs });
  } catch {
    return; // already gone, or QEMU gone
  }
  const start = performance.now();
  while (performance.now() < start + 2_000) {
    const sets = await qmp.execute<Array<{ 'fdset-id': number }>>('query-fdsets', undefined, { timeoutMs }).catch(() => []);
    if (!sets.some((set) => set['fdset-id'] === fdsetId)) return;
    // The bottom half usually runs within a millisecond: look again soon, then less often.
    await new Promise((resolve) => setTimeout(resolve, performance.now() - start < 20 ? 1 : 10));
  }
}

function callOptions(ctx: Context): { signal?: AbortSignal; timeoutMs: number } {
  return ctx.options.signal ? { signal: ctx.options.signal, timeoutMs: ctx.timeoutMs } : { timeoutMs: ctx.timeoutMs };
}

function call<T = unknown>(ctx: Context, stage: QemuStage, command: string, args?: Record<string, unknown>): Promise<T> {
  return ctx.qmp.execute<T>(command, args, callOptions(ctx)).catch(rethrow(ctx, stage));
}

/** Tags a rejection with the stage it happened in; converted to a QemuError in the catch-all. */
class StagedError extends Error {
  constructor(
    readonly stage: QemuStage,
    readonly original: unknown,
  ) {
    super('staged');
  }
}

function rethrow(_ctx: Context, stage: QemuStage): (error: unknown) => never {
  return (error) => {
    throw error instanceof QemuError || error instanceof StagedError ? error : new StagedError(stage, error);
  };
}

async function follow(ctx: Context, events: AsyncIterable<unknown> & { end(): void }, startedAt: number): Promise<Record<string, unknown>> {
  const { options, direction } = ctx;
  const intervalMs = Math.max(10, Math.min(options.progressIntervalMs ?? 250, 500));
  const stallMs = options.stallTimeoutMs ?? (direction === 'save' ? 60_000 : 120_000);
  let wake: (() => void) | undefined;
  // An event that lands while a query-migrate is in flight may already be newer
  // than that query's answer: poll again at once instead of sleeping.
  let eventSeen = false;
  void (async () => {
    for await (const ev of events as AsyncIterable<{ event: string; timestamp?: { seconds: number; microseconds: number } }>) {
      if (ev.event === 'STOP' && ctx.live && ctx.live.stoppedAtEpochMs === undefined && ev.timestamp) {
        ctx.live.stoppedAtEpochMs = ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000;
      }
      eventSeen = true;
      wake?.();
    }
  })();

  let lastKey = '';
  let lastChange = performance.now();
  for (;;) {
    eventSeen = false;
    let info: Record<string, unknown>;
    try {
      info = await call<Record<string, unknown>>(ctx, 'transfer', 'query-migrate');
    } catch (err) {
      // A restoring QEMU answers QMP from the main loop that is busy loading memory, so a
      // query can time out while the load progresses. While QEMU lives, only the stall
      // deadline ends a restore.
      const original = err instanceof StagedError ? err.original : err;
      const alive = ctx.options.process ? ctx.options.process.exitStatus === undefined : ctx.qmp.runState === 'running';
      if (direction === 'restore' && original instanceof QmpTimeoutError && alive && performance.now() - lastChange <= stallMs) continue;
      throw err;
    }
    const sample = toProgress(direction, info, performance.now() - startedAt);
    if (direction === 'save') notePass(ctx, info, sample.elapsedMs);
    options.onProgress?.(sample);
    if (sample.status === 'completed') return info;
    if (ctx.live && ctx.live.switchover === 'converged' && ctx.live.stoppedAtEpochMs === undefined && sample.status === 'active') {
      const maxPasses = options.live?.maxPasses ?? DEFAULT_MAX_PASSES;
      const maxLiveMs = options.live?.maxLiveMs ?? DEFAULT_MAX_LIVE_MS;
      const why = ctx.passes.length > maxPasses ? 'passes' : sample.elapsedMs > maxLiveMs ? 'time' : undefined;
      if (why) {
        // The dirty rate outruns the disk: stop the guest, QEMU copies the rest of a still guest.
        ctx.live.switchover = why;
        await call(ctx, 'transfer', 'stop');
        continue;
      }
    }
    if (sample.status === 'failed') {
      const desc = typeof info['error-desc'] === 'string' ? info['error-desc'] : 'QEMU reported failed without a reason';
      throw new StagedError('transfer', new MigrationFailedError(direction, 'transfer', desc));
    }
    if (sample.status === 'cancelled') throw new MigrationCancelledError(direction);

    const key = `${sample.status}:${sample.transferred}:${sample.remaining}`;
    const now = performance.now();
    if (key !== lastKey) {
      lastKey = key;
      lastChange = now;
    } else if (now - lastChange > stallMs) {
      throw new MigrationStalledError(direction, 'transfer', `still ${sample.status} with no progress for ${stallMs} ms`);
    }
    if (eventSeen) continue;

    await new Promise<void>((resolve, reject) => {
      const signal = options.signal;
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        wake = undefined;
      };
      const onAbort = (): void => {
        done();
        reject(new StagedError('transfer', new QmpAbortedError('query-migrate', signal?.reason)));
      };
      const timer = setTimeout(() => {
        done();
        resolve();
      }, intervalMs);
      wake = () => {
        done();
        resolve();
      };
      if (signal?.aborted) onAbort();
      else signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

async function cancel(ctx: Context): Promise<void> {
  await cancelMigration(ctx.qmp, { timeoutMs: ctx.timeoutMs });
}

/**
 * `migrate_cancel`, then wait (≤ 5 s) until QEMU has let go of the migration (and with it the
 * fdset's fds) so the set can be removed. Quiet when there is nothing to cancel or QEMU is gone.
 */
export async function cancelMigration(qmp: QmpClient, options: { timeoutMs?: number } = {}): Promise<void> {
  if (qmp.runState !== 'running') return;
  const opts = { timeoutMs: options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS };
  try {
    await qmp.execute('migrate_cancel', undefined, opts);
  } catch {
    return; // nothing to cancel, or QEMU gone
  }
  const deadline = performance.now() + 5_000;
  while (performance.now() < deadline && qmp.runState === 'running') {
    const info = await qmp.execute<{ status?: string }>('query-migrate', undefined, opts).catch(() => undefined);
    if (!info || info.status === undefined || !ACTIVE_STATUSES.has(info.status)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * For a caller that lost track of a migration (a crashed executor, back up): cancel whatever
 * migration this QEMU still runs and remove every fdset, as {@link saveToFds} does on a failure.
 * Returns the migration status found (`none` when QEMU reported none).
 */
export async function abandonMigration(qmp: QmpClient, options: { timeoutMs?: number } = {}): Promise<{ status: string }> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  const status = (await qmp.execute<{ status?: string }>('query-migrate', undefined, { timeoutMs })).status ?? 'none';
  if (ACTIVE_STATUSES.has(status)) await cancelMigration(qmp, { timeoutMs });
  const sets = await qmp.execute<Array<{ 'fdset-id': number }>>('query-fdsets', undefined, { timeoutMs }).catch(() => []);
  for (const set of sets) await removeFdset(qmp, set['fdset-id'], timeoutMs);
  return { status };
}

/** How long a failed restore waits for QEMU's error lines on stderr when none has arrived yet. */
const STDERR_GRACE_MS = 500;

async function processStderr(ctx: Context, waitForExit: boolean, graceMs = 0): Promise<string | undefined> {
  const proc = ctx.options.process;
  if (!proc) return undefined;
  if (waitForExit && proc.exitStatus === undefined) {
    // stderr is complete only once QEMU has exited; it usually does right after dropping QMP.
    await Promise.race([proc.exited, new Promise((resolve) => setTimeout(resolve, 2_000))]);
  }
  for (const end = Date.now() + graceMs; stderrErrors(proc.stderr()).length === 0 && Date.now() < end; ) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const text = proc.stderr();
  return text.length > 0 ? text : undefined;
}

/** QEMU's error lines on stderr, without the program prefix and without warnings. */
export function stderrErrors(stderr: string | undefined): string[] {
  if (!stderr) return [];
  return stderr
    .split('\n')
    .map((line) => line.trim().replace(/^[^\s:]*qemu[^\s:]*:\s*/, ''))
    .filter((line) => line.length > 0 && !line.startsWith('warning:'));
}

/**
 * A failed incoming migration's `error-desc` is generic ("load of migration
 * failed: Invalid argument"); the cause QEMU printed before it on stderr is
 * the useful part. Joins them in QEMU's order.
 */
export function incomingFailureReason(errorDesc: string | undefined, stderr: string | undefined): string | undefined {
  const lines = stderrErrors(stderr);
  if (lines.length === 0) return errorDesc;
  if (errorDesc === undefined || lines.includes(errorDesc)) return lines.join('; ');
  return [...lines, errorDesc].join('; ');
}

async function toQemuError(ctx: Context, error: unknown, fallbackStage: QemuStage): Promise<QemuError> {
  const { direction } = ctx;
  const stage = error instanceof StagedError ? error.stage : fallbackStage;
  const original = error instanceof StagedError ? error.original : error;
  const restoring = direction === 'restore';
  if (original instanceof MigrationFailedError) {
    // On a save, stderr holds nothing about a refused migration, only old noise. On a restore,
    // QEMU prints the cause just before the failed state reaches QMP, on another pipe: under load
    // that pipe may not be read yet, so give its lines a moment to arrive.
    const stderr = restoring ? await processStderr(ctx, false, STDERR_GRACE_MS) : undefined;
    if (stderr === undefined) return original;
    const reason = incomingFailureReason(original.qemuReason, stderr) ?? '';
    return new MigrationFailedError(direction, original.stage, reason, { stderr, cause: original.cause });
  }
  if (original instanceof QemuError) return original;
  if (original instanceof QmpAbortedError) return new MigrationAbortedError(direction, stage, original.cause);
  if (original instanceof QmpCommandError) {
    const stderr = restoring ? await processStderr(ctx, false) : undefined;
    const reason = restoring ? (incomingFailureReason(original.desc, stderr) ?? original.desc) : original.desc;
    return new MigrationFailedError(direction, stage, reason, stderr === undefined ? { cause: original } : { cause: original, stderr });
  }
  if (original instanceof QmpDisconnectedError) {
    const stderr = await processStderr(ctx, true);
    const exit = ctx.options.process?.exitStatus;
    const lines = stderrErrors(stderr);
    const options = stderr === undefined ? { cause: original } : { cause: original, stderr };
    if (exit && exit.signal === null && exit.code !== 0 && lines.length > 0) {
      // QEMU quit on its own with an error (e.g. exit-on-error after a bad
      // incoming stream): a failed migration, not a crash.
      return new MigrationFailedError(direction, stage, lines.join('; '), options);
    }
    const how = exit ? (exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.code}`) : undefined;
    return new QemuExitedError(direction, stage, [how, ...lines].filter(Boolean).join('; ') || undefined, options);
  }
  if (original instanceof QmpTimeoutError) {
    return new MigrationStalledError(direction, stage, `QEMU did not answer ${original.command} within ${original.timeoutMs} ms`, {
      cause: original,
    });
  }
  const message = original instanceof Error ? original.message : String(original);
  return new MigrationFailedError(direction, stage, message, { cause: original });
}

function num(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

function optNum(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

/**
 * Tracks passes from QEMU's `dirty-sync-count` (one bitmap sync per pass): the current pass is
 * credited with the bytes written since it began; a new count opens the next pass. Sampled, so
 * bytes written between a sync and the next poll count in the pass before.
 */
function notePass(ctx: Context, info: Record<string, unknown>, elapsedMs: number): void {
  const ram = ramOf(info);
  if (!ram) return;
  const sync = Math.max(1, num(ram['dirty-sync-count']));
  const transferred = num(ram['transferred']);
  const current = ctx.passes.at(-1);
  if (current) current.bytes = Math.max(0, transferred - ctx.passStartBytes);
  if (!current || sync > ctx.passSync) {
    ctx.passSync = sync;
    ctx.passStartBytes = transferred;
    if (current || transferred === 0) ctx.passes.push({ pass: ctx.passes.length + 1, bytes: 0, startMs: elapsedMs });
    else ctx.passes.push({ pass: 1, bytes: transferred, startMs: 0 });
    if (!current && transferred > 0) ctx.passStartBytes = 0;
  }
}

function ramOf(info: Record<string, unknown>): Record<string, unknown> | undefined {
  const ram = info['ram'];
  return typeof ram === 'object' && ram !== null ? (ram as Record<string, unknown>) : undefined;
}

/** Turns a query-migrate answer into a progress sample. Pure. */
export function toProgress(direction: MigrationDirection, info: Record<string, unknown>, elapsedMs: number): MigrationProgress {
  const ram = ramOf(info) ?? {};
  return {
    direction,
    status: typeof info['status'] === 'string' ? info['status'] : 'none',
    total: num(ram['total']),
    transferred: num(ram['transferred']),
    remaining: num(ram['remaining']),
    mbps: num(ram['mbps']),
    normal: num(ram['normal']),
    duplicate: num(ram['duplicate']),
    ...(num(ram['page-size']) > 0 ? { pageSize: num(ram['page-size']) } : {}),
    elapsedMs,
  };
}

function toStats(ctx: Context, plan: MigrationPlan, info: Record<string, unknown>, wallTimeMs: number): MigrationStats {
  const { direction, options } = ctx;
  const ram = ramOf(info);
  return {
    direction,
    format: options.format,
    channels: plan.channels,
    directIo: plan.directIo,
    offset: options.offset,
    wallTimeMs,
    totalTimeMs: optNum(info['total-time']),
    setupTimeMs: optNum(info['setup-time']),
    downtimeMs: optNum(info['downtime']),
    ram: ram && {
      total: num(ram['total']),
      transferred: num(ram['transferred']),
      remaining: num(ram['remaining']),
      normal: num(ram['normal']),
      normalBytes: num(ram['normal-bytes']),
      duplicate: num(ram['duplicate']),
      mbps: num(ram['mbps']),
      pagesPerSecond: num(ram['pages-per-second']),
      dirtySyncCount: num(ram['dirty-sync-count']),
      pageSize: num(ram['page-size']),
    },
    capabilities: Object.fromEntries(plan.capabilities.map((c) => [c.capability, c.state])),
    parameters: { ...plan.preParameters, ...plan.parameters },
    queryMigrate: info,
    passes: ctx.passes,
    ...(ctx.live ? { live: ctx.live } : {}),
  };
}
