/**
 * Commands on image files, without the bus or a running QEMU: inspect and verify.
 * What they do is `../run/image.ts`, loaded when one runs.
 */
import { lazy, type Command } from '../options.ts';

const run = () => import('../run/image.ts');

const inspectCommand: Command = {
  name: 'inspect',
  summary: "show an image's header and recorded VM definition (vmsave and libvirt images)",
  usage: 'inspect FILE',
  help: [],
  options: {},
  positionals: { min: 1, max: 1, names: 'FILE' },
  run: lazy(run, (m) => m.inspect, { settings: false }),
};

const verifyCommand: Command = {
  name: 'verify',
  summary: "run the verifier's checks on an image file (vmsave or libvirt); exit 3 when a check fails",
  usage: 'verify FILE [--content]',
  help: [
    [
      '--content',
      'also check every RAM chunk against the seal written at save (reads all the data; progress on stderr); a mismatch names its region and offsets; an image with no seal fails',
    ],
  ],
  options: { content: { type: 'boolean' } },
  positionals: { min: 1, max: 1, names: 'FILE' },
  run: lazy(run, (m) => m.verify, { settings: false }),
};

export const imageCommands: Command[] = [inspectCommand, verifyCommand];
