/**
 * The seal's cost on a dirty VM's save, per mode (not a test). For each mode a paused q35 VM whose
 * RAM holds 87.5 % random data (QEMU's `-device loader`, as test/bench's dirty VM) is saved by real
 * QEMU into a vmsave image (`file:` migration at the stream offset; sparse = mapped-ram + multifd,
 * 1 channel as test/bench's `sparse` / `sparse-direct` modes; direct IO = QEMU's `direct-io`), then:
 *
 * - the save's own time: QEMU's migration (start → completed) plus the fdatasync after the seal;
 * - `sealImage` right after the save, with the RAM chunks on worker threads (`after`; a legacy
 *   stream walked out of the workers' chunks, one read of its pages), on the workers with the
 *   stream walked from the file first (`two-pass`, legacy only: the path before the one-pass seal)
 *   and in the calling thread (`before`, the oldest path), alternating; a direct-IO save leaves
 *   the pages out of the page cache, so its later runs drop the cache first
 *   (`echo 1 > /proc/sys/vm/drop_caches`);
 * - the restore gate: `checkSeal` scope `state` (every restore) and `full` (`verify: full`), with
 *   the page cache warm and cold, before / after.
 *
 * - legacy only, the follower (`startSealFollower`: the seal taken while QEMU writes): `runs` pairs
 *   of fresh saves, one alone (`sealWhileWriting: false`'s save: QEMU + fdatasync) and one with the
 *   follower running (QEMU + `finish()` + fdatasync), alternating; the seal's cost is (save with the
 *   follower + what remains after completion) − save alone, as % of the save alone.
 *
 * Medians of `runs`. The images and random files are deleted at the end.
 *
 *   cd packages/image && npx tsx bench/seal-cost.ts [MiB=4096] [runs=3] [modes=legacy,sparse,sparse-direct; also legacy-follow]
 */
