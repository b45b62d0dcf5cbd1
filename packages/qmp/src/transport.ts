import { createRequire } from 'node:module';
import net from 'node:net';

/**
 * A byte stream to QEMU that can carry file descriptors (SCM_RIGHTS) with a
 * write. The QMP client knows nothing else about sockets; the native module
 * lives only behind this interface.
 */
export interface QmpTransport {
  /** Writes `data`; `fds` travel as ancillary data on the same sendmsg as the first byte of `data`. */
  write(data: Buffer, fds?: readonly number[]): Promise<void>;
  /** Starts delivering. Called once, after the transport is connected. */
  start(handlers: TransportHandlers): void;
  /** Closes the socket. `onClose` still fires (once). */
  close(): void;
}

export interface TransportHandlers {
  onData(chunk: Buffer): void;
  /** Fires exactly once: EOF, error, or close(). */
  onClose(error?: Error): void;
}

/** Opens a transport to a unix socket path. Rejects on ENOENT/ECONNREFUSED etc. */
export type TransportFactory = (socketPath: string, signal?: AbortSignal) => Promise<QmpTransport>;

interface USocketLike {
  connect(path: string): void;
  write(chunk: { data?: Buffer; fds?: number[] }, callback?: (err?: Error | null) => void): boolean;
  on(event: string, listener: (...args: unknown[]) => void): this;
  once(event: string, listener: (...args: unknown[]) => void): this;
  removeAllListeners(event?: string): this;
  resume(): this;
  destroy(): void;
  fd?: number;
}

interface USocketModule {
  USocket: new () => USocketLike;
}

let usocketModule: USocketModule | undefined;

function loadUsocket(): USocketModule {
  // Loaded lazily so that pure users of the package (and unit tests with a fake
  // transport) never load the native addon.
  usocketModule ??= createRequire(import.meta.url)('usocket') as USocketModule;
  return usocketModule;
}

/**
 * HAZARD (usocket 1.1.0): its native wrapper embeds the uv_poll handle and calls uv_close on
 * it in close() and in its GC destructor; if the wrapper is collected before libuv runs the
 * close, libuv touches freed memory and the process aborts (`uv__finish_close: Assertion`).
 * So every native wrapper we saw connected is kept reachable here until well after it closed.
 */
const graveyard = new Set<unknown>();
const GRAVE_MS = 2_000;

function bury(wrap: unknown): void {
  if (!wrap) return;
  graveyard.add(wrap);
  setTimeout(() => graveyard.delete(wrap), GRAVE_MS).unref();
}

class UsocketTransport implements QmpTransport {
  #socket: USocketLike;
  /** The native wrapper, held so it outlives its own close (see `graveyard`). */
  #wrap: unknown;
  #handlers: TransportHandlers | undefined;
  #closed = false;
  #closeError: Error | undefined;

  constructor(socket: USocketLike) {
    this.#socket = socket;
    this.#wrap = (socket as { _wrap?: unknown })._wrap;
    // usocket emits 'error' then 'close' on failure, but only 'end' on EOF
    // (it emits 'close' at EOF only after our own shutdown). Any of them ends us.
    socket.on('error', (err) => this.#finish(err instanceof Error ? err : new Error(String(err))));
    socket.on('end', () => this.#finish());
    socket.on('close', () => this.#finish());
  }

  start(handlers: TransportHandlers): void {
    this.#handlers = handlers;
    if (this.#closed) {
      handlers.onClose(this.#closeError);
      return;
    }
    // HAZARD: a 'data' listener switches the stream to flowing mode, which calls
    // into the native wrapper; before 'connected' that trips a native assertion
    // and aborts the process. start() is only reachable after 'connected'.
    this.#socket.on('data', (chunk) => {
      if (Buffer.isBuffer(chunk)) this.#handlers?.onData(chunk);
    });
  }

  write(data: Buffer, fds?: readonly number[]): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('socket closed'));
    return new Promise((resolve, reject) => {
      const chunk = fds && fds.length > 0 ? { data, fds: [...fds] } : { data };
      this.#socket.write(chunk, (err) => (err ? reject(err) : resolve()));
    });
  }

  close(): void {
    this.#finish();
  }

  #finish(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeError = error;
    this.#socket.destroy();
    bury(this.#wrap);
    this.#wrap = undefined;
    this.#handlers?.onClose(error);
  }
}

/**
 * Connects with Node's own (non-blocking, cancellable) socket and resolves once QEMU greets on it,
 * then closes it. Rejects with the socket's error (ENOENT, ECONNREFUSED, EAGAIN for a full
 * backlog) or the signal's reason.
 */
function probeGreeting(socketPath: string, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath);
    const done = (error?: unknown): void => {
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (error === undefined) resolve();
      else reject(error);
    };
    const onAbort = (): void => done(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let text = '';
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('utf8');
      if (text.includes('{"QMP"')) done();
    });
    socket.once('error', (err) => done(err));
    socket.once('close', () => done(new Error('QEMU closed the connection before greeting')));
  });
}

/**
 * The default transport: a unix stream socket through the `usocket` native addon.
 *
 * HAZARD: usocket connects with a blocking connect() on a libuv pool thread. When QEMU serves
 * another client its backlog (1) fills, and a blocking connect waits until that client leaves,
 * forever if it never does; a few such waits take the whole pool, and with it every fs call of
 * the process. So Node's own socket asks first: only a QEMU that greeted (and so had room) gets
 * the native connect.
 */
export const connectUnixSocket: TransportFactory = async (socketPath, signal) => {
  await probeGreeting(socketPath, signal);
  return connectUsocket(socketPath, signal);
};

const connectUsocket: TransportFactory = (socketPath, signal) => {
  const { USocket } = loadUsocket();
  return new Promise<QmpTransport>((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const socket = new USocket();
    let aborted = false;
    const onAbort = (): void => {
      // HAZARD: destroying the socket while the native connect is still in
      // flight frees what its completion callback uses. Settle now, close the
      // socket when the connect outcome arrives.
      aborted = true;
      reject(signal?.reason);
    };
    const cleanup = (): void => {
      signal?.removeEventListener('abort', onAbort);
      socket.removeAllListeners('connected');
      socket.removeAllListeners('error');
    };
    socket.once('connected', () => {
      cleanup();
      if (aborted) {
        const wrap = (socket as { _wrap?: unknown })._wrap;
        socket.destroy();
        bury(wrap);
      } else resolve(new UsocketTransport(socket));
    });
    socket.once('error', (err) => {
      cleanup();
      reject(err);
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.connect(socketPath);
  });
};
