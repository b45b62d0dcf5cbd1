/**
 * The image lifecycle through the bus: `images` (what the log knows is on disk) and
 * `images prune` (a host's executor applies a retention policy). What they do is
 * `../run/images.ts`, loaded when one runs.
 */
import { lazy, type Command } from '../options.ts';

const run = () => import('../run/images.ts');

const imagesCommand: Command = {
  name: 'images',
  summary: 'images the event log knows (not deleted): vm, host, path, status, age, size',
  usage: 'images [--vm NAME] [--host H] [--deleted]  |  images --unknown',
  help: [
    ['--vm NAME', "only this VM's images"],
    ['--host H', "only this host's images"],
    ['--deleted', 'also list images retention deleted (status deleted, with the rule)'],
    ['--unknown', "files in this host's image directory (VMSAVE_STATE_DIR / VMSAVE_IMAGE_DIR) that no save in the log wrote"],
  ],
  options: { vm: { type: 'string' }, host: { type: 'string' }, deleted: { type: 'boolean' }, unknown: { type: 'boolean' } },
  run: lazy(run, (m) => m.images),
};

const pruneCommand: Command = {
  name: 'images prune',
  summary: "apply a retention policy to one host's images (its executor deletes them and records ImageDeleted)",
  usage: 'images prune --host H [--keep-last N] [--max-age 7d] [--dry-run]',
  help: [
    ['--host H', 'the host whose images are pruned (required)'],
    ['--keep-last N', 'keep the newest N verified images of each VM'],
    ['--max-age D', 'keep images younger than D (90s, 30m, 12h, 7d, 2w); with --keep-last, an image goes only when both let it go'],
    ['--dry-run', 'show what would be deleted, and why each other image is kept; delete nothing'],
    ['', 'always kept: an image a queued or running restore needs, and the newest verified image of a VM that is not running'],
  ],
  options: { host: { type: 'string' }, 'keep-last': { type: 'string' }, 'max-age': { type: 'string' }, 'dry-run': { type: 'boolean' } },
  run: lazy(run, (m) => m.prune),
};

export const imagesCommands: Command[] = [imagesCommand, pruneCommand];
