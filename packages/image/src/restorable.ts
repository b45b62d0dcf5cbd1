/** The restore gate: pure checks of an image's header + descriptor against a target VM and host. */
import type { QemuCapabilities, VmDefinition } from '@vmsave/contracts';
import type { ImageDescriptor } from './descriptor.ts';
import { SUPPORTED_VERSIONS, type ImageHeader } from './header.ts';

export type RestoreRefusalCode =
  | 'partial'
  | 'version'
  | 'ram-size'
  | 'machine'
  | 'format'
  | 'machine-unknown'
  | 'vcpus'
  | 'qemu-version'
  | 'cpu-model'
  | 'cpu-flags'
  | 'host-memory';

/**
 * The target host as the gate sees it: its QEMU's capabilities (as announced), plus what the
 * caller knows besides. Each optional list is compared only when given: absent means "not known",
 * never "none".
 */
export type RestoreHost = QemuCapabilities & {
  /** CPU model names this host's QEMU can run (`query-cpu-definitions`, usable ones only). */
  cpuModels?: string[];
  /** CPU feature flags this host offers (`/proc/cpuinfo` flags, QEMU spelling). */
  cpuFlags?: string[];
  /** The host's physical memory, MiB. */
  memoryMiB?: number;
};

export interface RestoreRefusal {
  code: RestoreRefusalCode;
  /** What is wrong and why it matters, for a person. */
  message: string;
}

export interface RestoreVerdict {
  ok: boolean;
  refusals: RestoreRefusal[];
  /** Things that do not block the restore but change how it is done. */
  notes: string[];
}

/**
 * Decide whether an image may be restored into `definition` (when given) on a host whose QEMU
 * has `hostCaps`. Refuses a partial image, an unknown format version, a RAM size or machine type
 * that differs, and a save format or machine type the host QEMU does not support.
 * QEMU itself checks none of the RAM size (a larger target "completes"), so this gate must run first.
 *
 * For an image restored on another host than the one that wrote it, also: the host's QEMU must be
 * the image's QEMU version or newer (QEMU loads streams of older versions, not of newer ones), the
 * `-cpu` model the VM asks for must be one the host can run (`host` needs KVM) and the flags it
 * turns on must be the host's (each compared only when the host lists them), and the VM's RAM
 * must fit in the host's memory (when known). Refusals of these name the field first
 * (`qemu.version: …`).
 */
