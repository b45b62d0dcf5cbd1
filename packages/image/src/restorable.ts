/** The restore gate: pure checks of an image's header + descriptor against a target VM and host. */
import type { QemuCapabilities, VmDefinition } from '@vmsave/contracts';
import type { ImageDescriptor } from './descriptor.ts';
import { SUPPORTED_VERSIONS, type ImageHeader } from './header.ts';

export type RestoreRefusalCode = 'partial' | 'version' | 'ram-size' | 'machine' | 'format' | 'machine-unknown' | 'vcpus';

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
 */
export function checkRestorable(image: { header: ImageHeader; descriptor: ImageDescriptor }, options: { definition?: VmDefinition; hostCaps: QemuCapabilities }): RestoreVerdict {
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
  if (header.directIo && !caps.directIo) notes.push(`saved with direct I/O, but this host's QEMU ${caps.version} lacks it: restore with buffered I/O`);
  return { ok: refusals.length === 0, refusals, notes };
}
