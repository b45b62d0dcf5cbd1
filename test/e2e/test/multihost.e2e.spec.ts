import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { drainIdFor, jobIdFor, type DrainVmOutcome } from '@vmsave/contracts';
import { QmpClient } from '@vmsave/qmp';
import { guestMemory, makePattern, netnsPids, netnsUnavailable, patternVm, sweepStaleLabs, uniq, waitFor } from '@vmsave/testkit';
import { NetnsFleet } from '../src/netns-hosts.ts';
import { REPO } from '../src/stack.ts';
import { EXIT, vmsave, type CliResult } from '../src/vmsave-bin.ts';

/**
 * The multi-host end-to-end test on separate hosts: two executors, each in its own network
 * namespace (made by the test, torn down after) with its own host name and image directory,
 * reaching the test's private NATS and Redis over a veth pair; the scheduler and the verifier on
 * the test's side. QEMU runs inside each namespace as a child of its executor.
 */
const unavailable = netnsUnavailable();
const MEM = 128;
let fleet: NetnsFleet;

const cmdline = (pid: number) => readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');

/** Pids of the QEMUs of `vm` inside host `short`'s namespace (`-name guest=<vm>` on their command line). */
async function qemusIn(short: string, vm: string): Promise<number[]> {
  const pids = fleet.lab.pids(short);
  const cmds = await Promise.all(pids.map(cmdline));
  return pids.filter((_, i) => cmds[i]!.includes('qemu-system') && cmds[i]!.includes(`\0guest=${vm}\0`));
}

/** The live VMs host `short` announces, by name and status. */
async function announced(short: string): Promise<Map<string, string>> {
  const a = await fleet.stack.waitForHost(fleet.hostName(short));
  return new Map(a.vms.map((v) => [v.name, v.status]));
}

/**
 * The state a save must keep: the VM paused (nothing changes its RAM after), its pattern in place,
 * the digest of each MiB of its RAM.
 */
async function pauseAndDigest(short: string, vm: string, pattern: Buffer): Promise<string[]> {
  await using qmp = await QmpClient.connect(fleet.qmpPath(short, vm));
  await qmp.execute('stop');
  expect((await guestMemory(qmp, fleet.dir)).equals(pattern)).toBe(true);
  // awaited here: the QMP session is disposed when this returns.
  return await fleet.ramDigests(qmp, MEM);
}