export function checkRestorable(image: { header: ImageHeader; descriptor: ImageDescriptor }, options: { definition?: VmDefinition; hostCaps: RestoreHost }): RestoreVerdict {
  const { header, descriptor } = image;
  const saved = descriptor.vm;
  const refusals: RestoreRefusal[] = [];
  const notes: string[] = [];
  if (!header.complete) {
    refusals.push({
      code: 'partial',
      message: 'the image is partial (magic VMSVPART): the save never finished or was never synced, so its contents are incomplete; save the VM again',
    });
  }
  if (!SUPPORTED_VERSIONS.includes(header.version)) {
    refusals.push({
      code: 'version',
      message: `image format version ${header.version} is unknown to this vmsave (knows ${SUPPORTED_VERSIONS.join(', ')}); upgrade vmsave on this host`,
    });
  }
  const def = options.definition;
  if (def) {
    if (def.memoryMiB !== saved.memoryMiB) {
      refusals.push({
        code: 'ram-size',
        message: `the image holds ${saved.memoryMiB} MiB of guest RAM but the target VM "${def.name}" has ${def.memoryMiB} MiB; QEMU does not check this and would restore a broken guest — restore into a VM with exactly ${saved.memoryMiB} MiB`,
      });
    }
    if (def.machine !== saved.machine) {
      refusals.push({
        code: 'machine',
        message: `the image was saved from machine type "${saved.machine}" but the target VM uses "${def.machine}"; device state only loads into the same machine type`,
      });
    }
    if (def.vcpus !== saved.vcpus) {
      refusals.push({
        code: 'vcpus',
        message: `the image was saved with ${saved.vcpus} vCPU(s) but the target VM has ${def.vcpus}; CPU state only loads into the same vCPU count`,
      });
    }
  }
  const caps = options.hostCaps;
  if (header.format === 'sparse' && !caps.mappedRam) {
    refusals.push({
      code: 'format',
      message: `the image is sparse (mapped-ram) but this host's QEMU ${caps.version} does not support mapped-ram (QEMU ≥ 9.0 needed); restore it on a host with a newer QEMU`,
    });
  }
  if (!caps.machines.includes(saved.machine)) {
    refusals.push({ code: 'machine-unknown', message: `this host's QEMU ${caps.version} does not know machine type "${saved.machine}"; restore on a host whose QEMU has it` });
  }
  const imageQemu = parseVersion(descriptor.qemu.version);
  const hostQemu = parseVersion(caps.version);
  if (imageQemu && hostQemu && compareVersions(imageQemu, hostQemu) > 0) {
    refusals.push({
      code: 'qemu-version',
      message: `qemu.version: image written by QEMU ${descriptor.qemu.version}, host has ${caps.version}; QEMU does not load a stream from a newer QEMU — restore on a host with QEMU ${descriptor.qemu.version} or newer`,
    });
  } else if (!imageQemu || !hostQemu) {
    notes.push(`qemu.version: cannot compare "${descriptor.qemu.version}" with the host's "${caps.version}"`);
  }
  const target = def ?? saved;
  const cpu = cpuOf(target.args);
  if (cpu) {
    if (cpu.model === 'host' && caps.accel !== 'kvm') {
      refusals.push({ code: 'cpu-model', message: `cpu.model: the VM "${target.name}" asks for -cpu host, which needs KVM, but this host runs QEMU with ${caps.accel}` });
    } else if (caps.cpuModels && !['host', 'max'].includes(cpu.model) && !caps.cpuModels.includes(cpu.model)) {
      refusals.push({ code: 'cpu-model', message: `cpu.model: the VM "${target.name}" asks for -cpu ${cpu.model}, which this host's QEMU ${caps.version} cannot run here` });
    }
    if (caps.cpuFlags) {
      const have = new Set(caps.cpuFlags.map(normFlag));
      const missing = cpu.flags.filter((f) => !have.has(normFlag(f)));
      if (missing.length) {
        refusals.push({ code: 'cpu-flags', message: `cpu.flags: the VM "${target.name}" turns on CPU flag(s) ${missing.join(', ')} that this host lacks` });
      }
    }
  }
  if (caps.memoryMiB !== undefined && target.memoryMiB > caps.memoryMiB) {
    refusals.push({
      code: 'host-memory',
      message: `memoryMiB: the VM "${target.name}" has ${target.memoryMiB} MiB of RAM but this host has only ${caps.memoryMiB} MiB; restore on a host with more memory`,
    });
  }
  if (header.directIo && !caps.directIo) notes.push(`saved with direct I/O, but this host's QEMU ${caps.version} lacks it: restore with buffered I/O`);
  return { ok: refusals.length === 0, refusals, notes };
}

type Version = [number, number, number];

/** `10.0.2`, `9.2`, `v10.1.0-rc1`: the first dotted numbers; undefined when there are none. */
function parseVersion(v: string): Version | undefined {
  const m = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(v);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : undefined;
}

function compareVersions(a: Version, b: Version): number {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! - b[i]!;
  return 0;
}

/**
 * The last `-cpu MODEL[,opt…]` of QEMU arguments: its model and the flags it turns on
 * (`+flag`, `flag=on`, `flag=true`); options that turn flags off or set values are not required of the host.
 */
export function cpuOf(args: readonly string[]): { model: string; flags: string[] } | undefined {
  let value: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if ((a === '-cpu' || a === '--cpu') && i + 1 < args.length) value = args[++i];
    else if (a.startsWith('-cpu=') || a.startsWith('--cpu=')) value = a.slice(a.indexOf('=') + 1);
  }
  if (!value) return undefined;
  const [model = '', ...opts] = value.split(',');
  const flags: string[] = [];
  for (const o of opts) {
    if (o.startsWith('+')) flags.push(o.slice(1));
    else {
      const m = /^([^=]+)=(on|true|yes)$/.exec(o);
      if (m) flags.push(m[1]!);
    }
  }
  return { model, flags };
}

/** QEMU spells flags with `-` or `_` (`sse4.2`/`sse4_2`, `avx512-vnni`/`avx512_vnni`): compare them alike. */
const normFlag = (f: string) => f.toLowerCase().replace(/[-_.]/g, '');
