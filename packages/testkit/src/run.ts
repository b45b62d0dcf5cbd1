import { spawn, type ChildProcess } from 'node:child_process';

/** What a finished command printed, and how it ended. */
export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed as JSON (the last line, for commands that print one document). */
  json<T = Record<string, unknown>>(): T;
}

/**
 * Run a Node script as a child process (no shell, stdin closed) and collect its output; rejects
 * when it outlives `timeoutMs` (then it is killed) or cannot start.
 */
export function runNode(script: string, args: string[], opts: { env?: Record<string, string>; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  const what = `${script} ${args.join(' ')}`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${what} timed out\n${stderr}`));
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
            throw new Error(`stdout of ${what} is not JSON:\n${stdout}\nstderr:\n${stderr}`);
          }
        },
      });
    });
  });
}

/** Lines a human sees on stderr (progress bars are not drawn: stderr is a pipe). */
export const lines = (s: string): string[] => s.split('\n').filter((l) => l.trim() !== '');

/** Stop a child process: SIGTERM, then SIGKILL after `timeoutMs`; resolves once it has exited (at once if it already had). */
export async function stopChild(child: ChildProcess | undefined, timeoutMs = 15_000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await gone;
  clearTimeout(t);
}
