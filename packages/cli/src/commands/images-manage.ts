/**
 * Images the log does not know (`images --unknown`): `images adopt` asks the host's executor to
 * record one as a save job, `images remove` to delete one. What it does is `../run/images-manage.ts`, loaded when it runs.
 */
import { lazy, type Command } from '../options.ts';

const run = () => import('../run/images-manage.ts');

const removeCommand: Command = {
  name: 'images remove',
  summary: "delete a file of a host's image directory that the log does not know (its executor refuses any file the log knows or a job needs)",
  usage: 'images remove PATH --host H [--dry-run]',
  help: [
    ['PATH', 'the file, as `images --unknown` lists it (absolute, or relative to the image directory)'],
    ['--host H', 'the host whose image directory holds it (required)'],
    ['--dry-run', 'only say whether it would be removed'],
    ['', 'refused: a file outside the image directory or not a regular file, an image a save in the log wrote (prune it instead), an image a queued or running restore needs'],
  ],
  options: { host: { type: 'string' }, 'dry-run': { type: 'boolean' } },
  positionals: { min: 1, max: 1, names: 'PATH' },
  run: lazy(run, (m) => m.remove),
};

const adoptCommand: Command = {
  name: 'images adopt',
  summary: "record a file of a host's image directory that the log does not know as a save job (its executor checks it is a complete vmsave image; the verifier then verifies it)",
  usage: 'images adopt PATH --host H',
  help: [
    ['PATH', 'the file, as `images --unknown` lists it (absolute, or relative to the image directory)'],
    ['--host H', 'the host whose image directory holds it (required)'],
    ['', 'refused: a file outside the image directory, not a complete vmsave image, or one the log already knows'],
  ],
  options: { host: { type: 'string' } },
  positionals: { min: 1, max: 1, names: 'PATH' },
  run: lazy(run, (m) => m.adopt),
};

export const imagesManageCommands: Command[] = [adoptCommand, removeCommand];
