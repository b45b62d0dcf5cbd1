/**
 * Replication benchmark (`npm run bench:replicate -w @vmsave/bench`): a sparse image of a VM idle
 * and with 87.5 % of its RAM random (a real QEMU save into a vmsave image, sealed), uploaded into a
 * JetStream object store and downloaded back (`@vmsave/replica`), beside the disk's own O_DIRECT
 * write and read rates (dd). Prints per repetition and the medians: upload and download GiB/s (of
 * the bytes moved), bytes moved against the image's allocated bytes.
 *
 *   options: --ram MiB (4096)  --reps N (1)  --states idle,dirty  --dir DIR (the image directory; default a temp dir)
 *
 * The bus is a private nats-server (file storage in the work directory, on the same disk), so
 * the shared one carries none of the benchmark's gigabytes.
 */
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { closeStreamFds, createImage, finalizeImage, openStreamFds, sealImage } from '@vmsave/image/node';
import { launchVm, probeQemu, saveToFds, type VmDefinition } from '@vmsave/qemu';
import { NatsObjectImageStore, downloadImage, uploadImage, type TransferResult } from '@vmsave/replica';
import { freePort } from '@vmsave/testkit';
import { dirtyRegions, median, parseArgs, positiveInt } from './stats.ts';
import { dropCaches, measureDisk, writeRandom } from './sys.ts';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const args = parseArgs(process.argv.slice(2), ['ram', 'reps', 'states', 'dir']);
const ramMiB = positiveInt(args.ram, 'ram', 4096);
const reps = positiveInt(args.reps, 'reps', 1);
const states = (args.states ?? 'idle,dirty').split(',').map((s) => s.trim());
for (const s of states) if (s !== 'idle' && s !== 'dirty') throw new Error(`--states: unknown state ${s} (idle, dirty)`);
const dirtyMiB = Math.floor(ramMiB * 0.875);
const log = (m: string) => process.stderr.write(`[bench:replicate] ${m}\n`);
const gibps = (bytes: number, s: number) => (s > 0 ? bytes / GiB / s : 0);

const work = args.dir ? path.resolve(args.dir) : await mkdtemp(path.join(os.tmpdir(), 'vmsave-bench-replicate-'));
await mkdir(work, { recursive: true });
const port = await freePort();
const nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', path.join(work, 'nats')], { stdio: 'ignore' });
// The private server goes with the benchmark, however it ends.
process.once('exit', () => nats.kill('SIGKILL'));
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => process.exit(130));
const stopNats = async () => {
  if (nats.exitCode !== null) return;
  const exited = new Promise((r) => nats.once('exit', r));
  nats.kill('SIGTERM');
  await exited;
};

interface Row {
  state: string;
  rep: number;
  size: number;
  allocated: number;
  up: TransferResult;
  down: TransferResult;
  upGiBps: number;
  downGiBps: number;
}
const rows: Row[] = [];

