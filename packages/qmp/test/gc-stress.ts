// Run by gc-stress.int.spec.ts in a child process with --expose-gc: connects and closes QMP
// sessions many times while forcing garbage collection. usocket's native wrapper used to be
// freed before libuv finished closing it, which aborted the process (uv__finish_close).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { QmpClient } from '../src/index.ts';

const dir = process.argv[2]!;
const sock = path.join(dir, 'gc.qmp');
const qemu = spawn('qemu-system-x86_64', ['-machine', 'none', '-S', '-display', 'none', '-nodefaults', '-qmp', `unix:${sock},server=on,wait=off`], { stdio: 'ignore' });
for (let i = 0; i < 100 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
await new Promise((r) => setTimeout(r, 200));
const gc = (globalThis as { gc?: () => void }).gc!;
try {
  for (let i = 0; i < 300; i++) {
    const q = await QmpClient.connect(sock);
    await q.execute('query-status');
    await q.close();
    gc();
    await new Promise((r) => setImmediate(r));
  }
  for (let i = 0; i < 100; i++) {
    await QmpClient.connect(path.join(dir, 'absent.qmp'), { timeoutMs: 200 }).catch(() => undefined);
    gc();
  }
} finally {
  qemu.kill('SIGKILL');
}
process.stdout.write('survived\n');
