import { z } from 'zod';

/** QEMU machine type name (`q35`, `pc-q35-10.0`, …): no spaces or commas, so it cannot smuggle options. */
export const MachineType = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'machine type: letters, digits, . _ - (1–64 chars)');

/** A VM's name: also used in file and socket names, so restricted to a safe character set. */
export const VmName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/, 'VM name: start with a letter or digit, then letters, digits, . _ - (max 63)');
export type VmName = z.infer<typeof VmName>;

/**
 * A VM's own image retention: keep its newest `keepLast` verified images and its images younger
 * than `maxAgeMs`. It replaces its host's retention policy for this VM's images (see
 * `ruleFor` in packages/jobs/src/retention.ts).
 */
export const VmRetention = z
  .object({
    keepLast: z.number().int().min(1).max(100_000).optional(),
    maxAgeMs: z.number().int().min(0).optional(),
  })
  .refine((r) => r.keepLast !== undefined || r.maxAgeMs !== undefined, { message: 'retention: give keepLast, maxAgeMs or both' });
export type VmRetention = z.infer<typeof VmRetention>;

/**
 * What is needed to start a VM again (and to restore into it): the definition an executor
 * starts QEMU from, and what a vmsave image's descriptor records.
 */
export const VmDefinition = z.object({
  name: VmName,
  uuid: z.uuid(),
  machine: MachineType,
  memoryMiB: z
    .number()
    .int()
    .min(16)
    .max(4 * 1024 * 1024),
  vcpus: z.number().int().min(1).max(1024),
  /** Extra QEMU arguments (devices, backends). vmsave adds its own -qmp, -incoming, -S. */
  args: z.array(z.string().max(4096)).max(512).default([]),
  /** This VM's image retention, overriding its host's policy (absent: the host's applies). */
  retention: VmRetention.optional(),
});
export type VmDefinition = z.infer<typeof VmDefinition>;

/** What a host's QEMU can do, as probed by its executor. */
export const QemuCapabilities = z.object({
  version: z.string(),
  mappedRam: z.boolean(),
  directIo: z.boolean(),
  machines: z.array(z.string()),
  accel: z.enum(['kvm', 'tcg']),
});
export type QemuCapabilities = z.infer<typeof QemuCapabilities>;

export const SaveFormat = z.enum(['legacy', 'sparse']);
export type SaveFormat = z.infer<typeof SaveFormat>;
