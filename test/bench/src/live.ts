/**
 * `npm run bench:live -w @vmsave/bench`: the guest-visible stop of a save with `after: running`,
 * live checkpoint versus paused copy, of the test guest (q35; it keeps its write rate under TCG
 * and KVM) dirtying `--rate` pages/s over `--share` % of its RAM. The stop is read from the
 * guest's own heartbeat between a sample before and one after the save: every stall summed
 * (`stoppedTime`, minus the same pair's cost without a save) and the longest single one (the
 * guest's stall windows); the live save's own record (passes, downtime) is printed beside it, and
 * every image is restored paused and checked with the test guest's checker. Prints medians;
 * asserts nothing about time.
 *
 *   options: --ram MiB (4096)  --rate pages/s (12800 = 50 MiB/s)  --share % (50: 1 GiB, q35 gives the guest 2 GiB below 4 GiB)
 *            --rounds N (3)  --channels N (2)  --accel tcg|kvm (the host's: KVM when /dev/kvm works)
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { restoreImage, saveVm, type SaveVmResult } from '@vmsave/ops';
import { detectAccel, probeQemu, type Accel } from '@vmsave/qemu';
import { analyseDump, stoppedTime, type HeartbeatSample } from '@vmsave/testguest';
import { guestKernelMissing, launchTestGuest, sampleHeartbeat, waitForGuest } from '@vmsave/testguest/node';
import { median, parseArgs, positiveInt } from './stats.ts';

const args = parseArgs(process.argv.slice(2), ['ram', 'rate', 'share', 'rounds', 'channels', 'accel']);
const ramMiB = positiveInt(args.ram, 'ram', 4096);
const rate = positiveInt(args.rate, 'rate', 12_800);
const share = positiveInt(args.share, 'share', 50);
const rounds = positiveInt(args.rounds, 'rounds', 3);
const channels = positiveInt(args.channels, 'channels', 2);
if (args.accel !== undefined && args.accel !== 'tcg' && args.accel !== 'kvm') throw new Error(`--accel must be tcg or kvm, got ${args.accel}`);
const accel: Accel = args.accel ?? (await detectAccel());
const MiB = 1024 * 1024;
const log = (msg: string): void => console.log(`[bench:live ${new Date().toISOString().slice(11, 19)}] ${msg}`);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const missing = await guestKernelMissing();
if (missing) throw new Error(missing);
const work = await mkdtemp(path.join(os.tmpdir(), 'vmsave-bench-live-'));
const q = await probeQemu();
const caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };

interface Row {
  mode: 'live' | 'paused';
  stoppedMs: number;
  /** Wall time the guest's TSC did not advance (under TCG: the VM stopped). */
  hiddenMs: number;
  /** Gaps > 1 ms between the guest's loop turns (under KVM: the VM stopped; also a starved vCPU). */
  stalledMs: number;
  /** The longest single stall (heartbeat stall windows): under KVM the stop itself. */
  longestStallMs?: number;
  saveMs: number;
  eventDowntimeMs?: number;
  passes?: string;
  switchover?: string;
  consistent: boolean;
  issues: number;
}