try {
  let nc: Awaited<ReturnType<typeof connect>> | undefined;
  for (let i = 0; !nc; i++) {
    nc = await connect({ servers: `nats://127.0.0.1:${port}` }).catch((err: unknown) => {
      if (i > 100) throw err;
      return undefined;
    });
    if (!nc) await new Promise((r) => setTimeout(r, 100));
  }
  const store = await NatsObjectImageStore.open(jetstream(nc), await jetstreamManager(nc), { bucket: 'BENCH_IMAGES', replicas: 1 });
  const caps = await probeQemu();
  const canDrop = await dropCaches();

  // The disk's own rates: 1 GiB of random data through dd with O_DIRECT.
  const ddSource = path.join(work, 'dd-source.bin');
  await writeRandom(ddSource, GiB);
  const disk = await measureDisk(work, ddSource, GiB, canDrop);
  await rm(ddSource, { force: true });
  log(`disk: O_DIRECT write ${(disk.directWrite / GiB).toFixed(3)} GiB/s, read ${(disk.directRead / GiB).toFixed(3)} GiB/s; page cache dropped between runs: ${canDrop}`);

  for (const state of states) {
    const name = `bench-${state}-${randomUUID().slice(0, 8)}`;
    const def = {
      name,
      uuid: randomUUID(),
      machine: caps.machines.find((m) => m.startsWith('pc-q35')) ?? 'q35',
      memoryMiB: ramMiB,
      vcpus: 1,
      args: [],
    } as VmDefinition;
    const loaderArgs: string[] = [];
    const loaderFiles: string[] = [];
    if (state === 'dirty') {
      for (const [i, [addr, mib]] of dirtyRegions(ramMiB, dirtyMiB).entries()) {
        const f = path.join(work, `dirty-${i}.bin`);
        await writeRandom(f, mib * MiB);
        loaderFiles.push(f);
        loaderArgs.push('-device', `loader,file=${f},addr=0x${addr.toString(16)},force-raw=on`);
      }
    }
    const image = path.join(work, `${name}.vmsave`);
    // The guest runs its firmware for a moment (as the save benchmark's VMs do), then is stopped for the save.
    const vm = await launchVm({ ...def, args: loaderArgs }, { qmpSocketPath: path.join(work, `${name}.qmp`), killWithParent: true, readyTimeoutMs: 120_000 });
    await new Promise((r) => setTimeout(r, 3000));
    try {
      const { streamOffset } = await createImage(image, {
        format: 'sparse',
        channels: 2,
        directIo: false,
        wasRunning: false,
        descriptor: {
          descriptorVersion: 1,
          vm: def,
          format: 'sparse',
          qemu: { version: caps.version, capabilities: { 'mapped-ram': true, multifd: true }, parameters: { 'multifd-channels': 2 } },
          host: 'bench',
          jobId: name,
          createdAt: new Date().toISOString(),
        },
      });
      const fds = await openStreamFds(image, { mode: 'save', directIo: false });
      const qmp = await vm.connectQmp();
      try {
        await qmp.execute('stop');
        await saveToFds(qmp, { fds, offset: streamOffset, format: 'sparse', channels: 2, directIo: false, commandTimeoutMs: 600_000 });
      } finally {
        closeStreamFds(fds);
        await qmp.close();
      }
      await sealImage(image);
      await finalizeImage(image);
    } finally {
      await vm.kill();
      for (const f of loaderFiles) await rm(f, { force: true });
    }
    const st = await stat(image);
    log(`${state}: image ${(st.size / MiB).toFixed(1)} MiB logical, ${((st.blocks * 512) / MiB).toFixed(1)} MiB allocated`);

    for (let rep = 0; rep < reps; rep++) {
      const key = `${name}-${rep}`;
      if (canDrop) await dropCaches();
      const up = await uploadImage(store, image, key, { host: 'bench' });
      const dest = path.join(work, 'fetched', `${name}.vmsave`);
      if (canDrop) await dropCaches();
      const down = await downloadImage(store, key, dest);
      const row: Row = {
        state,
        rep,
        size: st.size,
        allocated: st.blocks * 512,
        up,
        down,
        upGiBps: gibps(up.bytesMoved, up.seconds),
        downGiBps: gibps(down.bytesMoved, down.seconds),
      };
      rows.push(row);
      log(
        `${state} #${rep + 1}: upload ${row.upGiBps.toFixed(3)} GiB/s (${up.seconds.toFixed(2)} s), download ${row.downGiBps.toFixed(3)} GiB/s (${down.seconds.toFixed(2)} s: ${(down.transferSeconds ?? 0).toFixed(2)} s transfer, ${(down.checkSeconds ?? 0).toFixed(2)} s fsync + header and seal check); moved ${(up.bytesMoved / MiB).toFixed(1)} MiB of ${(row.allocated / MiB).toFixed(1)} MiB allocated (${((up.bytesMoved / row.allocated) * 100).toFixed(1)} %), ${up.extents} extents; rebuilt file ${(down.allocatedBytes / MiB).toFixed(1)} MiB allocated`,
      );
      await rm(dest, { force: true });
      await store.delete(key);
    }
    await rm(image, { force: true });
  }

  const summary = {
    ramMiB,
    dirtyMiB,
    reps,
    disk: { directWriteGiBps: disk.directWrite / GiB, directReadGiBps: disk.directRead / GiB, cacheDropped: canDrop },
    states: states.map((state) => {
      const r = rows.filter((x) => x.state === state);
      return {
        state,
        imageMiB: (r[0]?.size ?? 0) / MiB,
        allocatedMiB: (r[0]?.allocated ?? 0) / MiB,
        movedMiB: (r[0]?.up.bytesMoved ?? 0) / MiB,
        movedVsAllocated: r[0] ? r[0].up.bytesMoved / r[0].allocated : undefined,
        extents: r[0]?.up.extents,
        uploadGiBps: median(r.map((x) => x.upGiBps)),
        downloadGiBps: median(r.map((x) => x.downGiBps)),
        downloadTransferSeconds: median(r.map((x) => x.down.transferSeconds ?? 0)),
        downloadCheckSeconds: median(r.map((x) => x.down.checkSeconds ?? 0)),
        uploadVsDiskRead: (median(r.map((x) => x.upGiBps)) ?? 0) / (disk.directRead / GiB),
        downloadVsDiskWrite: (median(r.map((x) => x.downGiBps)) ?? 0) / (disk.directWrite / GiB),
        rebuiltAllocatedMiB: (r[0]?.down.allocatedBytes ?? 0) / MiB,
      };
    }),
  };
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  await nc.close();
} finally {
  await stopNats();
  if (!args.dir) await rm(work, { recursive: true, force: true });
}
