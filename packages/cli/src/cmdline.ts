/**
 * A VM definition from a running QEMU's command line (`/proc/PID/cmdline`), for VMs vmsave did
 * not start. Pure. What vmsave sets itself is dropped (accel, QMP/monitor sockets, -S,
 * -incoming, -daemonize, pid file, display); machine, memory, vCPUs and devices are kept.
 */
import { randomUUID } from 'node:crypto';
import { VmDefinition, VmName } from '@vmsave/contracts';

/** QEMU options that take no value (every other option takes exactly one). */
const FLAGS = new Set([
  'S',
  'daemonize',
  'nodefaults',
  'no-user-config',
  'nographic',
  'no-reboot',
  'no-shutdown',
  'enable-kvm',
  'snapshot',
  'no-hpet',
  'no-acpi',
  's',
  'full-screen',
  'no-fd-bootchk',
  'no-quit',
  'only-migratable',
  'preconfig',
  'usb',
  'win2k-hack',
  'rtc-td-hack',
  'no-kvm',
  'no-kvm-irqchip',
  'no-kvm-pit',
  'alt-grab',
  'ctrl-grab',
  'enable-fips',
  'semihosting',
  'xen-attach',
]);
/** Options vmsave always sets itself (buildVmArgs, spawnQemu) or that must not be repeated by a restore. */
const DROP_FLAGS = new Set(['S', 'daemonize', 'nodefaults', 'no-user-config', 'enable-kvm', 'nographic', 'no-kvm', 'preconfig']);
const DROP_WITH_VALUE = new Set(['incoming', 'qmp', 'qmp-pretty', 'monitor', 'pidfile', 'display', 'accel', 'runas', 'chroot']);

export interface CmdlineDefinition {
  definition: VmDefinition;
  /** Options left out of the definition, as given (for the operator to see). */
  dropped: string[];
  /** What the operator should know (e.g. default devices that a restore would not recreate). */
  warnings: string[];
}

