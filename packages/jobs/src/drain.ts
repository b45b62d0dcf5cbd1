/**
 * A host drain as a job of its own (`d-…`): its state is the fold of its events, and every change
 * is `decideDrain(command, foldDrain(history))`, which returns the drain's events and the child
 * actions to take (save a VM, restore an image, cancel a job). The children are ordinary save and
 * restore jobs; their final-ness is the jobs' one rule (`isFinal`). Pure: no I/O, no clock but
 * `meta.now`.
 */
import {
  jobIdFor,
  makeEvent,
  type DrainRequest,
  type DrainVmPhase,
  type DrainVmUpdatedData,
  type JobEvent,
  type RestoreRequestInput,
  type SaveRequestInput,
} from '@vmsave/contracts';
import { evolve, initialState, isFinal, type JobState } from './state.ts';

export type DrainStatus = 'none' | 'running' | 'completed' | 'failed' | 'cancelled';
export type DrainEvent = Extract<JobEvent, { type: `Drain${string}` }>;
export type DrainVm = DrainVmUpdatedData;

export interface DrainState {
  drainId: string | undefined;
  status: DrainStatus;
  request?: DrainRequest;
  /** The host's VMs, in the order the drain named them. */
  vms: DrainVm[];
  /** With `to: any`: the hosts the restores go to in turn (`DrainRequested.targets`). */
  targets?: string[];
  cancelRequested?: { reason: string; at: string };
  /** Why it failed (`DrainFailed`) or was cancelled. */
  reason?: string;
  requestedAt?: string;
  updatedAt?: string;
  version: number;
}

export const initialDrainState = (): DrainState => ({ drainId: undefined, status: 'none', vms: [], version: 0 });

/** Whether an event belongs to a drain (`foldDrain` folds only these). */
export const isDrainEvent = (e: JobEvent): e is DrainEvent => e.type.startsWith('Drain');

/** The drain is over: completed, failed or cancelled. */
export const isDrainFinal = (s: DrainState): boolean => s.status === 'completed' || s.status === 'failed' || s.status === 'cancelled';

/**
 * A VM that will not move again: failed, cancelled, restored, or saved when there is nothing to
 * restore (no target, or the drain was cancelled before its restore was asked).
 */
export function isVmDone(s: Pick<DrainState, 'request' | 'cancelRequested'>, v: DrainVm): boolean {
  if (v.phase === 'failed' || v.phase === 'cancelled' || v.phase === 'restored') return true;
  return v.phase === 'saved' && (!s.request?.to || s.cancelRequested !== undefined);
}

/** Fold one drain event. Total: an event that does not apply leaves the state as it is. */
export function evolveDrain(s: DrainState, e: JobEvent): DrainState {
  if (!isDrainEvent(e)) return s;
  const base: DrainState = { ...s, drainId: e.jobId, version: s.version + 1, updatedAt: e.at };
  if (isDrainFinal(s)) return base;
  switch (e.type) {
    case 'DrainRequested':
      if (s.status !== 'none') return base;
      return {
        ...base,
        status: 'running',
        request: e.data.request,
        vms: e.data.vms.map((vm) => ({ vm, phase: 'queued' as const })),
        ...(e.data.targets?.length ? { targets: e.data.targets } : {}),
        requestedAt: e.at,
      };
    case 'DrainVmUpdated':
      if (!s.vms.some((v) => v.vm === e.data.vm)) return base;
      return { ...base, vms: s.vms.map((v) => (v.vm === e.data.vm ? { ...v, ...e.data } : v)) };
    case 'DrainCancelRequested':
      return { ...base, cancelRequested: { reason: e.data.reason, at: e.at } };
    case 'DrainCompleted':
      return { ...base, status: 'completed', vms: e.data.outcome };
    case 'DrainFailed':
      return { ...base, status: 'failed', reason: e.data.reason, vms: e.data.outcome.length ? e.data.outcome : s.vms };
    case 'DrainCancelled':
      return { ...base, status: 'cancelled', reason: e.data.reason, vms: e.data.outcome };
  }
}

export const foldDrain = (events: readonly JobEvent[], from: DrainState = initialDrainState()): DrainState => events.reduce(evolveDrain, from);

/** The request id and job id of a drain's child: deterministic, so asking again after a crash is a duplicate. */
export function childOf(drainId: string, kind: 'save' | 'restore', vm: string): { requestId: string; jobId: string } {
  const requestId = `${drainId}.${kind}.${vm}`;
  return { requestId, jobId: jobIdFor(kind, requestId) };
}

