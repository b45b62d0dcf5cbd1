/**
 * How fast `vmsave` starts: wall time of whole processes, min / median / max over N runs of
 *
 *   help, bundle   node bin/vmsave.js --help          (the esbuild bundle, as installed)
 *   help, tsx      node --conditions=development --import tsx src/main.ts --help   (the old way)
 *   verify, bundle node bin/vmsave.js verify IMAGE    (a 4 GiB sparse image, capability cache warm)
 *   verify, tsx    the same through tsx
 *
 * IMAGE is a real mapped-ram save of an idle 4096 MiB VM (QEMU through @vmsave/qemu, into a
 * vmsave image made by @vmsave/image): 4 GiB long, almost all holes. The cases run interleaved
 * so that a busy machine slows them alike. Prints the table, the ratio of the medians, and the
 * first (cold: QEMU probed, cache written) verify on its own line.
 *
 *   npm run bench:start -w @vmsave/cli [-- --runs N] [--ram MiB]
 */
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createImage, finalizeImage, openStreamFds } from '@vmsave/image/node';
import { detectAccel, launchVm, probeQemu, saveToFds } from '@vmsave/qemu';
import { bundle } from '../scripts/bundle.mjs';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BIN = path.join(PKG, 'bin', 'vmsave.js');
const MAIN = path.join(PKG, 'src', 'main.ts');

const { values } = parseArgs({ options: { runs: { type: 'string', default: '15' }, ram: { type: 'string', default: '4096' } } });
const RUNS = Number(values.runs);
const RAM_MIB = Number(values.ram);

/** Wall time of one process, in seconds; fails on an unexpected exit code. */
function timed(argv: string[], env: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    child.once('error', reject);
    child.once('exit', (code) => {
      const s = Number(process.hrtime.bigint() - t0) / 1e9;
      if (code === 0) resolve(s);
      else reject(new Error(`${argv.join(' ')} exited ${code}: ${stderr}`));
    });
  });
}

/** A real sparse (mapped-ram) save of an idle, paused VM of `ramMiB`. */
async function makeImage(dir: string, ramMiB: number): Promise<string> {
  const imagePath = path.join(dir, 'idle.vmsave');
  const probe = await probeQemu();
  const vm = await launchVm(
    { name: 'bench-idle', uuid: '2f0c1f7e-6a3b-4c1d-9e8f-0a1b2c3d4e5f', machine: 'q35', memoryMiB: ramMiB, vcpus: 1, args: [] },
    { qmpSocketPath: path.join(dir, 'idle.qmp'), startPaused: true, accel: await detectAccel(), killWithParent: true },
  );
  try {
    const channels = 4;
    const { streamOffset } = await createImage(imagePath, {
      format: 'sparse',
      channels,
      directIo: false,
      wasRunning: false,
      descriptor: {
        descriptorVersion: 1,
        vm: { name: 'bench-idle', uuid: '2f0c1f7e-6a3b-4c1d-9e8f-0a1b2c3d4e5f', machine: probe.machineAliases.q35 ?? 'q35', memoryMiB: ramMiB, vcpus: 1, args: [] },
        format: 'sparse',
        qemu: { version: probe.version, capabilities: { 'mapped-ram': true, multifd: true }, parameters: { 'multifd-channels': channels } },
        host: os.hostname().replace(/[^A-Za-z0-9_-]/g, '-'),
        jobId: 'bench-start',
        createdAt: new Date().toISOString(),
      },
    });
    const fds = await openStreamFds(imagePath, { mode: 'save', directIo: false });
    try {
      await using qmp = await vm.connectQmp();
      await saveToFds(qmp, { fds, offset: streamOffset, format: 'sparse', channels });
    } finally {
      closeSync(fds.buffered);
    }
    await finalizeImage(imagePath);
  } finally {
    await vm.kill().catch(() => undefined);
  }
  return imagePath;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-bench-start-'));
try {
  process.stderr.write('bundling dist/bin …\n');
  await bundle();
  process.stderr.write(`saving an idle ${RAM_MIB} MiB VM (sparse, mapped-ram) …\n`);
  const image = await makeImage(dir, RAM_MIB);
  const env = { VMSAVE_STATE_DIR: path.join(dir, 'state') };
  const tsx = ['--conditions=development', '--import', 'tsx', MAIN];

  const cold = await timed([BIN, 'verify', image], env);
  const cases: [string, string[], Record<string, string>][] = [
    ['help, bundle', [BIN, '--help'], {}],
    ['help, tsx', [...tsx, '--help'], {}],
    ['verify, bundle', [BIN, 'verify', image], env],
    ['verify, tsx', [...tsx, 'verify', image], env],
  ];
  const samples = new Map<string, number[]>(cases.map(([name]) => [name, []]));
  for (let i = 0; i < RUNS; i++) {
    for (const [name, argv, e] of cases) samples.get(name)!.push(await timed(argv, e));
  }

  const rows = cases.map(([name]) => {
    const xs = samples.get(name)!;
    return [name, Math.min(...xs), median(xs), Math.max(...xs)] as const;
  });
  const f = (s: number) => s.toFixed(3).padStart(7);
  console.log(`vmsave start-up, ${RUNS} runs each, wall seconds (${os.cpus().length} CPUs, load ${os.loadavg()[0]!.toFixed(1)}; image ${RAM_MIB} MiB idle VM, sparse)`);
  console.log('');
  console.log(`${'case'.padEnd(16)}    min   median      max`);
  console.log(`${'-'.repeat(16)}  -------  -------  -------`);
  for (const [name, min, med, max] of rows) console.log(`${name.padEnd(16)}  ${f(min)}  ${f(med)}  ${f(max)}`);
  console.log('');
  const med = (name: string) => median(samples.get(name)!);
  console.log(`help:   tsx / bundle = ${(med('help, tsx') / med('help, bundle')).toFixed(2)}x (${med('help, tsx').toFixed(3)} s vs ${med('help, bundle').toFixed(3)} s)`);
  console.log(`verify: tsx / bundle = ${(med('verify, tsx') / med('verify, bundle')).toFixed(2)}x (${med('verify, tsx').toFixed(3)} s vs ${med('verify, bundle').toFixed(3)} s)`);
  console.log(`first verify (cold: QEMU probed, capability cache written): ${cold.toFixed(3)} s`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
