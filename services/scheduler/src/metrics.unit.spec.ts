import { describe, expect, it } from 'vitest';
import { initialState, type JobState } from '@vmsave/jobs';
import { ServiceMetrics, sampleValue } from '@vmsave/metrics';
import { registerSchedulerMetrics, schedulerStateSource } from './metrics.ts';

const job = (jobId: string, kind: 'save' | 'restore', status: JobState['status'], host?: string): JobState => ({ ...initialState(), jobId, kind, status, host });

describe('the scheduler metrics', () => {
  // given: two queued jobs (one placed on h1, one not yet placed), one running on h1, one scheduled on h2, two verified
  const jobs = new Map<string, JobState>([
    ['s-1', job('s-1', 'save', 'requested')],
    ['s-2', job('s-2', 'save', 'requested')],
    ['s-3', job('s-3', 'save', 'running', 'h1')],
    ['r-1', job('r-1', 'restore', 'scheduled', 'h2')],
    ['s-4', job('s-4', 'save', 'verified', 'h1')],
    ['s-5', job('s-5', 'save', 'verified', 'h2')],
  ]);
  const open = ['s-1', 's-2', 's-3', 'r-1'];
  const state = { jobs, placement: new Map([['s-1', { host: 'h1' }]]), openJobs: () => open.map((id) => jobs.get(id)!) };

  it('reads queue depth and active jobs per host, and jobs by kind and state, at each scrape', async () => {
    const m = new ServiceMetrics('scheduler');
    registerSchedulerMetrics(m, schedulerStateSource(state));
    const t = await m.text();
    expect(sampleValue(t, 'vmsave_scheduler_queue_depth', { host: 'h1' })).toBe(1);
    expect(sampleValue(t, 'vmsave_scheduler_queue_depth', { host: '' })).toBe(1);
    expect(sampleValue(t, 'vmsave_scheduler_active_jobs', { host: 'h1' })).toBe(1);
    expect(sampleValue(t, 'vmsave_scheduler_active_jobs', { host: 'h2' })).toBe(1);
    expect(sampleValue(t, 'vmsave_jobs', { kind: 'save', state: 'verified' })).toBe(2);
    expect(sampleValue(t, 'vmsave_jobs', { kind: 'save', state: 'requested' })).toBe(2);
    expect(sampleValue(t, 'vmsave_jobs', { kind: 'restore', state: 'scheduled' })).toBe(1);
    // when: the running job ends, the next scrape no longer counts it
    open.splice(open.indexOf('s-3'), 1);
    jobs.set('s-3', job('s-3', 'save', 'completed', 'h1'));
    const t2 = await m.text();
    expect(sampleValue(t2, 'vmsave_scheduler_active_jobs', { host: 'h1' })).toBe(0);
    expect(sampleValue(t2, 'vmsave_jobs', { kind: 'save', state: 'running' })).toBe(0);
  });

  it('times each admission, also one that throws', async () => {
    const m = new ServiceMetrics('scheduler');
    const s = registerSchedulerMetrics(m, { queueDepthByHost: () => ({}), activeByHost: () => ({}) });
    await s.timeAdmission(async () => 'ok');
    await expect(s.timeAdmission(async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    expect(sampleValue(await m.text(), 'vmsave_admission_seconds_count')).toBe(2);
  });
});