/** What the orchestrator does for a drain: ask a save or restore, or cancel a child job. */
export type DrainAction =
  | { type: 'save'; vm: string; jobId: string; request: SaveRequestInput }
  | { type: 'restore'; vm: string; jobId: string; request: RestoreRequestInput }
  | { type: 'cancel'; vm: string; jobId: string; requestId: string; reason: string };

export type DrainCommand =
  /** Start a drain of `request.host` over the VMs its latest announcement lists. */
  | { type: 'Start'; drainId: string; request: DrainRequest; vms: string[]; targets?: string[] }
  /** A drain that cannot start (its host unknown): it ends failed with the reason. */
  | { type: 'Refuse'; drainId: string; request: DrainRequest; reason: string }
  /** A child job's state after one of its events (folded with the jobs' own `fold`). */
  | { type: 'Observe'; child: JobState }
  /** `vmsave.cmd.cancel` named the drain. */
  | { type: 'Cancel'; reason: string; requestId?: string }
  /**
   * After a restart: the children's states as the log has them (absent: the child has no event
   * yet). Asks again what was decided but may not have been sent, and applies what the children
   * did meanwhile.
   */
  | { type: 'Resume'; children: ReadonlyMap<string, JobState> };

export type DrainDecision = { ok: true; events: DrainEvent[]; actions: DrainAction[] } | { ok: false; rule: string; message: string };

export interface DrainMeta {
  source: string;
  now?: Date;
}

/** The reason of a child job that ended without doing its part, from its state. */
function childError(c: JobState): string {
  const what = `${c.kind ?? 'job'} ${c.jobId}`;
  if (c.status === 'cancelled') return `${what} cancelled`;
  if (c.lastFailure) return `${what} failed at ${c.lastFailure.stage} (${c.lastFailure.code}): ${c.lastFailure.reason}`;
  if (c.rejection) return `${what} rejected (${c.rejection.rule}${c.rejection.field ? `, ${c.rejection.field}` : ''}): ${c.rejection.message}`;
  return `${what} ended ${c.status}`;
}

/** An image's file name: images lie directly in their host's image directory (`RestoreRequest.image` is relative to it). */
const imageName = (p: string): string => p.slice(p.lastIndexOf('/') + 1);

