/**
 * VM partitions: the unit of work several active schedulers divide among themselves.
 *
 * Every VM belongs to one of `PARTITIONS` partitions, `partitionOf(vm)` (FNV-1a 32-bit of the
 * name's UTF-8 bytes, mod `PARTITIONS`). Commands travel on `vmsave.cmd.<kind>.<NN>` (`NN` the
 * partition, two digits: VM names may contain dots, so the VM itself is never a subject token),
 * and the scheduler that owns partition `NN` admits them and runs the jobs of its VMs. Pure.
 */

/** How many VM partitions there are. Changing it moves VMs between partitions: all schedulers must agree. */
export const PARTITIONS = 16;

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const utf8 = new TextEncoder();

/** FNV-1a, 32 bits, of a string's UTF-8 bytes. */
export function fnv1a32(s: string): number {
  let h = FNV_OFFSET;
  for (const b of utf8.encode(s)) {
    h ^= b;
    h = Math.imul(h, FNV_PRIME) >>> 0;
  }
  return h >>> 0;
}

/** The partition of a VM name (or of a restore's image path when its VM is not known): 0 ≤ n < PARTITIONS. */
export function partitionOf(vm: string): number {
  return fnv1a32(vm) % PARTITIONS;
}

/** A partition as a subject token: two digits, `07`. */
export function partitionToken(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n >= PARTITIONS) throw new RangeError(`partition: an integer 0 to ${PARTITIONS - 1}, got ${n}`);
  return String(n).padStart(2, '0');
}

/** Every partition number, 0 to PARTITIONS − 1. */
export function allPartitions(): number[] {
  return Array.from({ length: PARTITIONS }, (_, i) => i);
}

/**
 * The key a job's partition is computed from, given its first event's data: a save's VM; a
 * restore's VM when admission knew it, else its image path as requested. A client cancelling a
 * job reads its first event and publishes on this partition.
 */
export function partitionKeyOfRequest(first: { kind: 'save'; vm: string } | { kind: 'restore'; vm?: string; image: string }): string {
  return first.kind === 'save' ? first.vm : (first.vm ?? first.image);
}
