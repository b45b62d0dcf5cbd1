// Only types at the top: this module is loaded for `--help` too, which must not load NATS code.
import type { Bus } from '@vmsave/bus';
import type { VmsaveClient } from '@vmsave/client';
import type { CliConfig, loadCliConfig } from './config.ts';
import { UnreachableError } from './errors.ts';
import type { ProgressBar } from './terminal.ts';

/** What `prepare()` loaded: the modules behind the synchronous `cfg` and `bar()`. */
let settings: typeof loadCliConfig | undefined;
let Bar: typeof ProgressBar | undefined;

/**
 * What a command gets: its output streams, environment, and a bus connected on first use.
 * A command's `run` sees it after `prepare()` (the `lazy` wrapper in options.ts calls it).
 */
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

  /**
   * Load what `cfg` and `bar()` need (once per process; the settings are parsed on the first
   * `cfg`). `settings: false` skips the settings module, which pulls in the NATS client, for
   * commands that read no settings (inspect, verify).
   */
  async prepare(opts: { settings?: boolean } = {}): Promise<void> {
    const [config, terminal] = await Promise.all([opts.settings === false || settings ? undefined : import('./config.ts'), Bar ? undefined : import('./terminal.ts')]);
    settings ??= config?.loadCliConfig;
    Bar ??= terminal?.ProgressBar;
  }

  get cfg(): CliConfig {
    if (!settings) throw new Error('Ctx.cfg read before prepare() (or by a command declared without settings)');
    this.cfg_ ??= settings(this.env);
    return this.cfg_;
  }

  get signal(): AbortSignal {
    return this.ac.signal;
  }

  /** A progress bar on stderr (drawn only when stderr is a TTY and output is not --json). */
  bar(): ProgressBar {
    if (!Bar) throw new Error('Ctx.bar() before prepare()');
    this.progress ??= new Bar(this.stderr);
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
    await this.prepare();
    const { Bus, busOptions } = await import('@vmsave/bus');
    const c = this.cfg;
    const connect = (user?: string, pass?: string) =>
      withTimeout(Bus.connect({ ...busOptions(c, 'vmsave-cli'), ...(user ? { user, pass } : {}) }), 10_000, `NATS at ${c.NATS_URL} did not answer within 10 s`);
    // With no NATS_USER but the set-up's client password (.vmsave/env), connect as `client` first:
    // trying anonymously first would cost the server an authentication error on every run. A NATS
    // without users ignores the credentials; one whose users differ refuses them, and then the
    // anonymous connection is tried.
    const asClient = !c.NATS_USER && !!c.VMSAVE_NATS_PASS_CLIENT;
    const [first, second] = asClient
      ? ([
          ['client', c.VMSAVE_NATS_PASS_CLIENT],
          [undefined, undefined],
        ] as const)
      : ([[c.NATS_USER, c.NATS_PASS], undefined] as const);
    try {
      this.bus_ = await connect(first[0], first[1]);
    } catch (err) {
      const auth = /authoriz|authentic/i.test(String((err as Error)?.message));
      if (auth && second) {
        try {
          this.bus_ = await connect(second[0], second[1]);
        } catch (err2) {
          throw new UnreachableError(`cannot connect to NATS at ${c.NATS_URL} as client or anonymously: ${(err2 as Error).message} (set NATS_USER/NATS_PASS)`, { cause: err2 });
        }
      } else {
        throw new UnreachableError(`cannot connect to NATS at ${c.NATS_URL}${asClient ? ' as client' : ''}: ${(err as Error).message}${auth ? ' (set NATS_USER/NATS_PASS)' : ''}`, {
          cause: err,
        });
      }
    }
    return this.bus_;
  }

  async client(): Promise<VmsaveClient> {
    const [{ VmsaveClient }, bus] = await Promise.all([import('@vmsave/client'), this.bus()]);
    return new VmsaveClient(bus);
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
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new UnreachableError(message)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
