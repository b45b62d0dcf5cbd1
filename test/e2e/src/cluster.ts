import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { waitFor } from '@vmsave/testkit';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const answers = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

/** A three-node NATS cluster with JetStream on loopback ports, for fault tests. */
export class NatsCluster {
  readonly nodes: Array<{ name: string; port: number; clusterPort: number; dir: string; proc?: ChildProcess }> = [];
  private constructor(readonly dir: string) {}

  static async start(dir: string, size = 3): Promise<NatsCluster> {
    const c = new NatsCluster(dir);
    // freePort may hand out a port it gave before (it is free again once probed): keep them distinct.
    const taken = new Set<number>();
    const distinctPort = async (): Promise<number> => {
      for (;;) {
        const p = await freePort();
        if (!taken.has(p)) {
          taken.add(p);
          return p;
        }
      }
    };
    for (let i = 0; i < size; i++) c.nodes.push({ name: `n${i + 1}`, port: await distinctPort(), clusterPort: await distinctPort(), dir: path.join(dir, `n${i + 1}`) });
    for (let i = 0; i < size; i++) await c.startNode(i);
    await waitFor(
      'the cluster to elect a JetStream meta leader',
      async () => {
        const { Bus } = await import('@vmsave/bus');
        const bus = await Bus.connect({ servers: c.url, name: 'cluster-probe' });
        try {
          await bus.jsm.getAccountInfo();
          return true;
        } finally {
          await bus.close();
        }
      },
      60_000,
      500,
    );
    return c;
  }

  get url(): string {
    return this.nodes.map((n) => `nats://127.0.0.1:${n.port}`).join(',');
  }

  async startNode(i: number): Promise<void> {
    const n = this.nodes[i]!;
    await mkdir(n.dir, { recursive: true });
    const routes = this.nodes
      .filter((o) => o !== n)
      .map((o) => `nats://127.0.0.1:${o.clusterPort}`)
      .join(',');
    // One node is a plain server with file storage; more form a cluster.
    const clusterArgs = this.nodes.length > 1 ? ['--cluster_name', 'vmsave-test', '--cluster', `nats://127.0.0.1:${n.clusterPort}`, '--routes', routes] : [];
    // The server's own log goes next to its store, so a node that does not come up says why.
    const log = path.join(n.dir, 'server.log');
    n.proc = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'nats-server', '-a', '127.0.0.1', '-p', String(n.port), '-js', '-sd', n.dir, '-n', n.name, '-l', log, ...clusterArgs], {
      stdio: 'ignore',
    });
    await waitFor(`NATS node ${n.name}`, () => answers(n.port), 20_000, 100).catch(async (err: Error) => {
      const tail = (await readFile(log, 'utf8').catch(() => '')).split('\n').slice(-8).join('\n');
      throw new Error(`${err.message}; its log ends:\n${tail}`);
    });
  }

  async killNode(i: number): Promise<void> {
    const p = this.nodes[i]!.proc;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGKILL');
    await gone;
  }

  async stop(): Promise<void> {
    for (let i = 0; i < this.nodes.length; i++) await this.killNode(i);
  }
}
