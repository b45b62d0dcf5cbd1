import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/vmsave.js');

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (the last line, for commands that print one document). */
  json<T = Record<string, unknown>>(): T;
}

/**
 * Run the real CLI as a child process (`node bin/vmsave.js …`), from its sources: a bundle in
 * dist/ may be older than the code under test (`bin.int.spec.ts` tests a fresh bundle).
 */
export function vmsave(args: string[], env: Record<string, string> = {}, opts: { cwd?: string; timeoutMs?: number } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: opts.cwd, env: { ...process.env, VMSAVE_CLI_FROM_SOURCE: '1', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
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
