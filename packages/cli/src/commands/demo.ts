/** `vmsave demo`: what it accepts; what it does is `../run/demo.ts`, loaded when it runs. */
import { lazy, type Command } from '../options.ts';

export const demoCommand: Command = {
  name: 'demo',
  summary: 'save the demo VM in both formats through the bus, verify, restore both, print the comparison',
  usage: 'demo [--vm NAME] [--host H] [--memory MiB]',
  help: [
    ['--vm NAME', 'VM to use (default demo; defined here when missing)'],
    ['--host H', 'its host on the bus (default: this host, VMSAVE_HOST)'],
    ['--memory MiB', 'RAM of a newly defined demo VM (default 256)'],
  ],
  options: { vm: { type: 'string' }, host: { type: 'string' }, memory: { type: 'string' } },
  run: lazy(
    () => import('../run/demo.ts'),
    (m) => m.demo,
  ),
};
