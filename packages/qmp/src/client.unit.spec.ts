import { describe, expect, it } from 'vitest';
import { QmpClient, type QmpRunState } from './client.ts';
import { QmpAbortedError, QmpCommandError, QmpConnectError, QmpDisconnectedError, QmpError, QmpProtocolError, QmpTimeoutError } from './errors.ts';
import type { QmpTransport, TransportHandlers } from './transport.ts';

const GREETING = { QMP: { version: { qemu: { major: 10, minor: 0, micro: 2 }, package: 'test' }, capabilities: ['oob'] } };

/** A scripted QEMU: records what the client wrote, answers when told to. */
class FakeQemu implements QmpTransport {
  readonly written: Array<{ message: Record<string, unknown>; fds: readonly number[] | undefined }> = [];
  handlers: TransportHandlers | undefined;
  closed = false;
  autoCapabilities = true;

  start(handlers: TransportHandlers): void {
    this.handlers = handlers;
  }

  write(data: Buffer, fds?: readonly number[]): Promise<void> {
    for (const line of data.toString('utf8').split('\n').filter(Boolean)) {
      const message = JSON.parse(line) as Record<string, unknown>;
      this.written.push({ message, fds });
      if (this.autoCapabilities && message['execute'] === 'qmp_capabilities') {
        queueMicrotask(() => this.send({ return: {}, id: message['id'] }));
      }
    }
    return Promise.resolve();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handlers?.onClose();
  }

  /** Sends raw text, possibly split anywhere. */
  sendRaw(text: string): void {
    this.handlers?.onData(Buffer.from(text, 'utf8'));
  }

  send(message: unknown): void {
    this.sendRaw(`${JSON.stringify(message)}\r\n`);
  }

  lastId(): unknown {
    return this.written.at(-1)?.message['id'];
  }

  hangUp(error?: Error): void {
    this.closed = true;
    this.handlers?.onClose(error);
  }
}

