import { createRequire } from 'node:module';

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

/** The default transport: a unix stream socket through the `usocket` native addon. */
export const connectUnixSocket: TransportFactory = (socketPath, signal) => {
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
