/**
 * docker-compose.yml checked statically (no Docker engine needed): every build context,
 * Dockerfile and target exists, every command runs a service's built main.js, the images hold
 * the pruned tree with production dependencies only, every variable a service is given is one
 * it reads, secrets come only from what `npm run setup` generates, and the executor gets
 * /dev/kvm and the image directory.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { BusEnv } from '@vmsave/bus';
import { metricsEnv } from '@vmsave/metrics';
import { REPO_ROOT, NATS_CONF } from '@vmsave/infra/servers';
import { passwordVar, roles, type Role } from '@vmsave/infra/permissions';

interface ComposeService {
  image?: string;
  build?: { context: string; dockerfile?: string; target?: string };
  command?: string[];
  environment?: Record<string, string | number>;
  volumes?: string[];
  devices?: string[];
  privileged?: boolean;
}
interface Compose {
  services: Record<string, ComposeService>;
}

const text = readFileSync(join(REPO_ROOT, 'docker-compose.yml'), 'utf8');
const compose = parse(text, { merge: true }) as Compose;
const NODE_SERVICES = ['scheduler', 'verifier', 'dashboard', 'executor'] as const;
const APP_DIR = '/app';

/** Source, target and mode of a short volume syntax; `${VAR:-default}` in the source stays whole. */
function volumeParts(v: string): { source: string; target: string; mode?: string } {
  const vars: string[] = [];
  const masked = v.replace(/\$\{[^}]*\}/g, (m) => `\u0000${vars.push(m) - 1}\u0000`);
  // biome-ignore lint/suspicious/noControlCharactersInRegex: NUL is the marker put around each masked ${…} above; it never occurs in a volume string
  const [source, target, mode] = masked.split(':').map((p) => p.replace(/\u0000(\d+)\u0000/g, (_m, i: string) => vars[Number(i)]!));
  return { source: source!, target: target!, mode };
}

/** Variables a service reads: the shared bus ones, its own config.ts schema, the log level. */
function varsRead(service: string): Set<string> {
  const config = readFileSync(join(REPO_ROOT, 'services', service, 'src', 'config.ts'), 'utf8');
  const own = [...config.matchAll(/^\s*([A-Z][A-Z0-9_]+):\s*z\s*\./gm)].map((m) => m[1]!);
  return new Set([...Object.keys(BusEnv.shape), ...Object.keys(metricsEnv('scheduler')), ...own, 'VMSAVE_LOG_LEVEL']);
}

/** The secrets infra/setup.sh generates into .vmsave/env. */
function generatedSecrets(): Set<string> {
  const setup = readFileSync(join(REPO_ROOT, 'infra', 'setup.sh'), 'utf8');
  const loop = /for key in ([\s\S]*?); do/.exec(setup);
  return new Set((loop?.[1] ?? '').split(/[\s\\]+/).filter(Boolean));
}

