/**
 * The real `vmsave` command as a child process: `packages/cli/bin/vmsave.js`, run by path (this
 * package does not depend on the CLI package), from its TypeScript sources so that a stale
 * bundle in dist/ never stands in for the code under test.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { REPO } from './stack.ts';

export const VMSAVE_BIN = path.join(REPO, 'packages', 'cli', 'bin', 'vmsave.js');

/** The command's documented exit codes (docs/cli.md), as a user of the binary sees them. */
export const EXIT = { ok: 0, error: 1, usage: 2, rejected: 3, failed: 4, unreachable: 5 } as const;

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (the last line, for commands that print one document). */
  json<T = Record<string, unknown>>(): T;
}

export function vmsave(args: string[], env: Record<string, string> = {}, opts: { cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [VMSAVE_BIN, ...args], {
      cwd: opts.cwd,
      env: { ...process.env, VMSAVE_CLI_FROM_SOURCE: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`vmsave ${args.join(' ')} timed out\n${stderr}`));
    }, opts.timeoutMs ?? 240_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({
        code,
        stdout,
        stderr,
        json<T>() {
          const lines = stdout.trim().split('\n');
          try {
            return JSON.parse(lines.at(-1)!) as T;
          } catch {
            throw new Error(`stdout of vmsave ${args.join(' ')} is not JSON:\n${stdout}\nstderr:\n${stderr}`);
          }
        },
      });
    });
  });
}

/** Lines a human sees on stderr (progress bars are not drawn: stderr is a pipe). */
export const lines = (s: string): string[] => s.split('\n').filter((l) => l.trim() !== '');
