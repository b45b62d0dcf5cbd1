import { constants } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { QemuProbeError } from './errors.ts';
import { DEFAULT_QEMU_BINARY, spawnQemu } from './process.ts';

export type Accel = 'kvm' | 'tcg';

/** What one QEMU binary on this host supports. */
export interface QemuCapabilities {
  binary: string;
  /** e.g. "10.0.2" */
  version: string;
  /** Distribution package string, e.g. "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1". */
  package: string;
  major: number;
  minor: number;
  micro: number;
  /** `mapped-ram` migration capability (sparse format). */
  mappedRam: boolean;
  /** `direct-io` migration parameter. */
  directIo: boolean;
  /** Machine type names and their aliases (e.g. "q35" and "pc-q35-10.0"). */
  machines: string[];
  /** Alias → concrete machine type, e.g. { q35: "pc-q35-10.0" }. */
  machineAliases: Record<string, string>;
  /** KVM could be initialised by this binary on this host. */
  kvm: boolean;
}

export interface ProbeOptions {
  binary?: string;
  /** Ignore the cache. */
  refresh?: boolean;
}

const cache = new Map<string, Promise<QemuCapabilities>>();

/**
 * Starts `qemu-system-x86_64 -machine none` once per binary (cached for the
 * process lifetime) and asks it over QMP what it supports.
 */
export function probeQemu(options: ProbeOptions = {}): Promise<QemuCapabilities> {
  const binary = options.binary ?? DEFAULT_QEMU_BINARY;
  let probe = cache.get(binary);
  if (!probe || options.refresh) {
    probe = runProbe(binary);
    cache.set(binary, probe);
    probe.catch(() => cache.delete(binary));
  }
  return probe;
}

/**
 * 'kvm' when /dev/kvm opens read-write and QEMU can initialise KVM with it,
 * else 'tcg'.
 */
export async function detectAccel(options: ProbeOptions = {}): Promise<Accel> {
  return (await probeQemu(options)).kvm ? 'kvm' : 'tcg';
}

async function kvmDeviceUsable(): Promise<boolean> {
  try {
    const handle = await open('/dev/kvm', constants.O_RDWR);
    await handle.close();
    return true;
  } catch {
    return false;
  }
}

interface MachineInfo {
  name: string;
  alias?: string;
}

async function runProbe(binary: string): Promise<QemuCapabilities> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-probe-'));
  // KVM first, TCG as QEMU's own fallback: query-kvm then says which one won.
  const accel = (await kvmDeviceUsable()) ? ['-accel', 'kvm', '-accel', 'tcg'] : ['-accel', 'tcg'];
  try {
    await using vm = await spawnQemu(['-machine', 'none', ...accel, '-S', '-display', 'none', '-nodefaults', '-no-user-config'], {
      binary,
      qmpSocketPath: path.join(dir, 'probe.qmp'),
      cwd: dir,
      killWithParent: true,
    }).catch((error: unknown) => {
      throw new QemuProbeError(`cannot start ${binary} to probe it`, { cause: error });
    });
    try {
      await using qmp = await vm.connectQmp({ timeoutMs: 10_000, commandTimeoutMs: 10_000 });
      const version = await qmp.execute<{ qemu: { major: number; minor: number; micro: number }; package: string }>('query-version');
      const capabilities = await qmp.execute<Array<{ capability: string }>>('query-migrate-capabilities');
      const parameters = await qmp.execute<Record<string, unknown>>('query-migrate-parameters');
      const machines = await qmp.execute<MachineInfo[]>('query-machines');
      const kvm = await qmp.execute<{ enabled: boolean; present: boolean }>('query-kvm');
      const { major, minor, micro } = version.qemu;
      const machineAliases: Record<string, string> = {};
      const names = new Set<string>();
      for (const m of machines) {
        names.add(m.name);
        if (m.alias) {
          names.add(m.alias);
          machineAliases[m.alias] = m.name;
        }
      }
      return {
        binary,
        version: `${major}.${minor}.${micro}`,
        package: version.package.trim(),
        major,
        minor,
        micro,
        mappedRam: capabilities.some((c) => c.capability === 'mapped-ram'),
        directIo: 'direct-io' in parameters,
        machines: [...names].sort(),
        machineAliases,
        kvm: kvm.enabled,
      };
    } catch (error) {
      throw new QemuProbeError(`probing ${binary} over QMP failed`, { cause: error, stderr: vm.stderr() });
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
