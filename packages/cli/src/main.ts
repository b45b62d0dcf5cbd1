import { run } from './cli.ts';
import { Ctx } from './context.ts';

const ctx = new Ctx(process.stdout, process.stderr);
// A second Ctrl-C (or one during a command that does not handle it) ends the process now.
process.exitCode = await run(process.argv.slice(2), ctx);
