/**
 * What a command is (its name, help and options) and the helpers that read its parsed options.
 * `cli.ts` imports the commands, the commands import this module, never the other way.
 */
import type { ParseArgsConfig } from 'node:util';
import type { Ctx } from './context.ts';
import { UsageError } from './errors.ts';

export type Options = NonNullable<ParseArgsConfig['options']>;
export type Values = Record<string, string | boolean | string[] | undefined>;
export type Run = (ctx: Ctx, values: Values, positionals: string[]) => Promise<number>;

export interface Command {
  name: string;
  summary: string;
  usage: string;
  /** Option lines for --help: [flag, description]; a function when they need a module loaded first. */
  help: [string, string][] | (() => Promise<[string, string][]>);
  options: Options;
  positionals?: { min: number; max: number; names: string };
  run: Run;
}

/**
 * A `run` whose implementation module is imported on first use, so that `--help` and the
 * usage errors load no NATS, Redis, QEMU or image code. `settings: false` for a command that
 * never reads `ctx.cfg` (then the bus settings module is not loaded either).
 *
 * @example
 * run: lazy(() => import('../run/bus.ts'), (m) => m.save),
 */
export function lazy<M>(load: () => Promise<M>, pick: (m: M) => Run, opts: { settings?: boolean } = {}): Run {
  return async (ctx, values, positionals) => {
    const [m] = await Promise.all([load(), ctx.prepare(opts)]);
    return pick(m)(ctx, values, positionals);
  };
}

export const str = (v: Values, k: string): string | undefined => (typeof v[k] === 'string' ? (v[k] as string) : undefined);
export const bool = (v: Values, k: string): boolean => v[k] === true;

export function int(v: Values, k: string, range: { min: number; max: number }): number | undefined {
  const s = str(v, k);
  if (s === undefined) return undefined;
  if (!/^-?\d+$/.test(s)) throw new UsageError(`--${k} needs a whole number, got "${s}"`);
  const n = Number(s);
  if (n < range.min || n > range.max) throw new UsageError(`--${k} must be between ${range.min} and ${range.max}, got ${n}`);
  return n;
}

export function oneOf<T extends string>(v: Values, k: string, allowed: readonly T[]): T | undefined {
  const s = str(v, k);
  if (s === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(s)) throw new UsageError(`--${k} must be one of ${allowed.join(', ')}, got "${s}"`);
  return s as T;
}