describe.skipIf(unavailable !== undefined)(`multi-host over network namespaces${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  beforeAll(async () => {
    fleet = await NetnsFleet.start({ hosts: ['a', 'b'] });
  }, 120_000);
  afterAll(async () => {
    if (!fleet) return;
    const lab = fleet.lab;
    await fleet.stop();
    // Nothing the test made is left: namespaces, veths, the service address, processes inside.
    expect(lab.leftovers()).toEqual([]);
  }, 60_000);

  it('stage 1: a VM started by the executor inside namespace A is saved on A, restored on A, guest RAM byte-identical', async () => {
    const pattern = makePattern(undefined, 15);
    const vm = uniq('mh1').replace(/[^A-Za-z0-9_-]/g, '');
    await fleet.defineVm('a', await patternVm(fleet.dir, vm, MEM, pattern));
    const executor = await fleet.startExecutor('a', { VMSAVE_AUTOSTART: vm, VMSAVE_MAX_CONCURRENT: '1' });
    await fleet.startExecutor('b');
    await fleet.stack.waitForHost(fleet.hostName('a'), [vm], 90_000);
    await fleet.stack.waitForHost(fleet.hostName('b'), [], 60_000);

    // Separate hosts: A's executor and its QEMU live in A's namespace, not on the test's side.
    const inA = fleet.lab.pids('a');
    expect(inA).toContain(executor.pid);
    const qemuInA = await qemusIn('a', vm);
    expect(qemuInA).toHaveLength(1);
    expect(fleet.lab.pids('b')).not.toContain(qemuInA[0]);
    // …and reaches the test's NATS from its own address, over its veth pair.
    const natsAt = `${fleet.lab.serviceAddr}:${fleet.nats.port}`;
    expect(await fleet.connections('a')).toContainEqual({ local: expect.stringMatching(new RegExp(`^${fleet.lab.host('a').nsAddr.replaceAll('.', '\\.')}:`)), remote: natsAt });
    expect(await fleet.connections('b')).toContainEqual({ local: expect.stringMatching(new RegExp(`^${fleet.lab.host('b').nsAddr.replaceAll('.', '\\.')}:`)), remote: natsAt });

    const before = await pauseAndDigest('a', vm, pattern);
    const save = await fleet.stack.client.save({ requestId: uniq('mh1-save'), vm, format: 'sparse', after: 'quit' });
    expect(save.admission).toMatchObject({ outcome: 'accepted' });
    const saved = await fleet.stack.client.waitForJob(save.jobId, { timeoutMs: 120_000 });
    expect(saved.status, await fleet.log('a')).toBe('verified');
    expect(saved.imagePath?.startsWith(fleet.dirs('a').imageDir)).toBe(true);
    await waitFor(
      'the saved VM to stop on A',
      async () => {
        const status = (await announced('a')).get(vm);
        return status === undefined || status === 'stopped';
      },
      30_000,
      300,
    );

    const restore = await fleet.stack.client.restore({ requestId: uniq('mh1-restore'), image: path.basename(saved.imagePath!) });
    expect(restore.admission).toMatchObject({ outcome: 'accepted' });
    const restored = await fleet.stack.client.waitForJob(restore.jobId, { timeoutMs: 120_000 });
    expect(restored.status, await fleet.log('a')).toBe('completed');
    await using qmp = await QmpClient.connect(fleet.qmpPath('a', vm));
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('paused');
    const after = await fleet.ramDigests(qmp, MEM);
    expect(after.length).toBe(MEM - 1);
    expect(
      after.findIndex((d, i) => d !== before[i]),
      'first MiB that differs',
    ).toBe(-1);
    await qmp.execute('quit').catch(() => undefined);
  }, 150_000);

  const stage2 = 'stage 2: saved on A with replicate: bus (ImageReplicated); A image directory deleted and A stopped; restored on B, guest RAM byte-identical';
  it(stage2, async () => {
    const pattern = makePattern(undefined, 16);
    const vm = uniq('mh2').replace(/[^A-Za-z0-9_-]/g, '');
    await fleet.defineVm('a', await patternVm(fleet.dir, vm, MEM, pattern));
    await fleet.startExecutor('a', { VMSAVE_AUTOSTART: vm, VMSAVE_MAX_CONCURRENT: '1' });
    if (!fleet.running('b')) await fleet.startExecutor('b');
    await fleet.stack.waitForHost(fleet.hostName('a'), [vm], 90_000);
    const before = await pauseAndDigest('a', vm, pattern);

    const save = await fleet.stack.client.save({ requestId: uniq('mh2-save'), vm, format: 'sparse', after: 'quit', replicate: 'bus' });
    expect(save.admission).toMatchObject({ outcome: 'accepted' });
    const saved = await fleet.stack.client.waitForJob(save.jobId, { timeoutMs: 120_000 });
    expect(saved.status, await fleet.log('a')).toBe('verified');
    const replicated = await waitFor(
      'the image to be replicated (ImageReplicated)',
      async () => {
        const h = await fleet.stack.client.history(save.jobId);
        const failed = h.find((e) => e.type === 'ImageReplicationFailed');
        if (failed) throw new Error(`replication failed: ${JSON.stringify(failed.data)}`);
        return h.find((e) => e.type === 'ImageReplicated');
      },
      90_000,
      300,
    );
    expect(replicated.type === 'ImageReplicated' && replicated.data.host).toBe(fleet.hostName('a'));

    // Host A is gone: its images deleted, its executor stopped.
    const imageName = path.basename(saved.imagePath!);
    await rm(fleet.dirs('a').imageDir, { recursive: true, force: true });
    await fleet.stopExecutor('a');
    expect(await qemusIn('a', vm)).toEqual([]);

    // `vmsave restore IMAGE --host B --wait`, as an operator would.
    const restoreId = uniq('mh2-restore');
    const cli = await vmsave(
      ['restore', imageName, '--host', fleet.hostName('b'), '--request-id', restoreId, '--wait', '--json'],
      { ...fleet.stack.env, VMSAVE_LOG_LEVEL: 'warn' },
      { timeoutMs: 180_000 },
    );
    expect(cli.code, `${cli.stdout}\n${cli.stderr}\n${(await fleet.log('b')).slice(-3000)}`).toBe(EXIT.ok);
    const restore = { jobId: jobIdFor('restore', restoreId) };
    const restored = await fleet.stack.client.waitForJob(restore.jobId, { timeoutMs: 30_000 });
    expect(restored.status, await fleet.log('b')).toBe('completed');
    const history = await fleet.stack.client.history(restore.jobId);
    const fetched = history.find((e) => e.type === 'ImageFetched');
    expect(fetched?.type === 'ImageFetched' && fetched.data.host, JSON.stringify(history.map((e) => e.type))).toBe(fleet.hostName('b'));
    expect(fetched?.type === 'ImageFetched' && fetched.data.sourceJobId).toBe(save.jobId);
    expect(history.find((e) => e.type === 'RestoreStarted')?.source).toContain(fleet.hostName('b'));
    expect(existsSync(path.join(fleet.dirs('b').imageDir, imageName))).toBe(true);
    expect(existsSync(fleet.dirs('a').imageDir)).toBe(false);

    // The VM runs on B now (its QEMU in B's namespace), paused as saved, with the saved RAM.
    expect(await qemusIn('b', vm)).toHaveLength(1);
    await using qmp = await QmpClient.connect(fleet.qmpPath('b', vm));
    expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('paused');
    const after = await fleet.ramDigests(qmp, MEM);
    expect(after.length).toBe(MEM - 1);
    expect(
      after.findIndex((d, i) => d !== before[i]),
      'first MiB that differs',
    ).toBe(-1);
    await qmp.execute('quit').catch(() => undefined);
  }, 240_000);
  // Stage 3, in two steps over one drain: A's saves (within A's limit), then the restores on B.
  let drained: { vms: string[]; pattern: Buffer; end: string; outcome: DrainVmOutcome[]; trail: string; cli: CliResult } | undefined;
  it('stage 3a: a drain of three VMs from A to B with A limited to one job: all three saved and verified on A, never two saves at once (SaveStarted…end intervals)', async () => {
    const pattern = makePattern(undefined, 17);
    const vms = [1, 2, 3].map((i) => uniq(`mh3v${i}`).replace(/[^A-Za-z0-9_-]/g, ''));
    for (const vm of vms) await fleet.defineVm('a', await patternVm(fleet.dir, vm, MEM, pattern));
    await fleet.startExecutor('a', { VMSAVE_AUTOSTART: vms.join(','), VMSAVE_MAX_CONCURRENT: '1' });
    if (!fleet.running('b')) await fleet.startExecutor('b');
    await fleet.stack.waitForHost(fleet.hostName('a'), vms, 90_000);
    await fleet.stack.waitForHost(fleet.hostName('b'), [], 60_000);

    const requestId = uniq('mh3-drain');
    const drainId = drainIdFor(requestId);
    // The operator's command, run on the test's side against the fleet's bus.
    const cli = await vmsave(
      ['drain', '--host', fleet.hostName('a'), '--to', fleet.hostName('b'), '--format', 'sparse', '--replicate', 'bus', '--request-id', requestId, '--wait', '--json'],
      { ...fleet.stack.env, VMSAVE_LOG_LEVEL: 'warn' },
      { timeoutMs: 200_000 },
    );
    const end = await waitFor(
      'the drain to end',
      async () => (await fleet.stack.client.history(drainId)).find((e) => e.type === 'DrainCompleted' || e.type === 'DrainFailed' || e.type === 'DrainCancelled'),
      30_000,
      500,
    );
    const trail = JSON.stringify((await fleet.stack.client.history(drainId)).map((e) => [e.type, e.data]));
    expect(end.type, trail).not.toBe('DrainCancelled');
    const outcome = end.type === 'DrainCancelled' ? [] : end.data.outcome;
    expect(outcome.map((o) => o.vm).sort(), trail).toEqual([...vms].sort());
    drained = { vms, pattern, end: end.type, outcome, trail, cli };

    // A's saves, from the event log: each one's interval is SaveStarted … its end (completed,
    // failed or cancelled), and no two of them overlap (A's limit is one job at once).
    const intervals: Array<{ vm: string; start: number; end: number }> = [];
    for (const o of outcome) {
      expect(o.saveJobId, trail).toBeDefined();
      const h = await fleet.stack.client.history(o.saveJobId!);
      const started = h.filter((e) => e.type === 'SaveStarted');
      const ended = h.filter((e) => e.type === 'SaveCompleted' || e.type === 'SaveFailed' || e.type === 'SaveCancelled');
      expect(started.length, `${o.vm}: ${h.map((e) => e.type).join(', ')}`).toBeGreaterThan(0);
      expect(h.some((e) => e.type === 'ImageVerified')).toBe(true);
      for (const [i, st] of started.entries()) {
        expect(st.source).toContain(fleet.hostName('a'));
        intervals.push({ vm: o.vm, start: Date.parse(st.at), end: Date.parse(ended[i]!.at) });
      }
    }
    expect(intervals).toHaveLength(3);
    let most = 0;
    for (const x of intervals) most = Math.max(most, intervals.filter((y) => y.start <= x.start && x.start < y.end).length);
    expect(most, JSON.stringify(intervals)).toBe(1);
    // Saved with after: quit, every VM is gone from A.
    for (const vm of vms) expect(await qemusIn('a', vm)).toEqual([]);
  }, 240_000);

  it('stage 3b: the drain completes with all three VMs running on B (announcement and QMP), their RAM as saved', async () => {
    expect(drained, 'stage 3a ran the drain').toBeDefined();
    const { vms, pattern, end, outcome, trail, cli } = drained!;
    for (const o of outcome) expect(o, o.error).toMatchObject({ phase: 'restored', restoredOn: fleet.hostName('b') });
    expect(end, `${trail}\n${(await fleet.log('b')).slice(-3000)}`).toBe('DrainCompleted');
    // `vmsave drain --wait` says so too (exit 4 when a VM was not drained).
    expect(cli.code, `${cli.stdout}\n${cli.stderr}`).toBe(EXIT.ok);

    // All three run on B: its announcement says so, and so does each QEMU (in B's namespace).
    // An announcement taken while something held a VM's QMP says `busy` for it: wait for `running`.
    const onB = await waitFor(
      `host ${fleet.hostName('b')} to announce ${vms.join(', ')} running`,
      async () => {
        const a = await fleet.stack.waitForHost(fleet.hostName('b'), vms, 60_000);
        return vms.every((vm) => a.vms.find((v) => v.name === vm)?.status === 'running') ? a : undefined;
      },
      60_000,
      500,
    ).catch(() => fleet.stack.waitForHost(fleet.hostName('b'), vms, 60_000));
    for (const vm of vms) {
      expect(onB.vms.find((v) => v.name === vm)?.status).toBe('running');
      expect(await qemusIn('b', vm)).toHaveLength(1);
      await using qmp = await QmpClient.connect(fleet.qmpPath('b', vm));
      expect((await qmp.execute<{ status: string }>('query-status')).status).toBe('running');
      expect((await guestMemory(qmp, fleet.dir)).equals(pattern)).toBe(true);
      await qmp.execute('quit').catch(() => undefined);
    }
  }, 120_000);
});

interface Orphan {
  ns: string;
  link: string;
  addr: string;
  inside: number[];
}

/** What of an orphan's lab still exists. */
function remains(o: Orphan): string[] {
  const left: string[] = [];
  if (new RegExp(`^${o.ns}\\b`, 'm').test(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }))) left.push('namespace');
  if (new RegExp(`^${o.link}\\b`, 'm').test(execFileSync('ip', ['-br', 'link'], { encoding: 'utf8' }))) left.push('link');
  if (execFileSync('ip', ['-4', 'addr', 'show', 'dev', 'lo'], { encoding: 'utf8' }).includes(`${o.addr}/32`)) left.push('address');
  for (const p of o.inside) {
    // A killed process may stay a zombie until its new parent reaps it: that is gone too.
    let state = '';
    try {
      state = readFileSync(`/proc/${p}/stat`, 'utf8').replace(/^.*\) /s, '')[0] ?? '';
    } catch {
      /* gone */
    }
    if (state && state !== 'Z' && state !== 'X') left.push(`pid ${p}`);
  }
  return left;
}

/** Run the orphan script (a lab with a process inside that outlives its parent) in `mode`. */
async function orphan(mode: 'wait' | 'exit'): Promise<{ o: Orphan; child: ReturnType<typeof spawn> }> {
  const child = spawn(process.execPath, ['--conditions=development', '--import', 'tsx', path.join(REPO, 'test', 'e2e', 'src', 'netns-orphan.ts'), mode], {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => {
    out += d;
  });
  child.stderr!.on('data', (d) => {
    err += d;
  });
  const o = await waitFor(
    'the orphan script to report its lab',
    () => {
      if (child.exitCode !== null && !out.includes('\n')) throw new Error(`orphan script exited ${child.exitCode}: ${err}`);
      return out.includes('\n') ? (JSON.parse(out.split('\n')[0]!) as Orphan) : undefined;
    },
    30_000,
    100,
  );
  return { o, child };
}

describe.skipIf(unavailable !== undefined)(`the netns harness leaves nothing behind${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  it('a process that exits without tearing its lab down: the exit hook removes namespace, link, address and the processes inside', async () => {
    const { o, child } = await orphan('exit');
    expect(o.inside.length).toBeGreaterThan(0);
    await waitFor('the orphan script to exit', () => child.exitCode !== null, 30_000, 50);
    expect(child.exitCode).toBe(0);
    expect(remains(o)).toEqual([]);
  }, 60_000);

  it('a process killed outright (no hook runs): its lab survives it, and the next sweep removes all of it', async () => {
    const { o, child } = await orphan('wait');
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
    // The namespace, its link and the process inside outlived the killed owner…
    expect(remains(o)).toEqual(expect.arrayContaining(['namespace', 'link', 'address']));
    expect(netnsPids(o.ns).length).toBeGreaterThan(0);
    // …until the next lab's start sweeps labs whose owner is dead.
    expect(sweepStaleLabs()).toBeGreaterThanOrEqual(1);
    expect(remains(o)).toEqual([]);
  }, 60_000);
});
