/** An asynchronous QMP event, as QEMU sends it. */
export interface QmpEvent<D = Record<string, unknown>> {
  event: string;
  data: D;
  timestamp: { seconds: number; microseconds: number };
}

export interface EventStreamOptions {
  /** Only these event names (exact, upper case as QEMU sends them). All when absent. */
  names?: readonly string[];
  /** Ends the stream (the iterator then reports done). */
  signal?: AbortSignal;
  /** Queue bound for this listener; when full, the oldest queued event is dropped. Default 256. */
  maxQueue?: number;
}

/**
 * One listener's view of the event stream: a bounded queue filled by the
 * client and drained by `for await`. It never throws; it ends (done) when the
 * client disconnects, when `signal` fires, or when the consumer breaks.
 */
export class QmpEventStream implements AsyncIterableIterator<QmpEvent> {
  readonly #names: ReadonlySet<string> | undefined;
  readonly #maxQueue: number;
  readonly #queue: QmpEvent[] = [];
  #waiter: ((result: IteratorResult<QmpEvent>) => void) | undefined;
  #ended = false;
  #dropped = 0;
  readonly #onEnd: (stream: QmpEventStream) => void;
  readonly #signal: AbortSignal | undefined;
  readonly #onAbort = (): void => this.end();

  /** @internal Created by {@link QmpClient.events}. */
  constructor(options: EventStreamOptions, onEnd: (stream: QmpEventStream) => void) {
    this.#names = options.names ? new Set(options.names) : undefined;
    this.#maxQueue = Math.max(1, options.maxQueue ?? 256);
    this.#onEnd = onEnd;
    this.#signal = options.signal;
    if (this.#signal?.aborted) this.end();
    else this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** Events dropped because this listener's queue was full. */
  get dropped(): number {
    return this.#dropped;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** @internal Called by the client for every event received. */
  push(event: QmpEvent): void {
    if (this.#ended) return;
    if (this.#names && !this.#names.has(event.event)) return;
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter({ value: event, done: false });
      return;
    }
    if (this.#queue.length >= this.#maxQueue) {
      this.#queue.shift();
      this.#dropped++;
    }
    this.#queue.push(event);
  }

  /** Stops the stream; queued events are still delivered before it reports done. */
  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#onEnd(this);
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<QmpEvent>> {
    const queued = this.#queue.shift();
    if (queued) return Promise.resolve({ value: queued, done: false });
    if (this.#ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => {
      this.#waiter = resolve;
    });
  }

  return(): Promise<IteratorResult<QmpEvent>> {
    this.#queue.length = 0;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<QmpEvent> {
    return this;
  }
}
