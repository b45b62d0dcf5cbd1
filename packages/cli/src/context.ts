import { Bus, busOptions } from '@vmsave/bus';
import { VmsaveClient } from './client.ts';
import { loadCliConfig, type CliConfig } from './config.ts';
import { UnreachableError } from './errors.ts';
import { ProgressBar } from './format.ts';

/** What a command gets: its output streams, environment, and a bus connected on first use. */
export class Ctx {
  json = false;
  progress?: ProgressBar;
  private bus_?: Bus;
  private cfg_?: CliConfig;
  readonly cleanups: (() => Promise<void> | void)[] = [];
  readonly ac = new AbortController();

  constructor(
    readonly stdout: NodeJS.WritableStream,
    readonly stderr: NodeJS.WriteStream,
    readonly env: Record<string, string | undefined> = process.env,
  ) {}

  get cfg(): CliConfig {
    this.cfg_ ??= loadCliConfig(this.env);
    return this.cfg_;
  }

  get signal(): AbortSignal {
    return this.ac.signal;
  }

  /** A progress bar on stderr (drawn only when stderr is a TTY and output is not --json). */
  bar(): ProgressBar {
    this.progress ??= new ProgressBar(this.stderr);
    return this.progress;
  }

  get tty(): boolean {
    return this.stderr.isTTY === true && !this.json;
  }

  /** Print a human line on stdout (suppressed under --json). */
  say(line: string): void {
    if (!this.json) this.stdout.write(`${line}\n`);
  }

  /** Print a JSON document on stdout (only under --json). */
  emit(doc: unknown): void {
    if (this.json) this.stdout.write(`${JSON.stringify(doc)}\n`);
  }

  /** A note for people on stderr (never under --json's stdout). */
  note(line: string): void {
    this.progress?.clear();
    this.stderr.write(`${line}\n`);
  }

  async bus(): Promise<Bus> {
    if (this.bus_) return this.bus_;
    const c = this.cfg;
    const connect = (user?: string, pass?: string) =>
      withTimeout(Bus.connect({ ...busOptions(c, 'vmsave-cli'), ...(user ? { user, pass } : {}) }), 10_000, `NATS at ${c.NATS_URL} did not answer within 10 s`);
    try {
      this.bus_ = await connect(c.NATS_USER, c.NATS_PASS);
    } catch (err) {
      const auth = /authoriz|authentic/i.test(String((err as Error)?.message));
      if (auth && !c.NATS_USER && c.VMSAVE_NATS_PASS_CLIENT) {
        try {
          this.bus_ = await connect('client', c.VMSAVE_NATS_PASS_CLIENT);
        } catch (err2) {
          throw new UnreachableError(`cannot connect to NATS at ${c.NATS_URL} as client: ${(err2 as Error).message}`, { cause: err2 });
        }
      } else {
        throw new UnreachableError(`cannot connect to NATS at ${c.NATS_URL}: ${(err as Error).message}${auth ? ' (set NATS_USER/NATS_PASS)' : ''}`, { cause: err });
      }
    }
    return this.bus_;
  }

  async client(): Promise<VmsaveClient> {
    return new VmsaveClient(await this.bus());
  }

  async close(): Promise<void> {
    for (const c of this.cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
    this.cleanups.length = 0;
    await this.bus_?.close().catch(() => undefined);
    this.bus_ = undefined;
  }
}

export async function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new UnreachableError(message)), ms); })]);
  } finally {
    clearTimeout(timer);
  }
}
