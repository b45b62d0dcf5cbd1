/**
 * The bus calls the metrics hooks where things really happen, against a private nats-server:
 * an appended event, a redelivered message, a dead letter, and a reconnect after the server restarts.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { Bus, ack, createLogger, nak, publishEvent, runConsumer, term } from '@vmsave/bus';
import { makeEvent, streams, subjects } from '@vmsave/contracts';
import { answers, freePort, waitFor } from '@vmsave/testkit';
import { ServiceMetrics, sampleValue } from '../src/index.ts';

let dir: string;
let port: number;
let server: ChildProcess | undefined;
let bus: Bus;
const metrics = new ServiceMetrics('executor');
const log = createLogger('metrics-test', { level: 'silent' });

async function startServer(): Promise<void> {
  server = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', dir], { stdio: 'ignore' });
  await waitFor('the private nats-server', () => answers(port), 20_000, 100);
}
async function stopServer(): Promise<void> {
  const s = server;
  if (!s || s.exitCode !== null) return;
  const gone = new Promise((r) => s.once('exit', r));
  s.kill('SIGKILL');
  await gone;
}
const value = async (name: string, labels: Record<string, string> = {}) => sampleValue(await metrics.text(), name, labels);

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'vmsave-metrics-bus-'));
  port = await freePort();
  await startServer();
  bus = await Bus.connect({ servers: `nats://127.0.0.1:${port}`, name: 'metrics-test', log, metrics: metrics.bus });
  await bus.ensureStreams();
});
afterAll(async () => {
  await bus?.close();
  await stopServer();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the bus metrics hooks on a real NATS', () => {
  it('an appended event counts once; the same event again (a duplicate the server drops) does not', async () => {
    const e = makeEvent('SaveRejected', 's-metrics-1', { rule: 'vm-exists', message: 'no such VM' }, { source: 'scheduler' });
    await publishEvent(bus, e);
    await publishEvent(bus, e);
    expect(await value('vmsave_events_published_total', { type: 'SaveRejected' })).toBe(1);
    expect(await value('vmsave_admissions_total', { kind: 'save', outcome: 'rejected', rule: 'vm-exists' })).toBe(1);
  });

  it('a nak-ed message redelivered counts one redelivery; a refused one one stored dead letter', async () => {
    const ac = new AbortController();
    const seen: number[] = [];
    const done = runConsumer(bus, {
      stream: streams.work.name,
      durable: 'metrics-test',
      filterSubject: subjects.work('metrics-host'),
      schema: z.object({ n: z.number() }),
      service: 'metrics-test',
      log,
      signal: ac.signal,
      handler: async (m, ctx) => {
        seen.push(m.n);
        if (m.n === 1) return ctx.deliveryCount === 1 ? nak(0) : ack();
        return term('refused by the test');
      },
    });
    await bus.js.publish(subjects.work('metrics-host'), JSON.stringify({ n: 1 }));
    await waitFor('the redelivery', async () => (await value('vmsave_bus_redeliveries_total')) >= 1, 20_000, 100);
    await bus.js.publish(subjects.work('metrics-host'), JSON.stringify({ n: 2 }));
    await waitFor('the dead letter', async () => (await value('vmsave_bus_dead_letters_total')) >= 1, 20_000, 100);
    ac.abort();
    await done;
    expect(seen).toEqual([1, 1, 2]);
    expect(await value('vmsave_bus_redeliveries_total', { stream: streams.work.name, consumer: 'metrics-test' })).toBe(1);
    expect(await value('vmsave_bus_dead_letters_total', { stored: 'true' })).toBe(1);
    expect(await value('vmsave_bus_dead_letters_total', { stored: 'false' })).toBe(0);
  });

  it('a server restart counts one disconnect and one reconnect, and connected goes 0 then 1', async () => {
    expect(await value('vmsave_bus_connected')).toBe(1);
    await stopServer();
    await waitFor('the disconnect', async () => (await value('vmsave_bus_disconnects_total')) === 1, 20_000, 100);
    expect(await value('vmsave_bus_connected')).toBe(0);
    await startServer();
    await waitFor('the reconnect', async () => (await value('vmsave_bus_reconnects_total')) === 1, 30_000, 100);
    expect(await value('vmsave_bus_connected')).toBe(1);
    expect(await value('vmsave_bus_disconnects_total')).toBe(1);
  });
});
