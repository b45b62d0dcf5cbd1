import { StringDecoder } from 'node:string_decoder';
import { QmpAbortedError, QmpCommandError, QmpBusyError, QmpConnectError, QmpDisconnectedError, QmpError, QmpProtocolError, QmpTimeoutError } from './errors.ts';
import { QmpEventStream, type EventStreamOptions, type QmpEvent } from './events.ts';
import { connectUnixSocket, type QmpTransport, type TransportFactory } from './transport.ts';

/** The client's life cycle: idle → connecting → running → disconnecting → idle. */
export type QmpRunState = 'idle' | 'connecting' | 'running' | 'disconnecting';

/** What QEMU says first on a QMP connection. */
export interface QmpGreeting {
  version: {
    qemu: { major: number; minor: number; micro: number };
    package: string;
  };
  capabilities: string[];
}

export interface QmpClientOptions {
  /** Default deadline of every {@link QmpClient.execute} call, in ms. Default 30 000. */
  commandTimeoutMs?: number;
  /** Deadline for connecting and receiving the greeting, in ms. Default 10 000. */
  connectTimeoutMs?: number;
  /** Default per-listener queue bound for {@link QmpClient.events}. Default 256. */
  maxEventQueue?: number;
  /** Longest single message accepted from QEMU, in bytes. Default 64 MiB. */
  maxMessageBytes?: number;
  /** How to open the socket. Default: a unix socket that can pass fds (usocket). */
  transport?: TransportFactory;
}

export interface ConnectOptions {
  signal?: AbortSignal;
  /** Overrides {@link QmpClientOptions.connectTimeoutMs}. */
  timeoutMs?: number;
}

export interface ExecuteOptions {
  signal?: AbortSignal;
  /** Overrides {@link QmpClientOptions.commandTimeoutMs}. */
  timeoutMs?: number;
  /** File descriptors sent as SCM_RIGHTS with this very command (add-fd, getfd). */
  fds?: readonly number[];
}

export interface AddFdOptions extends Omit<ExecuteOptions, 'fds'> {
  /** Join this fdset; QEMU allocates a fresh one when absent. */
  fdsetId?: number;
  /** Free-form text shown by query-fdsets. */
  opaque?: string;
}

export interface AddFdResult {
  fdsetId: number;
  /** The fd number inside QEMU. */
  fd: number;
}

interface Pending {
  command: string;
  args: Record<string, unknown> | undefined;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

type Message = Record<string, unknown>;

const DEFAULTS = {
  commandTimeoutMs: 30_000,
  connectTimeoutMs: 10_000,
  maxEventQueue: 256,
  maxMessageBytes: 64 * 1024 * 1024,
};

/**
 * A QMP client for one QEMU monitor socket.
 *
 * Every call has a deadline; errors are {@link QmpError}s that keep what was
 * sent and what QEMU answered; calls still pending when the connection goes
 * fail with an "interrupted" {@link QmpDisconnectedError}. File descriptors can
 * be passed with a command (`add-fd`, `getfd`), which Node's `net` cannot do.
 *
 * A QMP socket serves one client at a time: while another client is connected,
 * no greeting arrives and `connect` fails with a {@link QmpBusyError} after
 * its deadline.
 *
 * @example
 * ```ts
 * await using qmp = await QmpClient.connect('/run/vm1/qmp.sock', { timeoutMs: 5_000 });
 * console.log(qmp.greeting.version.qemu); // { major: 10, minor: 0, micro: 2 }
 * const { status } = await qmp.execute<{ status: string }>('query-status');
 *
 * const fd = fs.openSync('/images/vm1.img', fs.constants.O_WRONLY);
 * const { fdsetId } = await qmp.addFd(fd, { opaque: 'vm1 image' });
 * fs.closeSync(fd); // QEMU holds its own copy
 *
 * for await (const ev of qmp.events({ names: ['MIGRATION'], signal })) {
 *   console.log(ev.data.status);
 * }
 * await qmp.removeFd(fdsetId);
 * ```
 */
export class QmpClient implements AsyncDisposable {
  readonly #options: Required<Omit<QmpClientOptions, 'transport'>> & { transport: TransportFactory };
  #state: QmpRunState = 'idle';
  readonly #stateListeners = new Set<(state: QmpRunState) => void>();
  #transport: QmpTransport | undefined;
  #greeting: QmpGreeting | undefined;
  #onGreeting: ((message: Message) => void) | undefined;
  readonly #pending = new Map<string, Pending>();
  readonly #listeners = new Set<QmpEventStream>();
  #nextId = 1;
  #decoder = new StringDecoder('utf8');
  #rx = '';
  #fdLock: Promise<unknown> = Promise.resolve();
  #disconnected: Promise<Error | undefined> = Promise.resolve(undefined);
  #resolveDisconnected: ((error: Error | undefined) => void) | undefined;

