/**
 * The real `vmsave` command as a child process: `packages/cli/bin/vmsave.js`, run by path (this
 * package does not depend on the CLI package), from its TypeScript sources so that a stale
 * bundle in dist/ never stands in for the code under test.
 */
import path from 'node:path';
import { lines, runNode, type RunResult } from '@vmsave/testkit';
import { REPO } from './stack.ts';

export const VMSAVE_BIN = path.join(REPO, 'packages', 'cli', 'bin', 'vmsave.js');

/** The command's documented exit codes (docs/cli.md), as a user of the binary sees them. */
export const EXIT = { ok: 0, error: 1, usage: 2, rejected: 3, failed: 4, unreachable: 5 } as const;

/** What the command printed, and its exit code. */
export type CliResult = RunResult;

/** Run the real CLI from its sources with `args` (and `env` on top of this process's). */
export function vmsave(args: string[], env: Record<string, string> = {}, opts: { cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return runNode(VMSAVE_BIN, args, { ...opts, env: { VMSAVE_CLI_FROM_SOURCE: '1', ...env } });
}

export { lines };
