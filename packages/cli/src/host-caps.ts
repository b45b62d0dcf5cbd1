/**
 * This host's QEMU capabilities, cached in the state directory. Probing starts a QEMU
 * (`-machine none`) and asks it over QMP: a few hundred milliseconds that `vmsave verify`
 * and the local commands would pay on every run. The answer only changes with the binary
 * (path, mtime, size) or with /dev/kvm becoming usable or not, so that is the cache key.
 */
import { constants } from 'node:fs';
import { access, mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { QemuCapabilities as HostCaps } from '@vmsave/contracts';
import type { Accel, QemuCapabilities as Probe } from '@vmsave/qemu';

const CACHE_FILE = 'qemu-probe.json';
const BINARY = 'qemu-system-x86_64';

interface Key {
  binary: string;
  mtimeMs: number;
  size: number;
  kvmUsable: boolean;
}

interface CacheEntry {
  version: 1;
  key: Key;
  probe: Probe;
}

/** The executor's state directory (`VMSAVE_STATE_DIR`, default `.vmsave/executor` under the working directory). */
export function stateDirOf(env: Record<string, string | undefined>): string {
  return path.resolve(env.VMSAVE_STATE_DIR || path.join('.vmsave', 'executor'));
}

/** `name` as the shell would run it: the first executable match on PATH (or the path itself). */
async function resolveBinary(name: string, env: Record<string, string | undefined>): Promise<string | undefined> {
  const candidates = name.includes('/')
    ? [path.resolve(name)]
    : (env.PATH ?? '')
        .split(':')
        .filter(Boolean)
        .map((d) => path.join(d, name));
  for (const c of candidates) {
    try {
      await access(c, constants.X_OK);
      return c;
    } catch {
      /* next */
    }
  }
  return undefined;
}

async function keyOf(env: Record<string, string | undefined>): Promise<Key | undefined> {
  const binary = await resolveBinary(BINARY, env);
  if (!binary) return undefined;
  const st = await stat(binary);
  const kvmUsable = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  return { binary, mtimeMs: st.mtimeMs, size: st.size, kvmUsable };
}

const sameKey = (a: Key, b: Key) => a.binary === b.binary && a.mtimeMs === b.mtimeMs && a.size === b.size && a.kvmUsable === b.kvmUsable;

/**
 * The probe of this host's QEMU, from `<stateDir>/qemu-probe.json` when its key still matches,
 * otherwise probed (then written back; a state directory that cannot be written only costs the
 * next run a probe). Throws what `probeQemu` throws when QEMU cannot be probed.
 *
 * @example
 * const probe = await cachedProbe(stateDirOf(ctx.env), ctx.env);
 * const caps = hostCaps(probe);
 */
export async function cachedProbe(stateDir: string, env: Record<string, string | undefined> = process.env): Promise<Probe> {
  const file = path.join(stateDir, CACHE_FILE);
  const key = await keyOf(env).catch(() => undefined);
  if (key) {
    try {
      const entry = JSON.parse(await readFile(file, 'utf8')) as CacheEntry;
      if (entry.version === 1 && sameKey(entry.key, key) && entry.probe?.version) return entry.probe;
    } catch {
      /* missing or unreadable: probe */
    }
  }
  const { probeQemu } = await import('@vmsave/qemu');
  const probe = await probeQemu(key ? { binary: key.binary } : {});
  if (key) {
    const tmp = `${file}.${process.pid}.tmp`;
    await mkdir(stateDir, { recursive: true })
      .then(() => writeFile(tmp, `${JSON.stringify({ version: 1, key, probe } satisfies CacheEntry)}\n`))
      .then(() => rename(tmp, file))
      .catch(() => undefined);
  }
  return probe;
}

export const accelOf = (probe: Probe): Accel => (probe.kvm ? 'kvm' : 'tcg');

/** The capabilities as the bus and the image checks describe a host. */
export function hostCaps(probe: Probe): HostCaps {
  return { version: probe.version, mappedRam: probe.mappedRam, directIo: probe.directIo, machines: probe.machines, accel: accelOf(probe) };
}