/** Decide a command against a drain's folded state. */
export function decideDrain(cmd: DrainCommand, s0: DrainState, meta: DrainMeta): DrainDecision {
  const at = meta.now ?? new Date();
  const events: DrainEvent[] = [];
  const actions: DrainAction[] = [];
  let s = s0;
  const emit = <T extends DrainEvent['type']>(type: T, data: Extract<DrainEvent, { type: T }>['data']) => {
    const e = makeEvent(type, (s.drainId ?? (cmd as { drainId?: string }).drainId)!, data as never, { source: meta.source, at }) as DrainEvent;
    events.push(e);
    s = evolveDrain(s, e);
  };
  const update = (v: DrainVm, patch: Partial<DrainVm> & { phase: DrainVmPhase }) => emit('DrainVmUpdated', { ...v, ...patch });
  const vmOf = (jobId: string) => s.vms.find((v) => v.saveJobId === jobId || v.restoreJobId === jobId);
  const askSave = (v: DrainVm) => {
    const r = s.request!;
    const { requestId, jobId } = childOf(s.drainId!, 'save', v.vm);
    const request: SaveRequestInput = {
      requestId,
      vm: v.vm,
      format: r.format,
      after: r.after,
      priority: r.priority,
      drainId: s.drainId!,
      requestedBy: `drain ${s.drainId}`,
      // Restored on another host: the image must reach it (a drain to elsewhere replicates unless told not to).
      ...(r.replicate ? { replicate: r.replicate } : r.to && r.to !== r.host ? { replicate: 'bus' as const } : {}),
    };
    actions.push({ type: 'save', vm: v.vm, jobId, request });
    return jobId;
  };
  /** Where a VM is restored: the named target, or with `to: any` the targets in turn by the VM's place in the drain. */
  const targetOf = (v: DrainVm): string | undefined => {
    const to = s.request?.to;
    if (!to) return undefined;
    if (to !== 'any') return to;
    const t = s.targets ?? [];
    return t.length
      ? t[
          Math.max(
            0,
            s.vms.findIndex((x) => x.vm === v.vm),
          ) % t.length
        ]
      : undefined;
  };
  const askRestore = (v: DrainVm) => {
    const r = s.request!;
    const { requestId, jobId } = childOf(s.drainId!, 'restore', v.vm);
    const request: RestoreRequestInput = {
      requestId,
      // Named relative to the image directory: the save's path is the drained host's, the target has its own directory.
      image: imageName(v.imagePath!),
      ...(targetOf(v) ? { host: targetOf(v) } : {}),
      priority: r.priority,
      drainId: s.drainId!,
      requestedBy: `drain ${s.drainId}`,
    };
    actions.push({ type: 'restore', vm: v.vm, jobId, request });
    return jobId;
  };
  const askCancel = (v: DrainVm, reason: string) => {
    const jobId = v.phase === 'restoring' ? v.restoreJobId : v.saveJobId;
    if (jobId) actions.push({ type: 'cancel', vm: v.vm, jobId, requestId: `${s.drainId}.cancel.${jobId}`, reason: `drain ${s.drainId}: ${reason}` });
  };
  /** Whether a VM's image must reach the bus before its restore is asked: restored elsewhere, and replicated (askSave). */
  const needsReplica = (): boolean => {
    const r = s.request;
    return !!r?.to && r.to !== r.host && (r.replicate ?? 'bus') === 'bus';
  };
  /** A verified save's restore: asked now, or once its image is on the bus; a copy that failed fails the VM, naming where its image is. */
  const restoreWhenReady = (v: DrainVm, c: JobState) => {
    if (!s.request?.to || s.cancelRequested) return;
    if (needsReplica() && !c.replicated) {
      if (c.replicationFailed) {
        const host = s.request.host;
        update(v, {
          phase: 'failed',
          error: `save ${c.jobId}: its image could not be copied to the bus (${c.replicationFailed.code}: ${c.replicationFailed.reason}); it is verified on ${host}: vmsave restore ${imageName(v.imagePath ?? '')} --host ${host}`,
        });
      }
      return;
    }
    update(v, { phase: 'restoring', restoreJobId: askRestore(v) });
  };
  /** A child's state applied to its VM: the next phase, and a restore once the save is verified. */
  const observe = (c: JobState) => {
    const v = vmOf(c.jobId ?? '');
    if (!v || isVmDone(s, v)) return;
    if (c.kind === 'save' && v.saveJobId === c.jobId && (v.phase === 'queued' || v.phase === 'saving')) {
      if (c.status === 'verified') {
        update(v, { phase: 'saved', imagePath: c.imagePath, error: undefined });
        restoreWhenReady(s.vms.find((x) => x.vm === v.vm)!, c);
      } else if (isFinal(c)) {
        // The save did not give an image to restore: the VM stays where it was (a failed save resumes it).
        const where =
          c.status === 'rejected' && c.checks
            ? 'the VM quit after its save and its image failed verification'
            : c.lastFailure?.vmResumed === false
              ? `the VM was not resumed on ${s.request?.host}`
              : `the VM stays on ${s.request?.host}`;
        update(v, { phase: c.status === 'cancelled' ? 'cancelled' : 'failed', error: `${childError(c)}; ${where}` });
      } else if (v.phase === 'queued' && (c.status === 'running' || c.status === 'completed')) {
        update(v, { phase: 'saving' });
      }
    } else if (c.kind === 'save' && v.saveJobId === c.jobId && v.phase === 'saved' && !v.restoreJobId) {
      // Saved, its restore waiting for the image's copy on the bus (`ImageReplicated` on the save job).
      restoreWhenReady(v, c);
    } else if (c.kind === 'restore' && v.restoreJobId === c.jobId && v.phase === 'restoring' && isFinal(c)) {
      if (c.status === 'completed') update(v, { phase: 'restored', restoredOn: c.host });
      else update(v, { phase: c.status === 'cancelled' ? 'cancelled' : 'failed', error: childError(c) });
    }
  };
  /** Ends the drain once every VM is done. */
  const settle = () => {
    if (s.status !== 'running' || !s.vms.every((v) => isVmDone(s, v))) return;
    const outcome = s.vms;
    if (s.cancelRequested) return emit('DrainCancelled', { reason: s.cancelRequested.reason, outcome });
    const failed = outcome.filter((v) => v.phase === 'failed' || v.phase === 'cancelled');
    if (failed.length) return emit('DrainFailed', { reason: `${failed.length} of ${outcome.length} VM(s) not drained: ${failed.map((v) => v.vm).join(', ')}`, outcome });
    emit('DrainCompleted', { outcome });
  };

  switch (cmd.type) {
    case 'Start':
    case 'Refuse': {
      if (s.status !== 'none') return { ok: true, events: [], actions: [] };
      const vms = cmd.type === 'Start' ? [...new Set(cmd.vms)] : [];
      const targets = cmd.type === 'Start' && cmd.request.to === 'any' ? (cmd.targets ?? []).filter((h) => h !== cmd.request.host) : [];
      emit('DrainRequested', { request: cmd.request, vms, ...(targets.length ? { targets } : {}) });
      if (cmd.type === 'Refuse') {
        emit('DrainFailed', { reason: cmd.reason, outcome: [] });
        break;
      }
      for (const vm of vms) {
        const v = s.vms.find((x) => x.vm === vm)!;
        update(v, { phase: 'queued', saveJobId: askSave(v) });
      }
      settle();
      break;
    }
    case 'Observe':
      if (s.status !== 'running') return { ok: true, events: [], actions: [] };
      observe(cmd.child);
      settle();
      break;
    case 'Cancel': {
      if (s.status === 'none') return { ok: false, rule: 'job-unknown', message: 'no such drain' };
      if (isDrainFinal(s)) return { ok: false, rule: 'job-final', message: `drain ${s.drainId} is ${s.status} already` };
      if (s.cancelRequested) return { ok: true, events: [], actions: [] };
      emit('DrainCancelRequested', { reason: cmd.reason, ...(cmd.requestId ? { requestId: cmd.requestId } : {}) });
      for (const v of s.vms) if (!isVmDone(s, v)) askCancel(v, cmd.reason);
      settle();
      break;
    }
    case 'Resume': {
      if (s.status !== 'running') return { ok: true, events: [], actions: [] };
      for (const v0 of s.vms) {
        const v = s.vms.find((x) => x.vm === v0.vm)!;
        if (isVmDone(s, v)) continue;
        const id = v.phase === 'restoring' ? v.restoreJobId : v.saveJobId;
        const c = id ? cmd.children.get(id) : undefined;
        if (!id) {
          // Named at the start but its save never recorded (cannot happen from `Start`; kept total).
          update(v, { phase: 'queued', saveJobId: askSave(v) });
        } else if (!c || c.status === 'none') {
          // Decided before the restart, perhaps never sent: ask again (the same request id: a duplicate if it was).
          if (v.phase === 'restoring') askRestore(v);
          else askSave(v);
        } else {
          observe(c);
        }
      }
      if (s.cancelRequested) for (const v of s.vms) if (!isVmDone(s, v)) askCancel(v, s.cancelRequested.reason);
      settle();
      break;
    }
  }
  return { ok: true, events, actions };
}