try {
  const { vm, definition } = await launchTestGuest({
    name: 'bench-live',
    memoryMiB: ramMiB,
    rate,
    share,
    seed: 11,
    qmpSocketPath: path.join(work, 'g.qmp'),
    accel,
    killWithParent: true,
  });
  const qmp = await vm.connectQmp();
  await waitForGuest(qmp, work, { timeoutMs: 120_000 });
  const a0 = (await sampleHeartbeat(qmp, work))!;
  await sleep(2000);
  const a1 = (await sampleHeartbeat(qmp, work))!;
  const measured = ((a1.heartbeat.cursor - a0.heartbeat.cursor) * 4096) / MiB / ((a1.wallMs - a0.wallMs) / 1000);
  log(
    `guest ${ramMiB} MiB (${accel}) writes ${measured.toFixed(1)} MiB/s (asked ${((rate * 4096) / MiB).toFixed(1)}) over ${a1.heartbeat.npages} pages (${((a1.heartbeat.npages * 4096) / MiB).toFixed(0)} MiB)`,
  );

  // What a pair of heartbeat samples costs without a save (pmemsave holds a TCG guest a moment).
  const base: number[] = [];
  for (let i = 0; i < 5; i++) {
    const b = (await sampleHeartbeat(qmp, work))!;
    const c = (await sampleHeartbeat(qmp, work))!;
    base.push(stoppedTime(b, c).stoppedMs);
  }
  const baseline = median(base) ?? 0;
  log(`baseline (two samples, no save): ${baseline.toFixed(1)} ms`);

  const rows: Row[] = [];
  for (let r = 0; r < rounds; r++) {
    for (const mode of ['paused', 'live'] as const) {
      const imagePath = path.join(work, `${mode}-${r}.vmsave`);
      const before: HeartbeatSample = (await sampleHeartbeat(qmp, work))!;
      const t0 = performance.now();
      const res: SaveVmResult = await saveVm({
        qmp,
        imagePath,
        format: 'sparse',
        channels,
        directIo: false,
        after: 'running',
        vm: definition,
        host: 'bench',
        jobId: `bench-live-${mode}-${r}`,
        hostCaps: caps,
        live: mode === 'live',
      });
      const saveMs = performance.now() - t0;
      const after: HeartbeatSample = (await sampleHeartbeat(qmp, work))!;
      const st = stoppedTime(before, after);
      const stopped = Math.max(0, st.stoppedMs - baseline);
      const check = await checkImage(imagePath, `${mode}-${r}`);
      rows.push({
        mode,
        stoppedMs: stopped,
        hiddenMs: st.hiddenMs,
        stalledMs: st.stalledMs,
        longestStallMs: st.longestStallMs,
        saveMs,
        eventDowntimeMs: res.live?.downtimeMs,
        passes: res.live?.passes.map((p) => `${(p.bytes / MiB).toFixed(0)}`).join('+'),
        switchover: res.live?.switchover,
        ...check,
      });
      log(
        `${mode} #${r}: guest stopped ${stopped.toFixed(0)} ms (TSC held ${st.hiddenMs.toFixed(0)}, stalls ${st.stalledMs.toFixed(0)}, longest stall ${st.longestStallMs?.toFixed(0) ?? '?'}), save ${saveMs.toFixed(0)} ms${res.live ? `, passes ${rows.at(-1)!.passes} MiB, downtime (event) ${res.live.downtimeMs?.toFixed(0)} ms, ${res.live.switchover}` : ''}, restored image ${check.consistent ? 'consistent' : `INCONSISTENT (${check.issues} pages)`}`,
      );
      await rm(imagePath, { force: true });
      await sleep(1000);
    }
  }
  await qmp.close();
  await vm.kill();

  console.log(`\n${ramMiB} MiB test guest (${accel}), ${measured.toFixed(1)} MiB/s over ${share} % of RAM, sparse ${channels} channels, medians of ${rounds}:\n`);
  console.log(
    '| save | guest-visible stop (heartbeat) ms | of it TSC held ms | of it stalls ms | longest single stall ms | stop from the event (STOP → cont) ms | whole save ms | passes (MiB each) | restored consistent |',
  );
  console.log('|---|---:|---:|---:|---:|---:|---:|---|---|');
  for (const mode of ['paused', 'live'] as const) {
    const m = rows.filter((x) => x.mode === mode);
    const med = (f: (x: Row) => number | undefined) => median(m.map(f));
    const fmt = (v: number | undefined) => (v === undefined ? '—' : v.toFixed(0));
    console.log(
      `| ${mode} | ${fmt(med((x) => x.stoppedMs))} | ${fmt(med((x) => x.hiddenMs))} | ${fmt(med((x) => x.stalledMs))} | ${fmt(med((x) => x.longestStallMs))} | ${fmt(med((x) => x.eventDowntimeMs))} | ${fmt(med((x) => x.saveMs))} | ${m.map((x) => x.passes ?? '—').join('; ')} | ${m.filter((x) => x.consistent).length}/${m.length} |`,
    );
  }
} finally {
  await rm(work, { recursive: true, force: true });
}

/** Restore the image paused and check its guest RAM with the test guest's checker. */
async function checkImage(imagePath: string, tag: string): Promise<{ consistent: boolean; issues: number }> {
  const r = await restoreImage({ imagePath, qmpSocketPath: path.join(work, `r-${tag}.qmp`), hostCaps: caps, after: 'paused', accel, verify: false });
  try {
    const file = path.join(work, `r-${tag}.ram`);
    await r.qmp.execute('pmemsave', { val: 0, size: Math.min(ramMiB, 1536) * MiB, filename: file }, { timeoutMs: 120_000 });
    const a = analyseDump(await readFile(file));
    await rm(file, { force: true });
    return { consistent: a.consistent, issues: a.issueCount };
  } finally {
    await r.qmp.close();
    await r.vm.kill();
  }
}
