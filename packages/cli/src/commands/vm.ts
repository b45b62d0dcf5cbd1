/**
 * `vm list|create|start`: this host's executor directories, like virsh on the host.
 * `cli.ts` loads this module for `--help` too: what needs QEMU, the VM registry or zod is
 * imported inside each `run`.
 */
import { readFile } from 'node:fs/promises';
import { bool, int, str, type Command } from '../options.ts';
import { CliError, EXIT, UsageError } from '../errors.ts';
import { randomUUID } from 'node:crypto';

const listCommand: Command = {
  name: 'vm list',
  summary: 'VM definitions on this host and whether their QEMU runs',
  usage: 'vm list',
  help: [],
  options: {},
  async run(ctx) {
    const [{ localConfig, localRegistry }, { table }] = await Promise.all([import('../local.ts'), import('../terminal.ts')]);
    const cfg = localConfig(ctx.env);
    const vms = await localRegistry(cfg);
    const list = await vms.summaries();
    ctx.emit({ vmDir: cfg.vmDir, qmpDir: cfg.qmpDir, vms: list });
    if (!ctx.json) {
      ctx.stdout.write(
        table(
          ['name', 'status', 'MiB', 'vcpus', 'machine', 'uuid'],
          list.map((v) => [v.name, v.status, String(v.memoryMiB), String(v.vcpus), v.machine, v.uuid]),
          { right: [2, 3] },
        ),
      );
      if (list.length === 0) ctx.note(`no VM definitions in ${cfg.vmDir} (vmsave vm create --help)`);
    }
    return EXIT.ok;
  },
};

const createCommand: Command = {
  name: 'vm create',
  summary: "write a validated VM definition into this host's VM directory",
  usage: 'vm create --name NAME [--memory MiB] [--vcpus N] [--machine TYPE] [--uuid U] [--arg A]… [--keep-last N] [--max-age D] | vm create --file def.json',
  help: [
    ['--name NAME', 'VM name (letters, digits, . _ -)'],
    ['--memory MiB', 'RAM in MiB (default 256)'],
    ['--vcpus N', 'vCPUs (default 1)'],
    ['--machine TYPE', 'machine type (default q35)'],
    ['--uuid U', 'default: a new one'],
    ['--arg A', 'an extra QEMU argument; repeat it (e.g. --arg=-device --arg=virtio-rng-pci)'],
    ['--keep-last N', "this VM's retention: keep its newest N verified images (overrides the host's policy)"],
    ['--max-age D', "this VM's retention: keep its images younger than D (90s, 30m, 12h, 7d, 2w)"],
    ['--file F', 'a whole definition as JSON'],
    ['--force', 'replace an existing definition'],
  ],
  options: {
    name: { type: 'string' },
    memory: { type: 'string' },
    vcpus: { type: 'string' },
    machine: { type: 'string' },
    uuid: { type: 'string' },
    arg: { type: 'string', multiple: true },
    file: { type: 'string' },
    force: { type: 'boolean' },
    'keep-last': { type: 'string' },
    'max-age': { type: 'string' },
  },
  async run(ctx, v) {
    let input: unknown;
    const file = str(v, 'file');
    if (file) {
      if (str(v, 'name') || str(v, 'memory') || v.arg) throw new UsageError('vm create: give either --file or --name/--memory/…, not both');
      try {
        input = JSON.parse(await readFile(file, 'utf8'));
      } catch (err) {
        throw new UsageError(`vm create: --file ${file}: ${(err as Error).message}`);
      }
    } else {
      if (!str(v, 'name')) throw new UsageError('vm create: give --name NAME (or --file def.json)');
      input = {
        name: str(v, 'name'),
        uuid: str(v, 'uuid') ?? randomUUID(),
        machine: str(v, 'machine') ?? 'q35',
        memoryMiB: int(v, 'memory', { min: 16, max: 4 * 1024 * 1024 }) ?? 256,
        vcpus: int(v, 'vcpus', { min: 1, max: 1024 }) ?? 1,
        args: (v.arg as string[] | undefined) ?? [],
      };
      const keepLast = int(v, 'keep-last', { min: 1, max: 100_000 });
      const maxAgeText = str(v, 'max-age');
      let maxAgeMs: number | undefined;
      if (maxAgeText !== undefined) {
        const { parseDurationMs } = await import('@vmsave/jobs');
        maxAgeMs = parseDurationMs(maxAgeText);
        if (maxAgeMs === undefined) throw new UsageError(`vm create: --max-age ${maxAgeText}: a duration like 90s, 30m, 12h, 7d or 2w`);
      }
      if (keepLast !== undefined || maxAgeMs !== undefined)
        (input as Record<string, unknown>).retention = { ...(keepLast !== undefined ? { keepLast } : {}), ...(maxAgeMs !== undefined ? { maxAgeMs } : {}) };
    }
    const [{ VmDefinition }, { localConfig, localRegistry }] = await Promise.all([import('@vmsave/contracts'), import('../local.ts')]);
    const r = VmDefinition.safeParse(input);
    if (!r.success) throw new UsageError(`vm create: ${r.error.issues.map((i) => `${i.path.join('.') || 'definition'}: ${i.message}`).join('; ')}`);
    const cfg = localConfig(ctx.env);
    const vms = await localRegistry(cfg);
    if ((await vms.get(r.data.name)) && !bool(v, 'force')) throw new CliError(`VM ${r.data.name} is already defined in ${cfg.vmDir} (--force replaces it)`);
    const def = await vms.define(r.data);
    ctx.emit({ definition: def, file: `${cfg.vmDir}/${def.name}.json` });
    ctx.say(`defined ${def.name} (${def.memoryMiB} MiB, ${def.vcpus} vCPU, ${def.machine}) in ${cfg.vmDir}`);
    return EXIT.ok;
  },
};

const startCommand: Command = {
  name: 'vm start',
  summary: 'start a defined VM; its QEMU outlives this command (KVM when usable)',
  usage: 'vm start NAME [--paused]',
  help: [['--paused', 'start with vCPUs stopped (-S)']],
  options: { paused: { type: 'boolean' } },
  positionals: { min: 1, max: 1, names: 'NAME' },
  async run(ctx, v, [name]) {
    const { localHost } = await import('../local.ts');
    const host = await localHost(ctx.env);
    if (!(await host.vms.get(name!))) throw new CliError(`no VM definition named ${name} in ${host.cfg.vmDir} (vmsave vm list)`);
    const status = await host.vms.status(name!);
    if (status !== 'stopped') throw new CliError(`VM ${name} already runs (${status}) on ${host.vms.socketOf(name!)}`);
    const vm = await host.vms.start(name!, { paused: bool(v, 'paused'), detached: true });
    ctx.emit({ vm: name, pid: vm.pid, qmpSocket: vm.qmpSocketPath, accel: host.accel, log: host.vms.logOf(name!) });
    ctx.say(`started ${name}: pid ${vm.pid}, ${host.accel}, QMP ${vm.qmpSocketPath}, log ${host.vms.logOf(name!)}`);
    return EXIT.ok;
  },
};

export const vmCommands: Command[] = [listCommand, createCommand, startCommand];