const ROW_STATUS: Record<DrainStatus, JobState['status']> = { none: 'none', running: 'running', completed: 'completed', failed: 'failed', cancelled: 'cancelled' };

/** A drain as one row of a read model (`kind: 'drain'`): its state, its host, its VM count and its child jobs. */
export function drainRow(d: DrainState, base: JobState = initialState()): JobState {
  return {
    ...base,
    kind: 'drain',
    jobId: d.drainId,
    status: ROW_STATUS[d.status],
    host: d.request?.host,
    requestedAt: d.requestedAt,
    updatedAt: d.updatedAt,
    version: d.version,
    drain: { request: d.request, to: d.request?.to, vmCount: d.vms.length, vms: d.vms, cancelRequested: d.cancelRequested, reason: d.reason },
  };
}

/** The drain a row holds (`drainRow` the other way). */
function drainOfRow(s: JobState): DrainState {
  if (s.kind !== 'drain') return initialDrainState();
  const status = (Object.keys(ROW_STATUS) as DrainStatus[]).find((k) => ROW_STATUS[k] === s.status) ?? 'none';
  return {
    drainId: s.jobId,
    status,
    request: s.drain?.request,
    vms: s.drain?.vms ?? [],
    cancelRequested: s.drain?.cancelRequested,
    reason: s.drain?.reason,
    requestedAt: s.requestedAt,
    updatedAt: s.updatedAt,
    version: s.version,
  };
}

/**
 * Fold one event into a read model's row: a save or restore as `evolve` does, a drain's events
 * into its drain row. For the read models (Redis projection, CLI); the scheduler folds drains
 * apart (`foldDrain`).
 */
export function evolveView(s: JobState, e: JobEvent): JobState {
  if (!isDrainEvent(e)) return evolve(s, e);
  return drainRow(evolveDrain(drainOfRow(s), e), s);
}

export const foldView = (events: readonly JobEvent[], from: JobState = initialState()): JobState => events.reduce(evolveView, from);