import { spawn, execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { promises as fsp, readFileSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkSeal, createImage, finalizeImage, openFileSource, readImage, sealImage, startSealFollower, walkStream } from '../src/node/index.ts';
import { accel, descriptorFor } from '../test/fixtures.ts';
import { TinyQmp } from '../test/qmp.ts';

const MiB = 1024 * 1024;
const [mibArg = '4096', runsArg = '3', modesArg = 'legacy,sparse,sparse-direct'] = process.argv.slice(2);
const mib = Number(mibArg);
const runs = Number(runsArg);
interface Mode {
  id: string;
  format: 'legacy' | 'sparse';
  channels: number;
  directIo: boolean;
}
const MODES: Mode[] = [
  { id: 'legacy', format: 'legacy', channels: 1, directIo: false },
  // The follower's pairs of fresh saves only (the `legacy` mode runs them after its seal variants).
  { id: 'legacy-follow', format: 'legacy', channels: 1, directIo: false },
  { id: 'sparse', format: 'sparse', channels: 1, directIo: false },
  { id: 'sparse-direct', format: 'sparse', channels: 1, directIo: true },
  { id: 'sparse-direct-2', format: 'sparse', channels: 2, directIo: true },
];
const modes = modesArg.split(',').map((id) => {
  const m = MODES.find((x) => x.id === id);
  if (!m) throw new Error(`unknown mode ${id}; known: ${MODES.map((x) => x.id).join(', ')}`);
  return m;
});
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const log = (m: string): void => void process.stderr.write(`[seal-cost] ${new Date().toISOString().slice(11, 19)} ${m}\n`);

function dropCaches(): boolean {
  try {
    execFileSync('sync');
    writeFileSync('/proc/sys/vm/drop_caches', '1');
    return true;
  } catch {
    return false;
  }
}

/** Where test/bench's dirty VM puts its data: above 4 GiB first, then from 16 MiB below the PCI hole. */
function dirtyRegions(ramMiB: number, targetMiB: number, chunkMiB = 512): Array<[number, number]> {
  const lowMiB = ramMiB >= 2816 ? 2048 : ramMiB;
  const spans: Array<[number, number]> = [];
  let left = targetMiB;
  const take = (startMiB: number, sizeMiB: number, base: number): void => {
    for (let at = startMiB, end = startMiB + Math.min(sizeMiB, left); at < end; ) {
      const n = Math.min(chunkMiB, end - at);
      spans.push([base + at * MiB, n]);
      at += n;
      left -= n;
    }
  };
  if (ramMiB - lowMiB > 0) take(0, ramMiB - lowMiB, 4 * 1024 * MiB);
  if (left > 0) take(16, Math.max(0, lowMiB - 16 - 64), 0);
  return spans;
}

/** A paused VM with the random files loaded, saved into `target` at `offset`; the migration's ms. */
async function qemuSave(dir: string, mode: Mode, target: string, offset: number, loaders: string[]): Promise<number> {
  const sock = join(dir, `qmp-${process.pid}.sock`);
  const proc = spawn(
    'qemu-system-x86_64',
    ['-nodefaults', '-display', 'none', '-S', '-machine', `q35,accel=${accel()}`, '-m', String(mib), '-qmp', `unix:${sock},server=on,wait=off`, ...loaders],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  let qmp: TinyQmp | undefined;
  try {
    qmp = await TinyQmp.connect(sock, 60_000);
    const caps = [{ capability: 'events', state: true }];
    if (mode.format === 'sparse') caps.push({ capability: 'mapped-ram', state: true }, { capability: 'multifd', state: true });
    await qmp.execute('migrate-set-capabilities', { capabilities: caps });
    const params: Record<string, unknown> = { 'max-bandwidth': 0 };
    if (mode.format === 'sparse') params['multifd-channels'] = mode.channels;
    if (mode.directIo) params['direct-io'] = true;
    await qmp.execute('migrate-set-parameters', params);
    // QEMU's own CPU time (utime + stime, 10 ms clock ticks) over the migration, for the log: the save's CPU beside its wall time.
    const qemuCpu = (): number => {
      const f = readFileSync(`/proc/${proc.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return (Number(f[11]) + Number(f[12])) / 100;
    };
    const cpu0 = qemuCpu();
    const t0 = performance.now();
    await qmp.execute('migrate', { uri: `file:${target},offset=${offset}` });
    for (;;) {
      const st = (await qmp.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
      if (st.status === 'completed') break;
      if (st.status === 'failed') throw new Error(`migrate failed: ${st['error-desc'] ?? ''} ${stderr}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const ms = performance.now() - t0;
    log(`QEMU CPU ${(qemuCpu() - cpu0).toFixed(2)} s during the migration`);
    await qmp.execute('quit').catch(() => {});
    return ms;
  } finally {
    qmp?.close();
    if (proc.exitCode === null) {
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      if (!qmp) proc.kill('SIGTERM');
      await exited;
      clearTimeout(t);
    }
    await fsp.rm(sock, { force: true });
  }
}

const s = (ms: number): string => (ms / 1000).toFixed(2);
const dir = await fsp.mkdtemp(join(tmpdir(), 'vmsave-seal-cost-'));
const follows: string[] = [];
let loaders: string[] = [];

/** `runs` pairs of fresh saves: alone, then with the follower; the seal's cost as the difference. */
async function followCost(mode: Mode): Promise<string> {
  const alone: number[] = [];
  const withFollower: number[] = [];
  const rest: number[] = [];
  /** The same pairs' third save, sealed after completion (`sealImage`): its cost by the same formula. */
  const afterPairs: number[] = [];
  const pairs: number[] = [];
  const followed: number[] = [];
  for (let i = 0; i < runs; i++) {
    let aloneMs = 0;
    for (const leg of ['alone', 'follow', 'after'] as const) {
      const follow = leg === 'follow';
      const path = join(dir, `${mode.id}-follow.vmsave`);
      await fsp.rm(path, { force: true });
      const { streamOffset } = await createImage(path, {
        format: mode.format,
        channels: 0,
        directIo: mode.directIo,
        wasRunning: false,
        descriptor: descriptorFor(mode.format, mib),
      });
      const follower = follow ? startSealFollower(path) : undefined;
      const migrateMs = await qemuSave(dir, mode, path, streamOffset, loaders);
      const u0 = process.cpuUsage();
      const tf = performance.now();
      const r = follower ? await follower.finish() : undefined;
      const sealedAfter = leg === 'after' ? await sealImage(path) : undefined;
      const finishMs = performance.now() - tf;
      const u = process.cpuUsage(u0);
      const fh = await fsp.open(path, 'r+');
      const ts = performance.now();
      await fh.datasync();
      const syncMs = performance.now() - ts;
      await fh.close();
      const load = loadavg()[0]!.toFixed(1);
      if (sealedAfter) {
        afterPairs.push((100 * (migrateMs + finishMs + syncMs - aloneMs)) / aloneMs);
        log(
          `${mode.id}: save then sealImage ${s(migrateMs)} + seal ${s(finishMs)} + ${s(syncMs)} s (CPU ${s((u.user + u.system) / 1000)} s); pair cost ${afterPairs.at(-1)!.toFixed(1)} %; load ${load}`,
        );
      } else if (!r) {
        aloneMs = migrateMs + syncMs;
        alone.push(aloneMs);
        log(`${mode.id}: save alone ${s(migrateMs)} + ${s(syncMs)} s; load ${load}`);
      } else {
        if (r.walk !== 'follow') throw new Error(`${mode.id}: the follower fell back to sealImage (${follower!.stats.reason})`);
        withFollower.push(migrateMs + syncMs);
        rest.push(finishMs);
        followed.push(r.followedBytes ?? 0);
        pairs.push((100 * (migrateMs + finishMs + syncMs - aloneMs)) / aloneMs);
        log(
          `${mode.id}: save with follower ${s(migrateMs)} + ${s(syncMs)} s, finish ${s(finishMs)} s (CPU ${s((u.user + u.system) / 1000)} s; ms ${JSON.stringify(Object.fromEntries(Object.entries(follower!.stats.finishMs ?? {}).map(([k, v]) => [k, Math.round(v)])))}), ${((r.followedBytes ?? 0) / MiB).toFixed(0)} of ${(r.bytesRead / MiB).toFixed(0)} MiB read before completion; pair cost ${pairs.at(-1)!.toFixed(1)} %; load ${load}`,
        );
      }
      await fsp.rm(path, { force: true });
    }
  }
  const a = median(alone);
  const cost = median(withFollower) + median(rest) - a;
  return `| ${mode.id} | ${s(a)} | ${s(median(withFollower))} | ${s(median(rest))} | ${s(cost)} (${((100 * cost) / a).toFixed(1)} %) | ${median(pairs).toFixed(1)} % (${pairs.map((x) => x.toFixed(1)).join(', ')}) | ${(median(followed) / MiB).toFixed(0)} MiB | ${median(afterPairs).toFixed(1)} % (${afterPairs.map((x) => x.toFixed(1)).join(', ')}) |`;
}

try {
  const coldOk = dropCaches();
  const dirtyMiB = Math.floor(mib * 0.875);
  loaders = [];
  const piece = Buffer.allocUnsafe(64 * MiB);
  for (const [i, [addr, n]] of dirtyRegions(mib, dirtyMiB).entries()) {
    const f = join(dir, `dirty-${i}.bin`);
    const fh = await fsp.open(f, 'w');
    for (let off = 0; off < n * MiB; off += piece.length) {
      randomFillSync(piece);
      await fh.write(piece, 0, piece.length, off);
    }
    await fh.close();
    loaders.push('-device', `loader,file=${f},addr=0x${addr.toString(16)},force-raw=on`);
  }
  log(`${mib} MiB VM, ${dirtyMiB} MiB random, runs ${runs}, modes ${modes.map((m) => m.id).join(',')}, accel ${accel()}, drop_caches ${coldOk}`);
  const table: string[] = [];
  for (const mode of modes) {
    if (mode.id === 'legacy-follow') {
      follows.push(await followCost(mode));
      continue;
    }
    const path = join(dir, `${mode.id}.vmsave`);
    const { streamOffset } = await createImage(path, {
      format: mode.format,
      channels: mode.format === 'sparse' ? mode.channels : 0,
      directIo: mode.directIo,
      wasRunning: false,
      descriptor: descriptorFor(mode.format, mib),
    });
    const migrateMs = await qemuSave(dir, mode, path, streamOffset, loaders);
    // The save's fdatasync, measured right after QEMU (saveVm runs it after the seal: the seal then
    // shares the disk with the writeback; here the seal runs on a clean file).
    const fh = await fsp.open(path, 'r+');
    const ts = performance.now();
    await fh.datasync();
    const syncMs = performance.now() - ts;
    await fh.close();
    log(`${mode.id}: migrated in ${s(migrateMs)} s, fdatasync ${s(syncMs)} s`);
    // The seal right after the save (as saveVm does), then before/after alternating.
    // after: the defaults (2 workers; O_DIRECT reads for a direct-IO image); before: the calling
    // thread, buffered reads (the old path); buffered: workers without O_DIRECT (direct-IO modes only).
    // What the seal spends before any chunk: the stream walk that finds the layout (warm, after the seal runs).
    const walkMs = async (): Promise<number> => {
      const { header } = await readImage(path);
      const src = await openFileSource(path);
      const t = performance.now();
      await walkStream(src, header.streamOffset);
      const ms = performance.now() - t;
      await src.close();
      return ms;
    };
    const variants = [
      { name: 'after', o: {} },
      ...(mode.format === 'legacy' ? [{ name: 'two-pass', o: { onePass: false } }] : []),
      { name: 'before', o: { workers: 0 } },
      ...(mode.directIo ? [{ name: 'buffered', o: { directRead: false } }] : []),
    ];
    const times: Record<string, number[]> = { after: [], 'two-pass': [], before: [], buffered: [] };
    // CPU time of this process, worker threads included: what the seal costs whatever the load (wall time under load is CPU / share).
    const cpu: Record<string, number[]> = { after: [], 'two-pass': [], before: [], buffered: [] };
    let bytesRead = 0;
    let chunks = 0;
    for (let i = 0; i < runs; i++) {
      for (const v of variants) {
        if ((i > 0 || v.name !== 'after') && mode.directIo && coldOk) dropCaches();
        const u0 = process.cpuUsage();
        const r = await sealImage(path, v.o);
        const u = process.cpuUsage(u0);
        times[v.name]!.push(r.durationMs);
        cpu[v.name]!.push((u.user + u.system) / 1000);
        bytesRead = r.bytesRead;
        chunks = r.summary.chunks;
        log(
          `${mode.id}: seal ${v.name} ${s(r.durationMs)} s (CPU ${s(cpu[v.name]!.at(-1)!)} s), ${(r.bytesRead / MiB).toFixed(0)} MiB read, walk from ${r.walk}; load ${loadavg()[0]!.toFixed(1)}`,
        );
      }
    }
    const before = times.before!;
    const after = times.after!;
    const buffered = times.buffered!.length ? `; workers, buffered reads: ${s(median(times.buffered!))} s` : '';
    const twoPass = times['two-pass']!;
    const cpuCol = variants
      .filter((v) => v.name !== 'buffered')
      .map((v) => `${v.name} ${s(median(cpu[v.name]!))}`)
      .join(', ');
    const walk = await walkMs();
    await finalizeImage(path);
    const saveMs = migrateMs + syncMs;
    const pct = (ms: number): string => `${((100 * ms) / saveMs).toFixed(1)} %`;
    const gate = async (scope: 'state' | 'full', workers: number | undefined, cold: boolean): Promise<string> => {
      if (cold && !coldOk) return '—';
      const xs: number[] = [];
      for (let i = 0; i < runs; i++) {
        if (cold) dropCaches();
        const r = await checkSeal(path, workers === undefined ? { scope } : { scope, workers });
        if (!r.ok) throw new Error(`${mode.id}: checkSeal(${scope}) failed: ${JSON.stringify(r.checks)}`);
        xs.push(r.durationMs);
      }
      return scope === 'state' ? `${median(xs).toFixed(1)} ms` : `${s(median(xs))} s`;
    };
    const state = `${await gate('state', undefined, false)} / ${await gate('state', undefined, true)}`;
    const fullBefore = `${await gate('full', 0, false)} / ${await gate('full', 0, true)}`;
    const fullAfter = `${await gate('full', undefined, false)} / ${await gate('full', undefined, true)}`;
    const st = await fsp.stat(path);
    table.push(
      `| ${mode.id}${mode.format === 'sparse' ? ` (${mode.channels} ch)` : ''} | ${s(migrateMs)} + ${s(syncMs)} | ${s(median(before))} (${pct(median(before))}) | ${twoPass.length ? `${s(median(twoPass))} (${pct(median(twoPass))})` : '—'} | **${s(median(after))} (${pct(median(after))})** | ${state} | ${fullBefore} | ${fullAfter} | ${cpuCol} | ${(bytesRead / MiB).toFixed(0)} MiB, ${chunks} chunks, ${((st.blocks * 512) / MiB).toFixed(0)} MiB allocated; stream walk ${s(walk)} s${buffered} |`,
    );
    log(table[table.length - 1]!);
    await fsp.rm(path, { force: true });
    if (mode.format === 'legacy') follows.push(await followCost(mode));
  }
  console.log(`\n${mib} MiB VM (${dirtyMiB} MiB random), median of ${runs}, node ${process.version}, ${accel()}${coldOk ? '' : ' (cold runs skipped: drop_caches not allowed)'}`);
  console.log(
    '| mode | save s (QEMU + fdatasync) | seal before s (% of save) | seal two-pass s (% of save) | seal after s (% of save) | gate `state` warm / cold | gate `full` before, warm / cold | gate `full` after, warm / cold | seal CPU s | read |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of table) console.log(r);
  if (follows.length) {
    console.log('\nSeal follower (legacy): fresh saves, alone and with the follower, alternating');
    console.log(
      '| mode | save alone s (QEMU + fdatasync) | save with follower s (QEMU + fdatasync) | finish s (after completion) | seal cost s (% of save alone) | per pair: cost % median | followed before completion | sealImage after completion, per pair: cost % median |',
    );
    console.log('|---|---|---|---|---|---|---|---|');
    for (const r of follows) console.log(r);
  }
} finally {
  await fsp.rm(dir, { recursive: true, force: true });
}
