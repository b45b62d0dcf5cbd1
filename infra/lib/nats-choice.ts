/**
 * Which NATS `npm start` uses: a pure decision from what answered at NATS_URL, so every branch
 * has a unit test (test/infra/start-env.unit.spec.ts). start.ts probes, asks, and acts.
 *
 * | what answers at the URL              | NATS_URL explicit     | default URL (unset)                    |
 * |--------------------------------------|-----------------------|----------------------------------------|
 * | nothing, on loopback                 | private server there  | private server there                   |
 * | nothing, another machine             | refuse                | (cannot happen: the default is local)  |
 * | a NATS with users                    | use it (roles / user) | use it (roles / user)                  |
 * | a NATS accepting anonymous clients   | refuse                | private server on the next port        |
 * | … and `--insecure`                   | use it, warn loudly   | use it, warn loudly                    |
 *
 * A NATS that accepts a connection without user and password enforces no role: any client can
 * read every command, forge verdicts, purge the event log. Running the stack on it silently is
 * what `--insecure` must be asked for.
 */

/** The NATS_URL every service and the CLI use when none is set. */
export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';

/** What a connection without credentials to a NATS got. */
export type NatsProbe =
  /** Nothing accepts TCP connections there. */
  | { kind: 'none' }
  /** Connected without user or password: no role is enforced. */
  | { kind: 'anonymous' }
  /** Refused for lack of credentials: a server with users. */
  | { kind: 'auth' }
  /** Something answers but the probe failed otherwise (TLS required, not a NATS, …). */
  | { kind: 'error'; message: string };

export interface NatsChoiceInput {
  /** The URL probed (redacted in messages by the caller if needed). */
  url: string;
  /** NATS_URL was set (environment or `.vmsave/env`), not the default. */
  explicit: boolean;
  probe: NatsProbe;
  /** `npm start -- --insecure`. */
  insecure: boolean;
  /** The first server of the URL is this machine (a private server may be started there). */
  loopback: boolean;
  /** NATS_USER is set: every service connects as that user. */
  natsUser: boolean;
  /** Every role's generated password is known (`.vmsave/env`). */
  rolePasswords: boolean;
  /** Set when this URL is already the fallback for an anonymous NATS at `fallbackFrom`. */
  fallbackFrom?: string;
}

export type NatsChoice =
  /** Use the server; each service as its role with the generated passwords. */
  | { action: 'use-roles' }
  /** Use the server with whatever NATS_USER / NATS_PASS the environment has. */
  | { action: 'use-env' }
  /** Use an anonymous server because `--insecure` was given: warn once, loudly. */
  | { action: 'use-insecure' }
  /** Start a private nats-server with the generated roles on this URL's (loopback) port. */
  | { action: 'start-private' }
  /** The default URL is an anonymous NATS: try `url` (vmsave's own NATS, the next port) instead. */
  | { action: 'fallback'; url: string }
  /** Stop with this message (why, and how to proceed). */
  | { action: 'refuse'; message: string };

/** The URL of vmsave's own NATS when the default port holds an anonymous one: the next port on loopback. */
export function fallbackNatsUrl(port: number): string {
  return `nats://127.0.0.1:${port + 1}`;
}

/** See the table at the top of this module. `port` is the first server's port. */
export function chooseNats(input: NatsChoiceInput, port: number): NatsChoice {
  const { url, probe } = input;
  switch (probe.kind) {
    case 'none':
      if (!input.loopback) return { action: 'refuse', message: `nothing answers at NATS_URL ${url}, and it is not this machine: start NATS there or fix NATS_URL` };
      return { action: 'start-private' };
    case 'auth':
    case 'error':
      return !input.natsUser && input.rolePasswords && probe.kind === 'auth' ? { action: 'use-roles' } : { action: 'use-env' };
    case 'anonymous':
      if (input.insecure) return { action: 'use-insecure' };
      if (input.fallbackFrom !== undefined) {
        return {
          action: 'refuse',
          message:
            `the NATS at ${input.fallbackFrom} accepts anonymous clients, and so does the one at ${url} where npm start would run its own: ` +
            'stop one of them, or set NATS_URL to a free loopback port (npm start then runs a NATS with one user per role there), ' +
            'or pass --insecure (npm start -- --insecure) to run without any role enforced',
        };
      }
      if (!input.explicit) return { action: 'fallback', url: fallbackNatsUrl(port) };
      return {
        action: 'refuse',
        message:
          `the NATS at NATS_URL ${url} accepts clients without user or password, so no role is enforced: any client could read every command, forge verdicts and purge the event log. ` +
          "Give it vmsave's users (infra/nats/nats.conf, docs/operations.md), or point NATS_URL at a free loopback port (or unset it) and npm start runs a NATS with one user per role, " +
          'or pass --insecure (npm start -- --insecure) to use it anyway',
      };
  }
}

/** The boxed warning `--insecure` prints once on stderr. */
export function insecureWarning(url: string): string {
  const lines = [
    'WARNING: RUNNING WITHOUT NATS AUTHENTICATION (--insecure)',
    '',
    `The NATS at ${url} accepts clients without user or password.`,
    'No role is enforced: any client that reaches it can read every',
    'command, publish forged events and verdicts, and purge or delete',
    'the streams. Use this only on a machine you alone can reach.',
    'Without --insecure, npm start refuses such a NATS (docs/operations.md).',
  ];
  const width = Math.max(...lines.map((l) => l.length));
  const bar = `+${'-'.repeat(width + 2)}+`;
  return [bar, ...lines.map((l) => `| ${l.padEnd(width)} |`), bar].join('\n');
}
