import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * A private JetStream-enabled nats-server for a test that must be alone on the event log.
 *
 * The shared server may have a scheduler and a verifier running (another suite's services):
 * they act on every job in the log, so they would reject this test's made-up jobs halfway
 * through. Undefined when no `nats-server` binary is on PATH.
 */
export async function startPrivateNats(): Promise<{ url: string; stop(): Promise<void> } | undefined> {
  let bin: string;
  try {
    bin = execFileSync('sh', ['-c', 'command -v nats-server'], { encoding: 'utf8' }).trim();
  } catch {
    return undefined;
  }
  if (!bin) return undefined;
  const port = await new Promise<number>((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
  const dir = mkdtempSync(join(tmpdir(), 'vmsave-dashboard-nats-'));
  const child: ChildProcess = spawn(bin, ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const answers = () =>
    new Promise<boolean>((resolve) => {
      const c = createConnection({ host: '127.0.0.1', port }, () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
  for (let i = 0; !(await answers()); i++) {
    if (i > 100 || child.exitCode !== null) {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`private nats-server on port ${port} did not start`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url: `nats://127.0.0.1:${port}`,
    async stop() {
      child.kill('SIGTERM');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
