import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { HostAnnouncement, messages, subjects } from '@vmsave/contracts';
import { publishCore, publishValidated } from '@vmsave/bus';
import { createDashboard } from '../src/index.ts';
import { GiB, publishAll, quiet, saveJob, startDashboard, uniq, type Harness } from './helpers.ts';
import { startPrivateNats } from './private-nats.ts';

const CHROMIUM = '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`skipping the browser test: no Chromium at ${CHROMIUM} (install Debian's chromium package)`);

const artifacts = fileURLToPath(new URL('../test-results/', import.meta.url));

let h: Harness;
let nats: Awaited<ReturnType<typeof startPrivateNats>>;
let context: BrowserContext;
let page: Page;
let profile: string;
let base: string;
const token = uniq('browser-test-token');
const pageErrors: string[] = [];
const host = uniq('hv');
/** Poll the page: some of it refreshes on a debounce after events. No timing is asserted. */
const poll = <T>(fn: () => Promise<T>, opts: { timeout?: number } = {}) => expect.poll(fn, { timeout: 15_000, ...opts });

describe.skipIf(!haveChromium)('the dashboard page in headless Chromium', () => {
  beforeAll(async () => {
    // This test asserts each state of its jobs, so it keeps the log to itself when it can.
    nats = await startPrivateNats();
    if (!nats) console.warn('no nats-server on PATH: the browser test uses the shared NATS, where running services may act on its jobs');
    h = await startDashboard({ token }, { natsUrl: nats?.url });
    await h.app.listen({ host: '127.0.0.1', port: 0 });
    const addr = h.app.server.address();
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
    await h?.bus.jsm.streams.purge('VMSAVE_HOSTS', { filter: subjects.host(host) }).catch(() => undefined);
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await h?.close();
    await nats?.stop();
  });

  it('shows a save live from request to verified, with its progress and checks, without a reload', async () => {
    const vm = uniq('web');
    // Some history first: a failure and a rejection to find under their tab, and a host.
    const failed = saveJob(uniq('db'), host);
    const rejected = saveJob(vm, host);
    const done = saveJob(uniq('cache'), host);
    await publishAll(h.bus, [
      done.requested(),
      done.scheduled(),
      done.started(),
      done.completed(),
      done.verified(),
      failed.requested(),
      failed.scheduled(),
      failed.started(),
      failed.failed('qemu: Unable to write to file: No space left on device'),
    ]);
    await publishValidated(
      h.bus,
      messages.hostAnnouncement,
      subjects.host(host),
      HostAnnouncement.parse({
        host,
        executorId: `executor@${host}`,
        at: new Date().toISOString(),
        startedAt: new Date().toISOString(),
        qemu: { version: '10.1.0', mappedRam: true, directIo: true, machines: ['q35'], accel: 'kvm' },
        imageDir: '/var/lib/vmsave',
        freeBytes: 412 * GiB,
        maxConcurrentJobs: 2,
        vms: [],
      }),
    );

    await page.goto(`${base}/?token=${token}`);
    await page.locator('#live[data-state="live"]').waitFor();
    await page.locator(`tr[data-job-id="${failed.jobId}"]`).waitFor();

    const job = saveJob(vm, host);
    const row = page.locator(`tr[data-job-id="${job.jobId}"]`);
    await publishAll(h.bus, [rejected.requested(), rejected.rejected(), job.requested()]);
    await row.waitFor();
    await poll(() => row.locator('.c-state').textContent()).toBe('requested');

    await publishAll(h.bus, [job.scheduled(), job.started()]);
    await poll(() => row.locator('.c-state').textContent()).toBe('running');
    await poll(() => row.locator('.c-host').textContent()).toBe(host);

    // Progress: the bar's value moves as samples arrive.
    const total = 4 * GiB;
    const bar = row.locator('.c-progress progress');
    const sample = (frac: number) =>
      publishCore(h.bus, messages.progress, subjects.progress(job.jobId), {
        jobId: job.jobId,
        at: new Date().toISOString(),
        host,
        stage: 'migrate',
        status: 'active',
        totalBytes: total,
        transferredBytes: total * frac,
        remainingBytes: total * (1 - frac),
        bytesPerSec: 1.7 * GiB,
        etaMs: (((1 - frac) * total) / (1.7 * GiB)) * 1000,
      });
    // The IDL value reflects to the attribute; no attribute means indeterminate.
    const barValue = async () => Number((await bar.getAttribute('value')) ?? 0);
    sample(0.2);
    await poll(async () => {
      sample(0.2);
      return barValue();
    }).toBeGreaterThan(0);
    const early = await barValue();
    await poll(async () => {
      sample(0.65);
      return barValue();
    }).toBeGreaterThan(early);
    await poll(() => row.locator('.c-progress span').textContent()).toMatch(/65% · 1\.70 GiB\/s · ETA/);

    // The detail view follows the job live.
    await row.click();
    await page.locator('#detail:not([hidden])').waitFor();
    await poll(() => page.locator('#detail .timeline li').count()).toBe(3);
    await poll(() => page.locator('#detail-progress span').textContent()).toMatch(/65%/);
    await poll(() => page.locator(`#hosts tr[data-host="${host}"] .c-load`).textContent()).toBe('1 running + 0 queued / 2');
    await poll(() => page.locator('#summary').textContent()).toMatch(/^1 running/);
    await page.screenshot({ path: join(artifacts, 'dashboard-running.png'), fullPage: true });

    await publishAll(h.bus, [job.completed(), job.verified()]);
    await poll(() => row.locator('.c-state').textContent()).toBe('verified');
    await poll(() => row.locator('.c-image').textContent()).toMatch(/4\.00 GiB \/ 1\.50 GiB \(37%\)/);
    const checks = page.locator('#detail table.checks tbody tr');
    await poll(() => checks.count()).toBe(4);
    expect(await checks.locator('td:first-child').allTextContents()).toEqual(['header.magic', 'descriptor.checksum', 'format.compatibility', 'sparseness']);
    expect(await page.locator('#detail tr[data-check="sparseness"]').textContent()).toMatch(/warn.*37% of the logical size allocated/);
    expect(await page.locator('#detail .timeline .what').allTextContents()).toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified']);
    expect(await page.locator('#detail .facts').textContent()).toContain('verified');
    await page.screenshot({ path: join(artifacts, 'dashboard.png'), fullPage: true });

    // Failures and rejections are one click away, with their reasons.
    await page.locator('#detail-close').click();
    await page.locator('.tabs button[data-tab="problems"]').click();
    await poll(() => page.locator(`tr[data-job-id="${job.jobId}"]`).count()).toBe(0);
    const reasons = page.locator('#jobs tbody td.reason');
    await poll(() => page.locator('#problems-count').textContent()).toBe('2');
    await poll(() => reasons.allTextContents()).toEqual(
      expect.arrayContaining(['migrate · ENOSPC: qemu: Unable to write to file: No space left on device', `one-job-per-vm: VM ${vm} already has a job in progress`]),
    );
    // The host shows its load and limit.
    await poll(() => page.locator(`#hosts tr[data-host="${host}"] .c-load`).textContent()).toBe('0 running + 0 queued / 2');
    await page.screenshot({ path: join(artifacts, 'dashboard-failures.png'), fullPage: true });

    expect(pageErrors).toEqual([]);
  });

  it('after the server restarts, the open page reconnects with Last-Event-ID and shows every job published meanwhile', async () => {
    const port = Number(new URL(base).port);
    const vm = uniq('gap');
    const jobs = Array.from({ length: 4 }, () => saveJob(vm, host));
    await h.app.close(); // drops the page's stream
    await poll(() => page.locator('#live').getAttribute('data-state')).toBe('reconnecting');
    await publishAll(
      h.bus,
      jobs.flatMap((j, i) => (i % 2 ? [j.requested(), j.rejected()] : [j.requested(), j.scheduled()])),
    );

    h.app = await createDashboard({ bus: h.bus, redis: h.redis, prefix: h.prefix, token, log: quiet, progressThrottleMs: 100 });
    await h.app.listen({ host: '127.0.0.1', port });
    await poll(() => page.locator('#live').getAttribute('data-state')).toBe('live');
    await page.locator('.tabs button[data-tab="all"]').click();
    for (const [i, j] of jobs.entries()) {
      await poll(() => page.locator(`tr[data-job-id="${j.jobId}"] .c-state`).textContent()).toBe(i % 2 ? 'rejected' : 'scheduled');
    }
    expect(pageErrors.filter((e) => !/ERR_CONNECTION_REFUSED|net::/.test(e))).toEqual([]);
  });

  it('stays usable with 1,000 jobs: one page of rows in the DOM, paging, and live updates in place', async () => {
    const vm = uniq('many');
    const jobs = Array.from({ length: 1000 }, () => saveJob(vm, host));
    for (let i = 0; i < jobs.length; i += 100) {
      await Promise.all(jobs.slice(i, i + 100).map((j) => publishAll(h.bus, [j.requested()])));
    }
    await page.goto(`${base}/?token=${token}`);
    await page.locator('#filters input[name="vm"]').fill(vm);
    await poll(() => page.locator('#range').textContent()).toBe('1–50 of 1,000');
    expect(await page.locator('#jobs tbody tr').count()).toBe(50);

    // A job on the page changes: its row is updated, not re-created.
    const newest = page.locator('#jobs tbody tr').first();
    const id = (await newest.getAttribute('data-job-id'))!;
    await newest.evaluate((tr) => ((tr as unknown as { dataset: Record<string, string> }).dataset.marker = 'same-element'));
    const j = jobs.find((x) => x.jobId === id)!;
    await publishAll(h.bus, [j.scheduled(), j.started()]);
    await poll(() => page.locator(`tr[data-job-id="${id}"] .c-state`).textContent()).toBe('running');
    expect(await page.locator(`tr[data-job-id="${id}"]`).getAttribute('data-marker')).toBe('same-element');

    await page.locator('#next').click();
    await poll(() => page.locator('#range').textContent()).toBe('51–100 of 1,000');
    expect(await page.locator('#jobs tbody tr').count()).toBe(50);
    expect(pageErrors).toEqual([]);
  });
});
