/**
 * `npm run bench:ab -w @vmsave/bench`: what vmsave's save path costs on top of QEMU's own, with
 * everything else equal. One QEMU and one memory content; `saveVm` from `@vmsave/ops`, what the
 * executor runs (pause, image header, fdset, migrate, descriptor rewrite, fdatasync, magic flip), and the raw anchor
 * (`saveToFds` + one fdatasync, stream at offset 0) take turns in ABBA order, so drift of the
 * disk hits both alike. No bus: the bus's share is in `npm run bench`'s job timelines.
 *
 *   --ram 4096 --dirty 3584 --modes legacy,sparse-direct --rounds 2   (4 saves per path and mode)
 */
import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { VmDefinition } from '@vmsave/contracts';
import { saveVm } from '@vmsave/ops';
import { detectAccel, launchVm, probeQemu } from '@vmsave/qemu';
import { QmpClient } from '@vmsave/qmp';
import { selectModes } from './modes.ts';
import { connectQmp, rawSave } from './raw.ts';
import { dirtyRegions, median, parseArgs, positiveInt } from './stats.ts';
import { writeRandom } from './sys.ts';

const MiB = 1024 * 1024;
const args = parseArgs(process.argv.slice(2), ['ram', 'dirty', 'modes', 'rounds']);
const ramMiB = positiveInt(args.ram, '--ram', 4096);
const dirtyMiB = positiveInt(args.dirty, '--dirty', Math.floor((ramMiB * 7) / 8));
const rounds = positiveInt(args.rounds, '--rounds', 2);
const modes = selectModes(args.modes ?? 'legacy,sparse,sparse-direct,sparse-direct-8').filter((m) => !m.pipeDirect);
const log = (msg: string) => console.error(`[ab ${new Date().toISOString().slice(11, 19)}] ${msg}`);

const work = await mkdtemp(path.join(os.tmpdir(), 'vmsave-ab-'));
try {
  const q = await probeQemu();
  const accel = await detectAccel();
  const caps = { version: q.version, mappedRam: q.mappedRam, directIo: q.directIo, machines: q.machines, accel };
  const loader: string[] = [];
  for (const [i, [addr, mib]] of dirtyRegions(ramMiB, dirtyMiB).entries()) {
    const f = path.join(work, `dirty-${i}.bin`);
    await writeRandom(f, mib * MiB);
    loader.push('-device', `loader,file=${f},addr=0x${addr.toString(16)},force-raw=on`);
  }
  const def = { name: 'ab', uuid: randomUUID(), machine: 'q35', memoryMiB: ramMiB, vcpus: 1, args: loader } as VmDefinition;
  const socket = path.join(work, 'ab.qmp');
  const vm = await launchVm(def, { qmpSocketPath: socket, accel, killWithParent: true, readyTimeoutMs: 120_000 });
  log(`VM of ${ramMiB} MiB with ${dirtyMiB} MiB of random data; ${accel}; ${rounds} ABBA round(s) per mode`);

  const rows: string[] = [];
  for (const mode of modes) {
    const times = { vmsave: [] as number[], raw: [] as number[] };
    for (let r = 0; r < rounds; r++) {
      for (const which of ['vmsave', 'raw', 'raw', 'vmsave'] as const) {
        const image = path.join(work, `${which}-${randomUUID()}.img`);
        // After a completed save QEMU is in postmigrate; saveVm handles that itself, the raw path needs cont + stop.
        if (which === 'raw') {
          await using qmp = await connectQmp(socket);
          if ((await qmp.execute<{ status: string }>('query-status')).status === 'postmigrate') {
            await qmp.execute('cont');
            await qmp.execute('stop');
          }
        }
        const t0 = performance.now();
        if (which === 'vmsave') {
          await using qmp = await QmpClient.connect(socket);
          await saveVm({
            qmp,
            imagePath: image,
            format: mode.format,
            channels: mode.channels,
            directIo: mode.directIo,
            after: 'paused',
            vm: def,
            host: 'ab',
            jobId: 'ab',
            hostCaps: caps,
          });
          times.vmsave.push((performance.now() - t0) / 1000);
        } else {
          times.raw.push((await rawSave(socket, image, mode)).saveSyncS);
        }
        log(`${mode.id} ${which}: ${times[which].at(-1)!.toFixed(2)} s`);
        await rm(image, { force: true });
      }
    }
    const v = median(times.vmsave) ?? NaN;
    const w = median(times.raw) ?? NaN;
    const span = (a: number[]) => `${Math.min(...a).toFixed(2)}–${Math.max(...a).toFixed(2)}`;
    rows.push(`| ${mode.label} | ${v.toFixed(2)} (${span(times.vmsave)}) | ${w.toFixed(2)} (${span(times.raw)}) | ${(v / w).toFixed(2)} |`);
  }
  await vm.kill();
  console.log(`\nSave path A/B on one QEMU (${ramMiB} MiB, ${dirtyMiB} MiB random; ${rounds * 2} saves per path, ABBA; median (min–max) s)\n`);
  console.log('| mode | vmsave saveVm | raw saveToFds + fdatasync | ratio |\n| --- | ---: | ---: | ---: |');
  console.log(rows.join('\n'));
} finally {
  await rm(work, { recursive: true, force: true });
}
