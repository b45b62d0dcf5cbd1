/**
 * A child for the multi-host spec's harness checks: makes a one-host lab, starts a process inside
 * it that does not die with its parent (a backgrounded `sleep`, as a detached QEMU would be),
 * prints what it made as one JSON line, then either waits to be killed (`wait`) or exits without
 * tearing down (`exit`), leaving the clean-up to the `exit` hook or to the next lab's sweep.
 */
import { NetnsLab } from '@vmsave/testkit';

const mode = process.argv[2] ?? 'wait';
const lab = await NetnsLab.create({ hosts: ['x'] });
const h = lab.host('x');
const sh = lab.exec('x', 'sh', ['-c', 'sleep 300 >/dev/null 2>&1 & echo $!'], { logFile: '/dev/null' });
await new Promise((r) => sh.once('exit', r));
const inside = lab.pids('x');
process.stdout.write(`${JSON.stringify({ ns: h.ns, link: h.hostLink, addr: lab.serviceAddr, inside })}\n`);
if (mode === 'exit') process.exit(0);
setInterval(() => undefined, 1000);
