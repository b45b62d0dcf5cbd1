import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type { Redis } from 'ioredis';
import type { FastifyInstance } from 'fastify';
import { DrainRequest, drainIdFor, makeEvent, streams } from '@vmsave/contracts';
import { Bus } from '@vmsave/bus';
import { connectRedis, Projection } from '@vmsave/store';
import { testUrls } from '@vmsave/testkit';
import { createDashboard } from '../src/index.ts';
import { seedJobs, seedVm } from './seed.ts';
import { publishAll, quiet, saveJob, uniq } from './helpers.ts';
import { startPrivateNats } from './private-nats.ts';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`skipping the 100k browser test: no Chromium at ${CHROMIUM} (install Debian's chromium package)`);
const artifacts = fileURLToPath(new URL('../test-results/', import.meta.url));
const JOBS = 100_000;

let nats: Awaited<ReturnType<typeof startPrivateNats>>;
let bus: Bus;
let redis: Redis;
let projection: Projection;
let app: FastifyInstance;
let context: BrowserContext;
let page: Page;
let profile: string;
let base: string;
const prefix = uniq('dash-100k');
const token = uniq('scale-token');
const pageErrors: string[] = [];
const poll = <T>(fn: () => Promise<T>, opts: { timeout?: number } = {}) => expect.poll(fn, { timeout: 30_000, ...opts });
const api = async <T>(q: string): Promise<T> => (await (await fetch(`${base}/api/jobs?${q}`, { headers: { authorization: `Bearer ${token}` } })).json()) as T;
const range = () => page.locator('#range').textContent();
const column = (name: string) => page.locator(`#jobs tbody td.c-${name}`).allTextContents();

