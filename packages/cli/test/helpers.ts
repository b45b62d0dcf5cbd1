import { lines, runNode, type RunResult } from '@vmsave/testkit';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/vmsave.js');

/** What the command printed, and its exit code. */
export type CliResult = RunResult;

/**
 * Run the real CLI as a child process (`node bin/vmsave.js …`), from its sources: a bundle in
 * dist/ may be older than the code under test (`bin.int.spec.ts` tests a fresh bundle).
 */
export function vmsave(args: string[], env: Record<string, string> = {}, opts: { cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return runNode(BIN, args, { ...opts, env: { VMSAVE_CLI_FROM_SOURCE: '1', ...env } });
}

export { lines };
