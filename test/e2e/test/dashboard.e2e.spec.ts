import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { chromium, type BrowserContext } from 'playwright-core';
import { makePattern, patternVm, uniq, waitFor, MiB } from '@vmsave/testkit';
import { REPO, Stack } from '../src/index.ts';

const CHROMIUM = '/usr/bin/chromium';
let stack: Stack;
let context: BrowserContext | undefined;
let profile = '';
let port = 0;
const vm = uniq('dash').replace(/[^A-Za-z0-9_-]/g, '');

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(p));
    });
  });
}

beforeAll(async () => {
  stack = await Stack.start({ hosts: ['a'] });
  port = await freePort();
  await stack.startService('dashboard', { VMSAVE_DASHBOARD_PORT: String(port), VMSAVE_DASHBOARD_HOST: '127.0.0.1' });
  // Enough non-zero RAM that the save takes a moment and reports progress.
  await stack.startVm('a', await patternVm(stack.dir, vm, 1024, makePattern(8 * MiB), 96));
  await stack.waitForHost('a', [vm]);
  await waitFor('the dashboard to answer', async () => (await fetch(`http://127.0.0.1:${port}/healthz`).catch(() => undefined))?.ok, 60_000, 250);
}, 240_000);

afterAll(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  await stack?.stop();
});

describe.runIf(existsSync(CHROMIUM))('the ops dashboard on the real stack, in headless Chromium', () => {
  it('a save requested on the bus appears, shows progress, and ends verified with its checks, without a reload', async () => {
    profile = mkdtempSync(path.join(os.tmpdir(), 'vmsave-e2e-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = context.pages()[0] ?? (await context.newPage());
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${port}/`);
    await page.locator('#live[data-state="live"]').waitFor({ timeout: 30_000 });

    const progressSeen: number[] = [];
    const { jobId } = await stack.client.save({ requestId: uniq('dash'), vm, format: 'legacy' });
    const row = page.locator(`tr[data-job-id="${jobId}"]`);
    // The dashboard folds the whole shared log into its fresh read models first.
    await row.waitFor({ timeout: 180_000 });
    // Sample the progress bar while the save runs.
    const sampler = (async () => {
      for (let i = 0; i < 400; i++) {
        const v = await row
          .locator('.c-progress progress')
          .getAttribute('value')
          .catch(() => null);
        if (v !== null) progressSeen.push(Number(v));
        const state = await row
          .locator('.c-state')
          .textContent()
          .catch(() => '');
        if (state === 'verified' || state === 'failed' || state === 'rejected') return;
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await expect.poll(() => row.locator('.c-state').textContent(), { timeout: 120_000 }).toBe('verified');
    await sampler;
    await row.click();
    await page.locator('#detail:not([hidden])').waitFor();
    // The detail panel fills in once its request for the job's history answers.
    await expect
      .poll(() => page.locator('#detail table.checks tbody tr td:first-child').allTextContents(), { timeout: 30_000 })
      .toEqual(expect.arrayContaining(['header.magic', 'format.matches-stream', 'stream.complete']));
    await expect
      .poll(() => page.locator('#detail .timeline .what').allTextContents(), { timeout: 30_000 })
      .toEqual(['SaveRequested', 'SaveScheduled', 'SaveStarted', 'SaveCompleted', 'ImageVerified']);
    mkdirSync(path.join(REPO, 'test-results'), { recursive: true });
    await page.screenshot({ path: path.join(REPO, 'test-results', 'dashboard-real-stack.png'), fullPage: true });
    expect(errors).toEqual([]);
    // The bar stays within its range; when it was sampled part-way, it moved. (A small save can
    // finish its copy before the first sample, and then sits at the top while its image is synced
    // and verified: every sample is the top value.)
    for (const v of progressSeen) {
      expect(v).toBeGreaterThanOrEqual(0);
      expect(v).toBeLessThanOrEqual(1000);
    }
    if (progressSeen.some((v) => v < 1000)) expect(Math.max(...progressSeen)).toBeGreaterThan(Math.min(...progressSeen));
  });
});
