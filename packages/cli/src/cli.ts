/**
 * The `vmsave` command: argument parsing, dispatch, and the one place that maps errors to
 * one line on stderr and an exit code (see errors.ts).
 */
import { parseArgs } from 'node:util';
import { CliError, EXIT, UsageError, oneLine } from './errors.ts';
import type { Ctx } from './context.ts';
import type { Command, Values } from './options.ts';
import { busCommands } from './commands/bus.ts';
import { imageCommands } from './commands/image.ts';
import { vmCommands } from './commands/vm.ts';
import { demoCommand } from './commands/demo.ts';
import { imagesCommands } from './commands/images.ts';
import { imagesManageCommands } from './commands/images-manage.ts';

export const commands: Command[] = [...busCommands, ...imagesCommands, ...imagesManageCommands, ...imageCommands, ...vmCommands, demoCommand];

/** Commands that have sub-commands: `vm list`, `images prune` (`images` alone is a command too). */
const GROUPS = new Set(['vm', 'images']);

function find(argv: string[]): { cmd?: Command; rest: string[]; name: string } {
  const [first, second] = argv;
  if (first && GROUPS.has(first) && second && !second.startsWith('-')) {
    const name = `${first} ${second}`;
    return { cmd: commands.find((c) => c.name === name), rest: argv.slice(2), name };
  }
  return { cmd: commands.find((c) => c.name === first), rest: argv.slice(1), name: first ?? '' };
}

export function mainHelp(): string {
  const w = Math.max(...commands.map((c) => c.name.length));
  return [
    'usage: vmsave <command> [options]   (vmsave <command> --help for details)',
    '',
    'commands:',
    ...commands.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`),
    '',
    'global: --json (machine-readable output), --help',
    `exit codes: ${EXIT.ok} ok, ${EXIT.error} error, ${EXIT.usage} usage, ${EXIT.rejected} rejected (admission rule or failed check), ${EXIT.failed} job failed or cancelled, ${EXIT.unreachable} bus unreachable or no answer`,
    '',
  ].join('\n');
}

export async function commandHelp(c: Command): Promise<string> {
  const help = typeof c.help === 'function' ? await c.help() : c.help;
  const w = Math.max(0, ...help.map(([f]) => f.length));
  return [
    `usage: vmsave ${c.usage}`,
    '',
    c.summary,
    '',
    ...(help.length ? ['options:', ...help.map(([f, d]) => `  ${f.padEnd(w)}  ${d}`)] : []),
    `  ${'--json'.padEnd(w)}  machine-readable output on stdout`,
    `  ${'--help'.padEnd(w)}  this text`,
    '',
  ].join('\n');
}

/** Run one command line; returns the exit code (never throws). */
export async function run(argv: string[], ctx: Ctx): Promise<number> {
  const { cmd, rest, name } = find(argv);
  try {
    if (!name || name === '--help' || name === '-h' || name === 'help') {
      ctx.stdout.write(mainHelp());
      return name ? EXIT.ok : EXIT.usage;
    }
    if (!cmd)
      throw new UsageError(
        GROUPS.has(name)
          ? `${name}: give a sub-command (${commands
              .filter((c) => c.name.startsWith(`${name} `))
              .map((c) => c.name.split(' ')[1])
              .join(', ')})`
          : `unknown command "${name}" (try vmsave --help)`,
      );
    let parsed: { values: unknown; positionals: string[] };
    try {
      parsed = parseArgs({ args: rest, options: { ...cmd.options, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
    } catch (err) {
      throw new UsageError(`${cmd.name}: ${(err as Error).message.split('\n')[0]!.replace(/\. To specify a positional.*$/, '')}`);
    }
    const values = parsed.values as Values;
    if (values.help) {
      ctx.stdout.write(await commandHelp(cmd));
      return EXIT.ok;
    }
    ctx.json = values.json === true;
    const p = cmd.positionals ?? { min: 0, max: 0, names: '' };
    if (parsed.positionals.length < p.min) throw new UsageError(`${cmd.name}: missing ${p.names} (usage: vmsave ${cmd.usage})`);
    if (parsed.positionals.length > p.max) throw new UsageError(`${cmd.name}: unexpected argument "${parsed.positionals[p.max]}" (usage: vmsave ${cmd.usage})`);
    return await cmd.run(ctx, values, parsed.positionals);
  } catch (err) {
    ctx.progress?.clear();
    const e = err instanceof CliError ? err : new CliError((err as Error)?.message ?? String(err), EXIT.error, { cause: err });
    if (ctx.json)
      ctx.stdout.write(`${JSON.stringify({ error: { message: oneLine(e.message), exitCode: e.exitCode, kind: e.name, ...('rule' in e && e.rule ? { rule: e.rule } : {}) } })}\n`);
    ctx.stderr.write(`vmsave: ${oneLine(e.message)}\n`);
    if (ctx.env.VMSAVE_DEBUG && err instanceof Error && err.stack) ctx.stderr.write(`${err.stack}\n`);
    return e.exitCode;
  } finally {
    await ctx.close();
  }
}