  constructor(options: QmpClientOptions = {}) {
    this.#options = {
      commandTimeoutMs: options.commandTimeoutMs ?? DEFAULTS.commandTimeoutMs,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULTS.connectTimeoutMs,
      maxEventQueue: options.maxEventQueue ?? DEFAULTS.maxEventQueue,
      maxMessageBytes: options.maxMessageBytes ?? DEFAULTS.maxMessageBytes,
      transport: options.transport ?? connectUnixSocket,
    };
  }

  /** Creates a client and connects it: greeting, then `qmp_capabilities`. */
  static async connect(socketPath: string, options: ConnectOptions & QmpClientOptions = {}): Promise<QmpClient> {
    const client = new QmpClient(options);
    await client.connect(socketPath, options);
    return client;
  }

  get runState(): QmpRunState {
    return this.#state;
  }

  /** The greeting of the current (or last) connection. Throws before the first connect. */
  get greeting(): QmpGreeting {
    if (!this.#greeting) throw new QmpDisconnectedError('QMP client has never been connected');
    return this.#greeting;
  }

  /** Settles when the current connection ends; the value is the error that ended it, if any. */
  get disconnected(): Promise<Error | undefined> {
    return this.#disconnected;
  }

  /** Observes run-state changes. Returns an unsubscribe function. */
  onRunStateChange(listener: (state: QmpRunState) => void): () => void {
    this.#stateListeners.add(listener);
    return () => this.#stateListeners.delete(listener);
  }

  async connect(socketPath: string, options: ConnectOptions = {}): Promise<void> {
    if (this.#state !== 'idle') throw new QmpProtocolError(`connect() while ${this.#state}`);
    const timeoutMs = options.timeoutMs ?? this.#options.connectTimeoutMs;
    const deadline = AbortSignal.timeout(timeoutMs);
    const signal = options.signal ? AbortSignal.any([options.signal, deadline]) : deadline;
    this.#setState('connecting');
    this.#rx = '';
    this.#decoder = new StringDecoder('utf8');
    this.#disconnected = new Promise((resolve) => {
      this.#resolveDisconnected = resolve;
    });

    const fail = (error: Error): never => {
      this.#teardown(error);
      if (options.signal?.aborted) throw new QmpAbortedError('connect', options.signal.reason);
      if (error instanceof QmpError) throw error;
      if (deadline.aborted) {
        throw new QmpBusyError(socketPath, `no QMP greeting within ${timeoutMs} ms (is another client connected?)`);
      }
      // A full backlog: QEMU is there, busy with another client.
      if ((error as { code?: unknown }).code === 'EAGAIN') throw new QmpBusyError(socketPath, error.message, { cause: error });
      throw new QmpConnectError(socketPath, error.message, { cause: error });
    };

    try {
      this.#transport = await this.#options.transport(socketPath, signal);
    } catch (error) {
      return fail(error instanceof Error ? error : new Error(String(error)));
    }

    try {
      const greeting = await new Promise<Message>((resolve, reject) => {
        const onAbort = (): void => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
        signal.addEventListener('abort', onAbort, { once: true });
        this.#onGreeting = (message) => {
          signal.removeEventListener('abort', onAbort);
          resolve(message);
        };
        this.#disconnected.then((error) => {
          signal.removeEventListener('abort', onAbort);
          reject(error ?? new Error('connection closed before the QMP greeting'));
        });
        this.#transport?.start({
          onData: (chunk) => this.#onData(chunk),
          onClose: (error) => this.#onTransportClose(error),
        });
      });
      this.#greeting = parseGreeting(greeting);
      await this.#call('qmp_capabilities', undefined, { signal, timeoutMs });
    } catch (error) {
      return fail(error instanceof Error ? error : new Error(String(error)));
    }
    this.#setState('running');
  }

  /**
   * Runs one QMP command and returns its `return` value.
   *
   * @throws {QmpCommandError} QEMU answered with an error (class and desc kept).
   * @throws {QmpTimeoutError} no answer within the deadline.
   * @throws {QmpDisconnectedError} not connected, or the connection went while waiting.
   * @throws {QmpAbortedError} `signal` fired.
   */
  async execute<T = unknown>(command: string, args?: Record<string, unknown>, options: ExecuteOptions = {}): Promise<T> {
    if (this.#state !== 'running') {
      throw new QmpDisconnectedError(`QMP ${command}: client is ${this.#state}`, { command });
    }
    return (await this.#call(command, args, options)) as T;
  }

  /** Passes `fd` to QEMU with `add-fd`. The caller may close its own copy afterwards. */
  async addFd(fd: number, options: AddFdOptions = {}): Promise<AddFdResult> {
    const args: Record<string, unknown> = {};
    if (options.fdsetId !== undefined) args['fdset-id'] = options.fdsetId;
    if (options.opaque !== undefined) args['opaque'] = options.opaque;
    const { signal, timeoutMs } = options;
    const result = await this.execute<{ 'fdset-id': number; fd: number }>('add-fd', args, { signal, timeoutMs, fds: [fd] });
    return { fdsetId: result['fdset-id'], fd: result.fd };
  }

  /** Removes one fd, or the whole fdset when `fd` is absent. */
  async removeFd(fdsetId: number, fd?: number, options: Omit<ExecuteOptions, 'fds'> = {}): Promise<void> {
    const args: Record<string, unknown> = { 'fdset-id': fdsetId };
    if (fd !== undefined) args['fd'] = fd;
    await this.execute('remove-fd', args, options);
  }

  /** Passes `fd` to QEMU under `name` with `getfd` (for commands that take an fd name). */
  async getfd(name: string, fd: number, options: Omit<ExecuteOptions, 'fds'> = {}): Promise<void> {
    await this.execute('getfd', { fdname: name }, { ...options, fds: [fd] });
  }

  /**
   * Subscribes to events from now on. Each call gets its own bounded queue;
   * a slow consumer loses its oldest events (see {@link QmpEventStream.dropped}),
   * never anyone else's.
   */
  events(options: EventStreamOptions = {}): QmpEventStream {
    const stream = new QmpEventStream({ maxQueue: this.#options.maxEventQueue, ...options }, (s) => this.#listeners.delete(s));
    if (this.#state === 'idle' || this.#state === 'disconnecting') stream.end();
    else if (!stream.ended) this.#listeners.add(stream);
    return stream;
  }

  /** Closes the connection. Pending calls fail as interrupted. Idempotent. */
  async close(): Promise<void> {
    if (this.#state === 'idle') return;
    this.#teardown(undefined);
    await this.#disconnected;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #call(command: string, args: Record<string, unknown> | undefined, options: ExecuteOptions): Promise<unknown> {
    const fds = options.fds;
    if (!fds || fds.length === 0) return this.#send(command, args, options);
    // QEMU keeps only the fds of the latest message carrying any, and takes them
    // when it dispatches add-fd/getfd: two fd-carrying commands in flight could
    // get each other's fd (or a closed one). Serialize them.
    const run = this.#fdLock.then(() => this.#send(command, args, options));
    this.#fdLock = run.catch(() => undefined);
    return run;
  }

  #send(command: string, args: Record<string, unknown> | undefined, options: ExecuteOptions): Promise<unknown> {
    const transport = this.#transport;
    if (!transport || this.#state === 'idle' || this.#state === 'disconnecting') {
      return Promise.reject(new QmpDisconnectedError(`QMP ${command}: client is ${this.#state}`, { command }));
    }
    const { signal } = options;
    if (signal?.aborted) return Promise.reject(new QmpAbortedError(command, signal.reason));
    const timeoutMs = options.timeoutMs ?? this.#options.commandTimeoutMs;
    const id = `vmsave-${this.#nextId++}`;
    const message: Message = { execute: command, id };
    if (args !== undefined) message['arguments'] = args;
    const line = Buffer.from(`${JSON.stringify(message)}\n`, 'utf8');

    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = (): void => settle(new QmpAbortedError(command, signal?.reason));
      const settle = (error: Error | undefined, value?: unknown): void => {
        if (!this.#pending.delete(id)) return;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        if (error) reject(error);
        else resolve(value);
      };
      this.#pending.set(id, {
        command,
        args,
        resolve: (value) => settle(undefined, value),
        reject: (error) => settle(error),
      });
      timer = setTimeout(() => settle(new QmpTimeoutError(command, timeoutMs)), timeoutMs);
      signal?.addEventListener('abort', onAbort, { once: true });
      transport.write(line, options.fds).catch((error: unknown) => {
        settle(new QmpDisconnectedError(`QMP ${command}: write failed`, { command, interrupted: true, cause: error }));
      });
    });
  }

  #onData(chunk: Buffer): void {
    this.#rx += this.#decoder.write(chunk);
    for (let newline = this.#rx.indexOf('\n'); newline >= 0; newline = this.#rx.indexOf('\n')) {
      const line = this.#rx.slice(0, newline).trim();
      this.#rx = this.#rx.slice(newline + 1);
      if (line.length > 0) this.#onLine(line);
      if (this.#state === 'idle' || this.#state === 'disconnecting') return;
    }
    if (this.#rx.length > this.#options.maxMessageBytes) {
      this.#teardown(new QmpProtocolError(`QMP message longer than ${this.#options.maxMessageBytes} bytes`, this.#rx));
    }
  }

  #onLine(line: string): void {
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch (error) {
      this.#teardown(new QmpProtocolError('QEMU sent invalid JSON', line, { cause: error }));
      return;
    }
    if (!isObject(message)) {
      this.#teardown(new QmpProtocolError('QEMU sent a non-object message', line));
      return;
    }
    if (this.#onGreeting) {
      const onGreeting = this.#onGreeting;
      this.#onGreeting = undefined;
      if (!isObject(message['QMP'])) {
        this.#teardown(new QmpProtocolError('expected the QMP greeting', line));
        return;
      }
      onGreeting(message);
      return;
    }
    if (typeof message['event'] === 'string') {
      const event = message as unknown as QmpEvent;
      if (!isObject(event.data)) event.data = {};
      for (const listener of this.#listeners) listener.push(event);
      return;
    }
    const id = message['id'];
    const pending = typeof id === 'string' ? this.#pending.get(id) : undefined;
    if (!pending) {
      // A reply to a call that already timed out or was aborted: drop it. An
      // error without an id means QEMU could not parse what we sent: the
      // stream is no longer trustworthy.
      if (id === undefined && isObject(message['error'])) {
        this.#teardown(new QmpProtocolError('QEMU rejected a message it could not attribute', line));
      }
      return;
    }
    if ('return' in message) {
      pending.resolve(message['return']);
    } else if (isObject(message['error'])) {
      const error = message['error'];
      pending.reject(new QmpCommandError(pending.command, pending.args, String(error['class'] ?? 'GenericError'), String(error['desc'] ?? '')));
    } else {
      pending.reject(new QmpProtocolError(`reply to ${pending.command} has neither return nor error`, line));
    }
  }

  #onTransportClose(error: Error | undefined): void {
    const reason = this.#state === 'disconnecting' ? undefined : new QmpDisconnectedError('QMP connection lost', error === undefined ? {} : { cause: error });
    this.#teardown(reason);
  }

  #teardown(error: Error | undefined): void {
    if (this.#state === 'idle' || this.#state === 'disconnecting') return;
    this.#setState('disconnecting');
    this.#onGreeting = undefined;
    const transport = this.#transport;
    this.#transport = undefined;
    transport?.close();
    for (const [, pending] of this.#pending) {
      pending.reject(
        new QmpDisconnectedError(`QMP ${pending.command} interrupted: ${error?.message ?? 'client closed'}`, {
          command: pending.command,
          interrupted: true,
          cause: error,
        }),
      );
    }
    this.#pending.clear();
    for (const listener of [...this.#listeners]) listener.end();
    this.#listeners.clear();
    this.#resolveDisconnected?.(error);
    this.#resolveDisconnected = undefined;
    this.#setState('idle');
  }

  #setState(state: QmpRunState): void {
    if (this.#state === state) return;
    this.#state = state;
    for (const listener of this.#stateListeners) listener(state);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseGreeting(message: Message): QmpGreeting {
  const qmp = message['QMP'];
  const version = isObject(qmp) ? qmp['version'] : undefined;
  const qemu = isObject(version) ? version['qemu'] : undefined;
  if (!isObject(qmp) || !isObject(version) || !isObject(qemu)) {
    throw new QmpProtocolError('malformed QMP greeting', JSON.stringify(message));
  }
  return {
    version: {
      qemu: { major: Number(qemu['major']), minor: Number(qemu['minor']), micro: Number(qemu['micro']) },
      package: String(version['package'] ?? ''),
    },
    capabilities: Array.isArray(qmp['capabilities']) ? qmp['capabilities'].map(String) : [],
  };
}