async function connected(options: { commandTimeoutMs?: number; maxEventQueue?: number } = {}) {
  const qemu = new FakeQemu();
  const client = new QmpClient({ ...options, transport: () => Promise.resolve(qemu) });
  const states: QmpRunState[] = [];
  client.onRunStateChange((s) => states.push(s));
  const connecting = client.connect('/fake.sock');
  await Promise.resolve();
  qemu.send(GREETING);
  await connecting;
  return { qemu, client, states };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('QmpClient (protocol, against a scripted QEMU)', () => {
  it('reads the greeting, negotiates capabilities, and goes connecting → running', async () => {
    const { qemu, client, states } = await connected();
    expect(states).toEqual(['connecting', 'running']);
    expect(client.runState).toBe('running');
    expect(client.greeting.version.qemu).toEqual({ major: 10, minor: 0, micro: 2 });
    expect(qemu.written.map((w) => w.message['execute'])).toEqual(['qmp_capabilities']);
  });

  it('gives each command its own id and routes answers by id, in any order', async () => {
    const { qemu, client } = await connected();
    const a = client.execute<{ a: number }>('query-a');
    const b = client.execute<{ b: number }>('query-b', { x: 1 });
    await tick();
    const [, wa, wb] = qemu.written;
    expect(wa?.message['id']).not.toEqual(wb?.message['id']);
    expect(wb?.message['arguments']).toEqual({ x: 1 });
    qemu.send({ return: { b: 2 }, id: wb?.message['id'] });
    qemu.send({ return: { a: 1 }, id: wa?.message['id'] });
    await expect(a).resolves.toEqual({ a: 1 });
    await expect(b).resolves.toEqual({ b: 2 });
  });

  it('reassembles messages split across reads and several per read', async () => {
    const { qemu, client } = await connected();
    const a = client.execute('one');
    const b = client.execute('two');
    await tick();
    const text = `${JSON.stringify({ return: 1, id: qemu.written[1]?.message['id'] })}\r\n${JSON.stringify({
      return: 'ü',
      id: qemu.written[2]?.message['id'],
    })}\r\n`;
    const bytes = Buffer.from(text, 'utf8');
    // split inside the multi-byte character too
    const cut = bytes.indexOf(Buffer.from('ü')) + 1;
    qemu.handlers?.onData(bytes.subarray(0, 5));
    qemu.handlers?.onData(bytes.subarray(5, cut));
    qemu.handlers?.onData(bytes.subarray(cut));
    await expect(a).resolves.toBe(1);
    await expect(b).resolves.toBe('ü');
  });

  it('keeps the command, its arguments and QEMU class/desc in a command error', async () => {
    const { qemu, client } = await connected();
    const call = client.execute('device_del', { id: 'nope' });
    await tick();
    qemu.send({ error: { class: 'DeviceNotFound', desc: "Device 'nope' not found" }, id: qemu.lastId() });
    const error = await call.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpCommandError);
    expect(error).toBeInstanceOf(QmpError);
    expect(error).toMatchObject({
      name: 'QmpCommandError',
      code: 'COMMAND',
      retryable: false,
      command: 'device_del',
      args: { id: 'nope' },
      errorClass: 'DeviceNotFound',
      desc: "Device 'nope' not found",
    });
  });

  it('fails a call with a timeout error after its deadline and ignores the late answer', async () => {
    const { qemu, client } = await connected({ commandTimeoutMs: 20 });
    const call = client.execute('slow');
    await tick();
    const id = qemu.lastId();
    await expect(call).rejects.toMatchObject({ name: 'QmpTimeoutError', code: 'TIMEOUT', command: 'slow', timeoutMs: 20 });
    qemu.send({ return: {}, id });
    expect(client.runState).toBe('running');
  });

  it('fails a call with an aborted error when its signal fires', async () => {
    const { client } = await connected();
    const controller = new AbortController();
    const call = client.execute('slow', undefined, { signal: controller.signal });
    controller.abort(new Error('operator said stop'));
    const error = await call.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpAbortedError);
    expect((error as Error).cause).toEqual(new Error('operator said stop'));
  });

  it('fails pending calls as interrupted when the connection drops, then goes disconnecting → idle', async () => {
    const { qemu, client, states } = await connected();
    const a = client.execute('query-a');
    const b = client.execute('query-b');
    await tick();
    qemu.hangUp(new Error('EPIPE'));
    for (const call of [a, b]) {
      const error = await call.catch((e: unknown) => e);
      expect(error).toBeInstanceOf(QmpDisconnectedError);
      expect(error).toMatchObject({ code: 'INTERRUPTED', retryable: true });
    }
    expect(states).toEqual(['connecting', 'running', 'disconnecting', 'idle']);
    expect(await client.disconnected).toBeInstanceOf(QmpDisconnectedError);
    await expect(client.execute('query-c')).rejects.toMatchObject({ code: 'DISCONNECTED' });
  });

  it('close() interrupts pending calls and is idempotent', async () => {
    const { qemu, client, states } = await connected();
    const call = client.execute('query-a');
    await client.close();
    await client.close();
    await expect(call).rejects.toMatchObject({ code: 'INTERRUPTED' });
    expect(qemu.closed).toBe(true);
    expect(states).toEqual(['connecting', 'running', 'disconnecting', 'idle']);
    expect(await client.disconnected).toBeUndefined();
  });

  it('sends fds with the command that takes them, one fd-carrying command at a time', async () => {
    const { qemu, client } = await connected();
    const first = client.addFd(7, { opaque: 'img' });
    const second = client.addFd(8, { fdsetId: 3 });
    await tick();
    expect(qemu.written.at(-1)).toEqual({
      message: { execute: 'add-fd', id: qemu.lastId(), arguments: { opaque: 'img' } },
      fds: [7],
    });
    // the second add-fd waits for the first answer
    expect(qemu.written).toHaveLength(2);
    qemu.send({ return: { 'fdset-id': 3, fd: 20 }, id: qemu.lastId() });
    await expect(first).resolves.toEqual({ fdsetId: 3, fd: 20 });
    await tick();
    expect(qemu.written.at(-1)).toMatchObject({ message: { arguments: { 'fdset-id': 3 } }, fds: [8] });
    qemu.send({ return: { 'fdset-id': 3, fd: 21 }, id: qemu.lastId() });
    await expect(second).resolves.toEqual({ fdsetId: 3, fd: 21 });
  });

  it('delivers events to every listener, filtered, each with its own bounded queue', async () => {
    const { qemu, client } = await connected({ maxEventQueue: 2 });
    const all = client.events();
    const migration = client.events({ names: ['MIGRATION'] });
    const ts = { seconds: 1, microseconds: 0 };
    qemu.send({ event: 'STOP', data: {}, timestamp: ts });
    qemu.send({ event: 'MIGRATION', data: { status: 'setup' }, timestamp: ts });
    qemu.send({ event: 'MIGRATION', data: { status: 'active' }, timestamp: ts });
    qemu.send({ event: 'RESUME', timestamp: ts });

    expect(all.dropped).toBe(2);
    expect((await all.next()).value).toMatchObject({ event: 'MIGRATION', data: { status: 'active' } });
    expect((await all.next()).value).toMatchObject({ event: 'RESUME', data: {} });
    expect(migration.dropped).toBe(0);
    const statuses: unknown[] = [];
    for await (const ev of migration) {
      statuses.push(ev.data['status']);
      if (statuses.length === 2) break;
    }
    expect(statuses).toEqual(['setup', 'active']);
  });

  it('ends event streams when the signal fires or the connection goes', async () => {
    const { qemu, client } = await connected();
    const controller = new AbortController();
    const bySignal = client.events({ signal: controller.signal });
    const byDisconnect = client.events();
    const pendingNext = bySignal.next();
    controller.abort();
    await expect(pendingNext).resolves.toEqual({ value: undefined, done: true });
    qemu.hangUp();
    await expect(byDisconnect.next()).resolves.toEqual({ value: undefined, done: true });
  });

  it('disconnects with a protocol error on malformed JSON', async () => {
    const { qemu, client } = await connected();
    const call = client.execute('query-a');
    qemu.sendRaw('{"return": \r\n');
    await expect(call).rejects.toMatchObject({ code: 'INTERRUPTED' });
    expect(await client.disconnected).toBeInstanceOf(QmpProtocolError);
    expect(client.runState).toBe('idle');
  });

  it('fails connect with a connect error when no greeting comes (socket busy with another client)', async () => {
    const qemu = new FakeQemu();
    const client = new QmpClient({ transport: () => Promise.resolve(qemu) });
    const error = await client.connect('/busy.sock', { timeoutMs: 30 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(QmpConnectError);
    expect((error as Error).message).toMatch(/no QMP greeting/);
    expect(client.runState).toBe('idle');
    expect(qemu.closed).toBe(true);
  });

  it('fails connect with a connect error when the socket cannot be opened', async () => {
    const client = new QmpClient({ transport: () => Promise.reject(Object.assign(new Error('ENOENT'), { code: 'ENOENT' })) });
    await expect(client.connect('/missing.sock')).rejects.toMatchObject({ name: 'QmpConnectError', retryable: true });
  });

  it('refuses execute() before connect with a disconnected error', async () => {
    const client = new QmpClient();
    await expect(client.execute('query-status')).rejects.toBeInstanceOf(QmpDisconnectedError);
    expect(() => client.greeting).toThrow(QmpDisconnectedError);
  });

  it('times out at the deadline, then the client stays usable', async () => {
    const { qemu, client } = await connected({ commandTimeoutMs: 10 });
    await expect(client.execute('a')).rejects.toBeInstanceOf(QmpTimeoutError);
    const b = client.execute('b', undefined, { timeoutMs: 1_000 });
    await tick();
    qemu.send({ return: 'ok', id: qemu.lastId() });
    await expect(b).resolves.toBe('ok');
  });
});
