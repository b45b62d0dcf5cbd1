import { spawn } from 'node:child_process';
import net from 'node:net';
import { waitFor } from './wait.ts';

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const p = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return p;
}

/** Resolves true once something accepts TCP connections on 127.0.0.1:`port`. */
export const answers = (port: number): Promise<boolean> =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

/**
 * A private redis-server that asks for `password` (nothing on disk), on a free port, answering
 * before this resolves; `stop()` kills it.
 */
export async function startPasswordRedis(password: string): Promise<{ port: number; stop(): void }> {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--requirepass', password, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  await waitFor('the password-protected redis-server', () => answers(port));
  return { port, stop: () => child.kill('SIGKILL') };
}
