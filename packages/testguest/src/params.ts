/** What the guest is told on its command line (QEMU `-append`). */
export interface GuestParams {
  /** Pages written per second; 0 = as fast as it can (default 1000). Needs `tscKhz` to be kept. */
  rate?: number;
  /** Percent of the RAM above 2 MiB the guest writes over, 1..100 (default 50). */
  share?: number;
  /** Seed of the page contents (default 1). */
  seed?: number;
  /** The guest's TSC frequency in kHz (the guest calibrates nothing). */
  tscKhz?: number;
  /** TSC ticks between two loop turns above which the guest counts a stall (default 1 ms). */
  stallTicks?: number;
}

const U32 = 0xffffffff;

function check(field: string, v: number | undefined, min: number, max: number): void {
  if (v === undefined) return;
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`test guest ${field} must be an integer in ${min}..${max}, got ${v}`);
}

/** The multiboot command line for {@link GuestParams}, e.g. `rate=1000 share=50 seed=1 tsc_khz=2596000`. */
export function guestAppend(p: GuestParams): string {
  check('rate', p.rate, 0, U32);
  check('share', p.share, 1, 100);
  check('seed', p.seed, 0, U32);
  check('tscKhz', p.tscKhz, 1, U32);
  check('stallTicks', p.stallTicks, 1, U32);
  const parts = [`rate=${p.rate ?? 1000}`, `share=${p.share ?? 50}`, `seed=${p.seed ?? 1}`];
  if (p.tscKhz !== undefined) parts.push(`tsc_khz=${p.tscKhz}`);
  if (p.stallTicks !== undefined) parts.push(`stall=${p.stallTicks}`);
  return parts.join(' ');
}
