import { spawn, type ChildProcess } from 'node:child_process';
import { constants, openSync, closeSync, writeFileSync, existsSync, promises } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, QmpCommandError, QmpBusyError, QmpConnectError, QmpDisconnectedError, findQmpServerProcess, type QmpEvent } from '@vmsave/qmp';

// This package cannot depend on @vmsave/qemu (which depends on it): start QEMU by hand.
let dir: string;
const children = new Set<ChildProcess>();

function kvmUsable(): boolean {
  try {
    closeSync(openSync('/dev/kvm', constants.O_RDWR));
    return true;
  } catch {
    return false;
  }
}

async function startQemu(name: string): Promise<{ child: ChildProcess; socket: string }> {
  const socket = path.join(dir, `${name}.qmp`);
  const accel = kvmUsable() ? ['-accel', 'kvm', '-accel', 'tcg'] : ['-accel', 'tcg'];
  const child = spawn(
    'qemu-system-x86_64',
    ['-machine', 'none', ...accel, '-S', '-nodefaults', '-no-user-config', '-display', 'none', '-qmp', `unix:${socket},server=on,wait=off`],
    { stdio: 'ignore' },
  );
  children.add(child);
  child.once('exit', () => children.delete(child));
  // The socket file appears at bind(), a moment before listen(): wait until a connect succeeds.
  for (let i = 0; i < 500 && !(existsSync(socket) && (await accepts(socket))); i++) await new Promise((r) => setTimeout(r, 10));
  return { child, socket };
}

function accepts(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createConnection(socket);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

function killAndWait(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill(signal);
  });
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-qmp-'));
});

afterEach(async () => {
  await Promise.all([...children].map((c) => killAndWait(c)));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('QmpClient against a real QEMU', () => {
  it('connects, exposes the QEMU version, and answers commands', async () => {
    const { socket } = await startQemu('basic');
    await using qmp = await QmpClient.connect(socket);
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(9);
    const version = await qmp.execute<{ qemu: { major: number } }>('query-version');
    expect(version.qemu.major).toBe(qmp.greeting.version.qemu.major);
    await expect(qmp.execute('query-status')).resolves.toMatchObject({ status: 'prelaunch', running: false });
  });

  it('passes fds with add-fd (SCM_RIGHTS) and removes them again', async () => {
    const { socket } = await startQemu('fds');
    await using qmp = await QmpClient.connect(socket);
    const file = path.join(dir, 'image.bin');
    writeFileSync(file, '');
    const wr = openSync(file, constants.O_WRONLY);
    const rd = openSync(file, constants.O_RDONLY);
    try {
      const first = await qmp.addFd(wr, { opaque: 'vmsave test' });
      expect(first.fdsetId).toBeTypeOf('number');
      expect(first.fd).toBeGreaterThan(2);
      const second = await qmp.addFd(rd, { fdsetId: first.fdsetId });
      expect(second.fdsetId).toBe(first.fdsetId);
      expect(await qmp.execute('query-fdsets')).toEqual([
        {
          'fdset-id': first.fdsetId,
          fds: [{ fd: first.fd, opaque: 'vmsave test' }, { fd: second.fd }],
        },
      ]);
      await qmp.removeFd(first.fdsetId, second.fd);
      expect(await qmp.execute('query-fdsets')).toEqual([{ 'fdset-id': first.fdsetId, fds: [{ fd: first.fd, opaque: 'vmsave test' }] }]);
      await qmp.removeFd(first.fdsetId);
      expect(await qmp.execute('query-fdsets')).toEqual([]);

      await qmp.getfd('vmsave-test', rd);
      await qmp.execute('closefd', { fdname: 'vmsave-test' });
    } finally {
      closeSync(wr);
      closeSync(rd);
    }
  });

  it('keeps QEMU error class and desc, and the command sent', async () => {
    const { socket } = await startQemu('errors');
    await using qmp = await QmpClient.connect(socket);
    const error = await qmp.removeFd(4242).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpCommandError);
    expect(error).toMatchObject({ command: 'remove-fd', args: { 'fdset-id': 4242 }, errorClass: 'GenericError' });
    expect((error as QmpCommandError).desc).toMatch(/4242/);
    const missing = await qmp.execute('no-such-command').catch((e: unknown) => e);
    expect(missing).toMatchObject({ errorClass: 'CommandNotFound' });
  });

  it('delivers events', async () => {
    const { socket } = await startQemu('events');
    await using qmp = await QmpClient.connect(socket);
    const controller = new AbortController();
    const received: QmpEvent[] = [];
    const listening = (async () => {
      for await (const ev of qmp.events({ names: ['RESUME', 'STOP'], signal: controller.signal })) {
        received.push(ev);
        if (received.length === 2) controller.abort();
      }
    })();
    await qmp.execute('cont');
    await qmp.execute('stop');
    await listening;
    expect(received.map((e) => e.event)).toEqual(['RESUME', 'STOP']);
    expect(received[0]?.timestamp.seconds).toBeGreaterThan(0);
  });

  it('fails pending calls with an interrupted disconnect error when QEMU is killed', async () => {
    const { child, socket } = await startQemu('killed');
    const qmp = await QmpClient.connect(socket);
    // Frozen, QEMU cannot answer: the call is surely still pending when it dies.
    child.kill('SIGSTOP');
    const pending = qmp.execute('query-status').catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 50));
    await killAndWait(child);
    const error = await pending;
    expect(error).toBeInstanceOf(QmpDisconnectedError);
    expect(error).toMatchObject({ code: 'INTERRUPTED', command: 'query-status', retryable: true });
    expect(qmp.runState).toBe('idle');
    await expect(qmp.execute('query-status')).rejects.toMatchObject({ code: 'DISCONNECTED' });
  });

  it('gets no greeting while another client holds the socket (busy), unlike a socket with no QEMU', async () => {
    const { socket } = await startQemu('busy');
    await using first = await QmpClient.connect(socket);
    await expect(QmpClient.connect(socket, { timeoutMs: 300 })).rejects.toBeInstanceOf(QmpBusyError);
    await expect(first.execute('query-status')).resolves.toBeDefined();
    // Asking a busy QEMU again and again must not tie up libuv's pool threads (usocket connects
    // there, blocking): fs calls of this process still complete.
    for (let i = 0; i < 6; i++) await expect(QmpClient.connect(socket, { timeoutMs: 200 })).rejects.toBeInstanceOf(QmpBusyError);
    const stat = promises.stat(socket).then(() => 'answered');
    expect(await Promise.race([stat, new Promise((r) => setTimeout(() => r('pool blocked'), 2000))])).toBe('answered');
    // Nothing at all behind a path is not "busy": the VM is not there.
    const absent = await QmpClient.connect(`${socket}.absent`, { timeoutMs: 300 }).catch((e: unknown) => e);
    expect(absent).toBeInstanceOf(QmpConnectError);
    expect(absent).not.toBeInstanceOf(QmpBusyError);
  });

  it('finds the QEMU process serving a socket, with its command line', async () => {
    const { child, socket } = await startQemu('peer');
    const found = await findQmpServerProcess(socket);
    expect(found?.pid).toBe(child.pid);
    expect(found?.cmdline[0]).toMatch(/qemu-system-x86_64$/);
    expect(found?.cmdline).toContain(`unix:${socket},server=on,wait=off`);
    expect(await findQmpServerProcess(path.join(dir, 'nobody.qmp'))).toBeUndefined();
  });
});
