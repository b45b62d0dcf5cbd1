export { run, commands } from './cli.ts';
export type { Command } from './options.ts';
export { Ctx } from './context.ts';
export { EXIT, CliError, UsageError, RejectedError, JobFailedError, UnreachableError } from './errors.ts';
export { definitionFromCmdline, parseMemoryMiB, parseQemuOpts, type CmdlineDefinition } from './cmdline.ts';
export { writeDemoVm } from './demo-vm.ts';
export { table } from './terminal.ts';
export { progressLine, fmtBytes, fmtRate, fmtDuration } from '@vmsave/jobs';