/** `key=value,key2=value2` with QEMU's `,,` escape; a first bare token is returned under `implied`. */
export function parseQemuOpts(s: string, implied?: string): Map<string, string> {
  const out = new Map<string, string>();
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    if (s[i] === ',' && s[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (s[i] === ',') {
      parts.push(cur);
      cur = '';
    } else cur += s[i];
  }
  parts.push(cur);
  parts.forEach((p, i) => {
    const eq = p.indexOf('=');
    if (eq < 0) out.set(i === 0 && implied ? implied : p, i === 0 && implied ? p : 'on');
    else out.set(p.slice(0, eq), p.slice(eq + 1));
  });
  return out;
}

const opts = (m: Map<string, string>): string => [...m].map(([k, v]) => `${k}=${v.replaceAll(',', ',,')}`).join(',');

/** `128`, `128M`, `1G`, `size=512M,slots=2,maxmem=…` → MiB (QEMU's default suffix is M). */
export function parseMemoryMiB(s: string): number {
  const size = parseQemuOpts(s, 'size').get('size') ?? '';
  const m = /^(\d+(?:\.\d+)?)([kKmMgGtT]?)[bB]?$/.exec(size);
  if (!m) throw new Error(`cannot read the memory size "-m ${s}"`);
  const n = Number(m[1]);
  const unit = (m[2] || 'M').toUpperCase();
  const mib = unit === 'K' ? n / 1024 : unit === 'M' ? n : unit === 'G' ? n * 1024 : n * 1024 * 1024;
  if (!Number.isInteger(mib)) throw new Error(`memory size "-m ${s}" is not a whole number of MiB`);
  return mib;
}

/** Turn a QEMU argv (binary first) into a validated VmDefinition; `fallbackName` when there is no `-name`. */
export function definitionFromCmdline(argv: readonly string[], fallbackName = 'vm'): CmdlineDefinition {
  const dropped: string[] = [];
  const warnings: string[] = [];
  const args: string[] = [];
  let name: string | undefined;
  let uuid: string | undefined;
  let machine: string | undefined;
  let memoryMiB = 128; // QEMU's own default
  let vcpus = 1;
  let nodefaults = false;
  const opts_: { name: string; value?: string }[] = [];
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('-')) {
      dropped.push(a);
      continue;
    } // a bare disk image: QEMU's legacy -hda
    const key = a.replace(/^--?/, '');
    if (FLAGS.has(key)) opts_.push({ name: key });
    else opts_.push({ name: key, value: argv[++i] ?? '' });
  }
  // Monitor chardevs: `-mon chardev=ID` names a chardev that goes with it.
  const monitorChardevs = new Set(
    opts_
      .filter((o) => o.name === 'mon')
      .map((o) => parseQemuOpts(o.value ?? '').get('chardev'))
      .filter((c): c is string => !!c),
  );
  for (const o of opts_) {
    const shown = o.value === undefined ? `-${o.name}` : `-${o.name} ${o.value}`;
    if (o.name === 'nodefaults') nodefaults = true;
    if (o.value === undefined) {
      if (DROP_FLAGS.has(o.name)) dropped.push(shown);
      else args.push(`-${o.name}`);
      continue;
    }
    const v = o.value;
    switch (o.name) {
      case 'name': {
        const m = parseQemuOpts(v, 'guest');
        name = m.get('guest');
        continue;
      }
      case 'uuid':
        uuid = v;
        continue;
      case 'machine':
      case 'M': {
        const m = parseQemuOpts(v, 'type');
        machine = m.get('type');
        m.delete('type');
        m.delete('accel');
        if (m.size) args.push('-machine', opts(m));
        continue;
      }
      case 'm':
        memoryMiB = parseMemoryMiB(v);
        {
          const m = parseQemuOpts(v, 'size');
          m.delete('size');
          if (m.size) args.push('-m', opts(m));
        }
        continue;
      case 'smp': {
        const m = parseQemuOpts(v, 'cpus');
        const cpus = m.get('cpus');
        if (cpus !== undefined) vcpus = Number(cpus);
        else vcpus = ['sockets', 'dies', 'clusters', 'cores', 'threads'].reduce((p, k) => p * Number(m.get(k) ?? 1), 1);
        m.delete('cpus');
        if (m.size) args.push('-smp', opts(m));
        continue;
      }
      case 'mon':
        dropped.push(shown);
        continue;
      case 'chardev': {
        const id = parseQemuOpts(v, 'backend').get('id');
        if (id && monitorChardevs.has(id)) {
          dropped.push(shown);
          continue;
        }
        args.push('-chardev', v);
        continue;
      }
      default:
        if (DROP_WITH_VALUE.has(o.name)) {
          dropped.push(shown);
          continue;
        }
        args.push(`-${o.name}`, v);
    }
  }
  if (!nodefaults)
    warnings.push(
      'the source QEMU runs without -nodefaults: vmsave starts restores with -nodefaults, so its default devices (VGA, NIC, …) will be missing; give --vm-def with those devices',
    );
  const parsedName = VmName.safeParse(name);
  const finalName = parsedName.success
    ? parsedName.data
    : (name ?? fallbackName)
        .replace(/[^A-Za-z0-9._-]/g, '-')
        .replace(/^[^A-Za-z0-9]+/, '')
        .slice(0, 63) || 'vm';
  if (name !== undefined && finalName !== name) warnings.push(`VM name "${name}" is not a vmsave name; recorded as "${finalName}"`);
  const parsed = VmDefinition.safeParse({ name: finalName, uuid: uuid ?? randomUUID(), machine: machine ?? 'pc', memoryMiB, vcpus, args });
  if (!parsed.success)
    throw new Error(`the QEMU command line does not make a valid VM definition: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return { definition: parsed.data, dropped, warnings };
}