describe.skipIf(!haveChromium)('the dashboard page with 100,000 jobs in the read model', () => {
  beforeAll(async () => {
    // Its own log (the burst must reach no other suite) and its own Redis prefix.
    nats = await startPrivateNats();
    const urls = await testUrls();
    bus = await Bus.connect({ servers: nats?.url ?? urls.natsUrl, name: 'dashboard-scale-test' });
    await bus.ensureStreams();
    redis = await connectRedis(urls.redisUrl);
    projection = new Projection(redis, prefix);
    // 100k jobs through the real projection; the live log starts after its current end.
    const last = (await bus.jsm.streams.info(streams.events.name)).state.last_seq;
    await seedJobs(redis, prefix, { jobs: JOBS, resetSeqTo: last });
    app = await createDashboard({ bus, redis, prefix, token, log: quiet, progressThrottleMs: 100 });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const addr = app.server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
    mkdirSync(artifacts, { recursive: true });
    profile = mkdtempSync(join(tmpdir(), 'vmsave-dashboard-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1600, height: 1000 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (err) => pageErrors.push(err.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });
  });
  afterAll(async () => {
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await app?.close();
    await projection?.clear();
    redis?.disconnect();
    await bus?.close();
    await nats?.stop();
  });

  it('loads, filters by state and by VM, pages, and shows a live burst of 2,000 events without stalling', async () => {
    await page.goto(`${base}/?token=${token}`);
    await page.locator('#live[data-state="live"]').waitFor();
    await poll(range).toBe('1–50 of 100,000');
    expect(await page.locator('#jobs tbody tr').count()).toBe(50);

    // By state: the server's count, every row in that state, the count beside the option.
    const failed = (await api<{ total: number }>('state=failed&limit=1')).total;
    expect(failed).toBeGreaterThan(1000);
    await page.locator('#filters select[name="state"]').selectOption('failed');
    await poll(range).toBe(`1–50 of ${failed.toLocaleString('en')}`);
    expect(new Set(await column('state'))).toEqual(new Set(['failed']));
    expect(await page.locator('#filters select[name="state"] option[value="failed"]').textContent()).toBe(`failed (${failed.toLocaleString('en')})`);
    await page.locator('#next').click();
    await poll(range).toBe(`51–100 of ${failed.toLocaleString('en')}`);
    expect(new Set(await column('state'))).toEqual(new Set(['failed']));

    // By VM, with any state.
    await page.locator('#filters select[name="state"]').selectOption('');
    const vm = seedVm(42);
    const ofVm = (await api<{ total: number }>(`vm=${vm}&limit=1`)).total;
    expect(ofVm).toBeGreaterThan(0);
    await page.locator('#filters input[name="vm"]').fill(vm);
    await poll(range).toBe(`1–${Math.min(50, ofVm)} of ${ofVm}`);
    expect(new Set(await column('vm'))).toEqual(new Set([vm]));

    // All jobs again, next page.
    await page.locator('#filters input[name="vm"]').fill('');
    await poll(range).toBe('1–50 of 100,000');
    await page.locator('#next').click();
    await poll(range).toBe('51–100 of 100,000');
    await page.locator('#prev').click();
    await poll(range).toBe('1–50 of 100,000');

    // The burst: 1,000 new jobs, requested then scheduled, while the page counts its frames.
    // (This file has no DOM types: the page's globals are typed here.)
    type PageGlobals = { beats: number; requestAnimationFrame(cb: () => void): number };
    await page.evaluate(() => {
      const w = globalThis as unknown as PageGlobals;
      w.beats = 0;
      const tick = () => {
        w.beats++;
        w.requestAnimationFrame(tick);
      };
      w.requestAnimationFrame(tick);
    });
    const beats = () => page.evaluate(() => (globalThis as unknown as PageGlobals).beats);
    const burstVm = uniq('burst');
    const host = uniq('hv');
    const jobs = Array.from({ length: 1000 }, () => saveJob(burstVm, host));
    const samples: number[] = [await beats()];
    for (let i = 0; i < jobs.length; i += 100) {
      await Promise.all(jobs.slice(i, i + 100).map((j) => publishAll(bus, [j.requested(), j.scheduled()])));
      samples.push(await beats());
    }
    // The newest job of the burst shows at the top, scheduled, and the count follows.
    const newest = jobs.at(-1)!;
    await poll(() => page.locator(`tr[data-job-id="${newest.jobId}"] .c-state`).textContent()).toBe('scheduled');
    await poll(range).toBe('1–50 of 101,000');
    samples.push(await beats());
    // The page kept painting frames through the burst: the counter moved between every two samples.
    for (let i = 1; i < samples.length; i++) expect(samples[i]!, `frames between samples ${i - 1} and ${i}: ${samples.join(', ')}`).toBeGreaterThan(samples[i - 1]!);
    // And it still answers: a filter right after the burst.
    await page.locator('#filters input[name="vm"]').fill(burstVm);
    await poll(range).toBe('1–50 of 1,000');
    expect(new Set(await column('state'))).toEqual(new Set(['scheduled']));
    await page.locator('#filters input[name="vm"]').fill('');
    await poll(range).toBe('1–50 of 101,000');
    await page.screenshot({ path: join(artifacts, 'dashboard-100k.png'), fullPage: true });
    expect(pageErrors).toEqual([]);
  });

  it('shows a host drain as one row with its VMs beneath, following it live', async () => {
    const host = uniq('drained');
    const vms = [uniq('dvm'), uniq('dvm'), uniq('dvm')];
    const request = DrainRequest.parse({ requestId: uniq('drain'), host, to: 'any' });
    const drainId = drainIdFor(request.requestId);
    const src = { source: 'dashboard-test' };
    const save = (i: number) => saveJob(vms[i]!, host);
    const saves = [save(0), save(1), save(2)];
    await page.locator('#filters select[name="kind"]').selectOption('drain');
    await publishAll(bus, [
      makeEvent('DrainRequested', drainId, { request, vms }, src),
      ...vms.map((vm, i) => makeEvent('DrainVmUpdated', drainId, { vm, phase: 'saving', saveJobId: saves[i]!.jobId }, src)),
    ]);
    const row = page.locator(`tr[data-job-id="${drainId}"]`);
    // The first poll after the 100k test's burst: the projection may still be catching up on a loaded machine.
    await poll(() => row.locator('.c-state').textContent(), { timeout: 90_000 }).toBe('running');
    expect(await row.locator('.c-vm').textContent()).toBe('3 VMs');
    expect(await row.locator('.c-host').textContent()).toBe(`${host} → any`);
    const beneath = page.locator(`tr.drain-vms[data-drain-id="${drainId}"] li`);
    await poll(() => beneath.count()).toBe(3);
    await publishAll(bus, [makeEvent('DrainVmUpdated', drainId, { vm: vms[0]!, phase: 'saved', saveJobId: saves[0]!.jobId, imagePath: 'x.vmsave' }, src)]);
    await poll(() => page.locator(`tr.drain-vms[data-drain-id="${drainId}"] li[data-vm="${vms[0]}"] .badge`).textContent()).toBe('saved');
    await poll(() => row.locator('.c-progress span').textContent()).toBe('1 saved · 2 saving');
    expect(await page.locator(`tr.drain-vms[data-drain-id="${drainId}"] li[data-vm="${vms[1]}"] a`).getAttribute('href')).toBe(`#job=${saves[1]!.jobId}`);
    // The kind filter lists only the drain; its detail lists the VMs too.
    await poll(range).toBe('1–1 of 1');
    await row.click();
    await poll(() => page.locator('#detail table.drain-detail tbody tr').count()).toBe(3);
    await page.screenshot({ path: join(artifacts, 'dashboard-drain.png'), fullPage: false });
    await page.locator('#detail-close').click();
    expect(pageErrors).toEqual([]);
  });
});
