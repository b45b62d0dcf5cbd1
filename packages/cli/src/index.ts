export { VmsaveClient } from './client.ts';
export { run, commands, type Command } from './cli.ts';
export { Ctx } from './context.ts';
export { EXIT, CliError, UsageError, RejectedError, JobFailedError, UnreachableError } from './errors.ts';
export { definitionFromCmdline, parseMemoryMiB, parseQemuOpts, type CmdlineDefinition } from './cmdline.ts';
export { writeDemoVm } from './demo-vm.ts';
export { progressLine, fmtBytes, fmtRate, fmtDuration, table } from './format.ts';