describe('docker-compose.yml', () => {
  it('has NATS, Redis, the scheduler, the verifier, the dashboard, an executor, Prometheus and (profile grafana) Grafana', () => {
    expect(Object.keys(compose.services).sort()).toEqual(['dashboard', 'executor', 'grafana', 'nats', 'prometheus', 'redis', 'scheduler', 'verifier']);
  });

  it('builds every vmsave service from a Dockerfile and target that exist, on node:20-bookworm', () => {
    for (const name of NODE_SERVICES) {
      const b = compose.services[name]!.build;
      expect(b, name).toBeDefined();
      const context = join(REPO_ROOT, b!.context);
      expect(statSync(context).isDirectory(), name).toBe(true);
      const dockerfile = join(context, b!.dockerfile ?? 'Dockerfile');
      expect(existsSync(dockerfile), `${name}: ${b!.dockerfile}`).toBe(true);
      const df = readFileSync(dockerfile, 'utf8');
      expect(df).toMatch(/^ARG NODE_IMAGE=node:20-bookworm$/m);
      if (b!.target) expect(df, `${name}: target ${b!.target}`).toMatch(new RegExp(`^FROM \\S+ AS ${b!.target}$`, 'm'));
      // Every file the Dockerfile copies from the context exists.
      for (const m of df.matchAll(/^COPY (?!--from)(\S+) /gm)) expect(existsSync(join(context, m[1]!)), m[1]).toBe(true);
      expect(existsSync(`${dockerfile}.dockerignore`)).toBe(true);
    }
  });

  it("runs each service's own built main.js from the pruned tree (the image's /app)", () => {
    for (const name of NODE_SERVICES) {
      const cmd = compose.services[name]!.command!;
      // The scheduler runs with V8's single-threaded GC (docs/scheduler.md: parallel GC paused it for seconds under a burst).
      expect(cmd).toEqual(['node', ...(name === 'scheduler' ? ['--single-threaded-gc'] : []), `services/${name}/dist/main.js`]);
      // dist/ is built in the image: what exists here is the source it is compiled from.
      expect(existsSync(join(REPO_ROOT, 'services', name, 'src', 'main.ts')), name).toBe(true);
      const build = JSON.parse(readFileSync(join(REPO_ROOT, 'services', name, 'tsconfig.build.json'), 'utf8')) as { compilerOptions: { rootDir: string; outDir: string } };
      expect(build.compilerOptions, name).toMatchObject({ rootDir: 'src', outDir: 'dist' });
    }
    const df = readFileSync(join(REPO_ROOT, 'infra/docker/vmsave.Dockerfile'), 'utf8');
    expect(df).toContain(`WORKDIR ${APP_DIR}`);
  });

  it('builds in a stage with dev dependencies and runs the pruned tree with production dependencies only', () => {
    const df = readFileSync(join(REPO_ROOT, 'infra/docker/vmsave.Dockerfile'), 'utf8');
    const stages = new Map<string, string>();
    for (const part of df.split(/^(?=FROM )/m).slice(1)) stages.set(/^FROM \S+ AS (\S+)$/m.exec(part)![1]!, part);
    const build = stages.get('build')!;
    expect(build).toMatch(/^RUN npm ci --no-audit --no-fund$/m);
    expect(build).toMatch(/^RUN npm run build$/m);
    expect(build).toMatch(/^RUN bash infra\/prod-tree\.sh \/prod$/m);
    expect(readFileSync(join(REPO_ROOT, 'infra/prod-tree.sh'), 'utf8')).toMatch(/turbo prune .*--production/);
    const runtime = stages.get('runtime')!;
    expect(runtime).toContain('COPY --from=build /prod /app');
    expect(runtime).toMatch(/^RUN npm ci --omit=dev /m);
    for (const target of ['service', 'executor']) {
      const stage = stages.get(target)!;
      expect(stage, target).toContain('COPY --from=runtime /app /app');
      expect(stage, target).not.toContain('--from=build');
      expect(stage, target).toMatch(/^CMD \["node", (?:"--single-threaded-gc", )?"services\/[a-z]+\/dist\/main\.js"\]$/m);
    }
    // Comments aside, nothing runs TypeScript.
    expect(
      df
        .split('\n')
        .filter((l) => !l.startsWith('#'))
        .join('\n'),
    ).not.toMatch(/--import|tsx/);
  });

  it('sets only variables the services read, and connects each as its own NATS role', () => {
    for (const name of NODE_SERVICES) {
      const env = compose.services[name]!.environment!;
      const read = varsRead(name);
      for (const key of Object.keys(env)) expect(read.has(key), `${name} does not read ${key}`).toBe(true);
      expect(env.NATS_URL).toBe('nats://nats:4222');
      expect(env.NATS_USER).toBe(name);
      expect(String(env.NATS_PASS)).toMatch(new RegExp(`^\\$\\{${passwordVar(name as Role)}:\\?`));
      expect(String(env.REDIS_URL)).toMatch(/^redis:\/\/:\$\{VMSAVE_REDIS_PASS:\?[^}]*\}@redis:6379$/);
    }
  });

  it('gives NATS the role config and every role password, Redis its config and password', () => {
    const nats = compose.services.nats!;
    expect(nats.command).toEqual(expect.arrayContaining(['-c', '/etc/nats/nats.conf', '-js', '-sd']));
    expect(nats.volumes).toContain('./infra/nats/nats.conf:/etc/nats/nats.conf:ro');
    const conf = readFileSync(NATS_CONF, 'utf8');
    expect(Object.keys(nats.environment!).sort()).toEqual(roles.map(passwordVar).sort());
    for (const key of Object.keys(nats.environment!)) expect(conf).toContain(`$${key}`);

    const redis = compose.services.redis!;
    expect(redis.volumes).toContain('./infra/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro');
    expect(Object.keys(redis.environment!)).toEqual(['VMSAVE_REDIS_PASS']);
    expect(redis.command!.join(' ')).toContain('requirepass');
  });

  it('mounts only repository files that exist', () => {
    for (const [name, s] of Object.entries(compose.services)) {
      for (const v of s.volumes ?? []) {
        const src = volumeParts(v).source;
        if (src.startsWith('./infra/')) expect(existsSync(join(REPO_ROOT, src)), `${name}: ${src}`).toBe(true);
      }
    }
  });

  it('takes every secret from the variables infra/setup.sh generates, and holds none itself', () => {
    const secrets = generatedSecrets();
    expect(secrets.size).toBeGreaterThanOrEqual(7);
    const required = [...text.matchAll(/\$\{([A-Z0-9_]+):\?/g)].map((m) => m[1]!);
    expect(required.length).toBeGreaterThan(0);
    for (const v of required) expect(secrets.has(v), `${v} is not generated by setup`).toBe(true);
    for (const s of secrets) if (/PASS|TOKEN/.test(s)) expect(text).not.toMatch(new RegExp(`${s}:\\s*[A-Za-z0-9]{16,}\\s*$`, 'm'));
  });

  it('gives the executor /dev/kvm, the image directory it writes and the QMP directory', () => {
    const ex = compose.services.executor!;
    expect(ex.devices ?? []).toContain('/dev/kvm:/dev/kvm');
    const mounts = (ex.volumes ?? []).map((v) => volumeParts(v).target);
    expect(mounts).toContain(String(ex.environment!.VMSAVE_IMAGE_DIR));
    expect(mounts).toContain(String(ex.environment!.VMSAVE_QMP_DIR));
    expect(mounts).toContain(String(ex.environment!.VMSAVE_STATE_DIR));
    // The verifier reads images at the same path, read-only.
    const imageMount = ex.volumes!.map(volumeParts).find((m) => m.target === ex.environment!.VMSAVE_IMAGE_DIR)!;
    expect(compose.services.verifier!.volumes!.map(volumeParts)).toContainEqual({ source: imageMount.source, target: imageMount.target, mode: 'ro' });
  });

  it('installs QEMU in the executor image from backports derived from the base image, naming no archive host', () => {
    const df = readFileSync(join(REPO_ROOT, 'infra/docker/vmsave.Dockerfile'), 'utf8');
    const script = readFileSync(join(REPO_ROOT, 'infra/docker/add-backports.sh'), 'utf8');
    expect(df).toMatch(/vmsave-add-backports/);
    expect(df).toMatch(/apt-get install -y -t "\$\{VERSION_CODENAME\}-backports" qemu-system-x86 qemu-utils/);
    for (const t of [df, script, text]) expect(t).not.toMatch(/https?:\/\/[a-z0-9.-]*(debian|ubuntu)[a-z0-9.-]*/i);
  });
});
