/**
 * The vmsave dashboard page.
 *
 * Data flow: the page loads one page of jobs (`api/jobs`, which also returns `cursor`, the log
 * position it includes), then opens `api/stream?since=<cursor>`. Every `job` message carries the
 * job's view as of that event or later, so applying it is idempotent; the browser's EventSource
 * resends the last `id` it saw when it reconnects, so nothing is missed. `progress` and
 * `throughput` messages are ephemeral and carry no id.
 */
import { ACTIVE_STATUSES, describeEvent, fmtBytes, fmtElapsed, fmtRate, JOB_STATUSES, overdueText, TERMINAL, type JobStatus } from '@vmsave/jobs/view';
import { ApiError, apiUrl, getJson } from './api.ts';
import { chartAddCompleted, chartAddLive, initChart } from './chart.ts';
import { $, badge, h, setText } from './dom.ts';
import { loadHosts, refreshHostsSoon } from './hosts.ts';
import { loadLinks } from './links.ts';
import { fmtClock, fmtWhen } from './time.ts';
import type { JobDetail, JobEvent, JobMessage, JobsPage, JobView, ProgressSample, SummaryMessage, ThroughputAnswer, ThroughputPoint } from './types.ts';

/* ---------- jobs: filters, paging, rows updated in place ---------- */

type Tab = 'all' | 'active' | 'problems';
const TABS: Record<Tab, readonly JobStatus[] | null> = {
  all: null,
  active: JOB_STATUSES.filter((s) => ACTIVE_STATUSES.has(s)),
  problems: ['failed', 'rejected'],
};

type CellName = 'id' | 'state' | 'vm' | 'host' | 'format' | 'channels' | 'dio' | 'progress' | 'duration' | 'image' | 'reason' | 'requested';
interface Row {
  tr: HTMLTableRowElement;
  cells: Record<CellName, HTMLTableCellElement>;
  /** A drain's VMs, in a row beneath its own. */
  sub?: HTMLTableRowElement;
}

const view = {
  tab: 'all' as Tab,
  state: '',
  kind: '',
  vm: '',
  host: '',
  offset: 0,
  limit: 50,
  /** Job views on the current page, newest request first. */
  rows: [] as JobView[],
  total: 0,
  /** jobId -> the row of the table showing it. */
  els: new Map<string, Row>(),
  /** Latest progress sample per running job. */
  progress: new Map<string, ProgressSample>(),
  /** Highest log sequence applied: where a new stream resumes. */
  cursor: 0,
  dirty: new Set<string>(),
  flushQueued: false,
};

const detail = { jobId: null as string | null, job: null as JobView | null, events: new Map<number, JobEvent>(), loading: false };

function wantedStates(): readonly string[] {
  return TABS[view.tab] ?? (view.state ? [view.state] : []);
}
function matches(job: JobView): boolean {
  const states = wantedStates();
  return (!states.length || states.includes(job.status)) && (!view.kind || job.kind === view.kind) && (!view.vm || job.vm === view.vm) && (!view.host || job.host === view.host);
}
const requestTime = (job: JobView): number => Date.parse(job.requestedAt ?? job.updatedAt ?? '') || 0;

async function loadPage(): Promise<JobsPage> {
  const body = await getJson<JobsPage>('api/jobs', { state: wantedStates().join(','), kind: view.kind, vm: view.vm, host: view.host, limit: view.limit, offset: view.offset });
  $('#filter-error').textContent = '';
  renderTotals(body.totals);
  for (const j of body.items) if (j.progress) view.progress.set(j.jobId, j.progress);
  view.rows = body.items;
  view.total = body.total;
  view.cursor = Math.max(view.cursor, body.cursor);
  renderTable();
  return body;
}

function reloadPage(): void {
  loadPage().catch((err: Error) => {
    $('#filter-error').textContent = err.message;
  });
}

function renderTable(): void {
  const tbody = $('#jobs tbody');
  const keep = new Set(view.rows.map((j) => j.jobId));
  for (const [id, r] of view.els)
    if (!keep.has(id)) {
      r.tr.remove();
      r.sub?.remove();
      view.els.delete(id);
    }
  // Re-append in order: existing rows move, new rows are created once.
  for (const job of view.rows) {
    const r = view.els.get(job.jobId) ?? createRow(job);
    updateRow(r, job);
    tbody.append(r.tr);
    if (r.sub) tbody.append(r.sub);
  }
  $('#jobs-empty').hidden = view.rows.length > 0;
  renderPager();
}

function createRow(job: JobView): Row {
  const cells = {} as Record<CellName, HTMLTableCellElement>;
  const td = (name: CellName, cls = '') => {
    cells[name] = h('td', { class: `c-${name} ${cls}` });
    return cells[name];
  };
  const tr = h(
    'tr',
    { 'data-job-id': job.jobId, tabindex: 0 },
    td('id', 'mono'),
    td('state'),
    td('vm'),
    td('host'),
    td('format'),
    td('channels', 'num'),
    td('dio'),
    td('progress'),
    td('duration', 'num'),
    td('image', 'num'),
    td('reason', 'reason'),
    td('requested'),
  );
  cells.state.append(h('span', { class: 'badge' }));
  cells.progress.append(h('div', { class: 'bar' }, h('progress', { max: 1000, hidden: true }), h('span')));
  tr.addEventListener('click', () => void openDetail(job.jobId));
  tr.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') void openDetail(job.jobId);
  });
  const r: Row = { tr, cells };
  if (job.kind === 'drain') {
    tr.classList.add('drain');
    r.sub = h('tr', { class: 'drain-vms', 'data-drain-id': job.jobId }, h('td', { colspan: 12 }));
  }
  view.els.set(job.jobId, r);
  return r;
}

/** A drain's VMs by phase, in one line: `2 saved · 1 saving`. */
function drainPhases(job: JobView): string {
  const n = new Map<string, number>();
  for (const v of job.drain?.vms ?? []) n.set(v.phase, (n.get(v.phase) ?? 0) + 1);
  return [...n].map(([phase, k]) => `${k} ${phase}`).join(' · ');
}

function childLink(jobId: string | undefined, label: string): Node | string {
  if (!jobId) return '';
  const a = h('a', { href: `#job=${encodeURIComponent(jobId)}`, class: 'mono', title: jobId }, `${label} ${jobId.slice(0, 12)}`);
  a.addEventListener('click', (e) => e.stopPropagation());
  return a;
}

/** The drain's row shows the drain; the row beneath lists its VMs, each with its phase and child jobs. */
function updateDrainRow(r: Row, job: JobView): void {
  const d = job.drain;
  setText(r.cells.vm, `${d?.vmCount ?? 0} VMs`);
  setText(r.cells.host, d?.to ? `${job.host ?? '—'} → ${d.to}` : (job.host ?? '—'));
  for (const c of ['format', 'channels', 'dio', 'image'] as const) setText(r.cells[c], '—');
  const bar = r.cells.progress.firstChild as Element;
  (bar.children[0] as HTMLProgressElement).hidden = true;
  setText(bar.children[1] as HTMLSpanElement, drainPhases(job));
  const reason = d?.reason ?? '';
  setText(r.cells.reason, reason, reason);
  const vms = (d?.vms ?? []).map((v) =>
    h(
      'li',
      { 'data-vm': v.vm, class: `drain-vm ${v.phase}` },
      h('span', { class: 'vm' }, v.vm),
      ' ',
      badge(v.phase),
      ' ',
      childLink(v.saveJobId, 'save'),
      ' ',
      childLink(v.restoreJobId, 'restore'),
      v.restoredOn ? ` on ${v.restoredOn}` : '',
      v.error ? h('span', { class: 'reason' }, ` ${v.error}`) : '',
    ),
  );
  r.sub?.firstElementChild?.replaceChildren(h('ul', { class: 'drain-vm-list' }, vms));
}

function failureText(job: JobView): string {
  if (job.status === 'failed' && job.lastFailure) return `${job.lastFailure.stage} · ${job.lastFailure.code}: ${job.lastFailure.reason}`;
  if (job.status === 'rejected' && job.rejection) return `${job.rejection.rule}: ${job.rejection.message}`;
  return overdueText(job);
}

const isTerminalStatus = (status: JobView['status']): boolean => status !== 'none' && TERMINAL.has(status);

function durationOf(job: JobView): number | undefined {
  if (job.result?.durationMs != null) return job.result.durationMs;
  if (!job.requestedAt) return undefined;
  return (isTerminalStatus(job.status) ? Date.parse(job.updatedAt ?? '') : Date.now()) - Date.parse(job.requestedAt);
}

function imageText(job: JobView): string {
  const r = job.result;
  if (r?.bytes == null) return '—';
  if (r.blocks == null) return fmtBytes(r.bytes);
  const allocated = r.blocks * 512;
  const pct = r.bytes > 0 ? ` (${Math.round((100 * allocated) / r.bytes)}%)` : '';
  return `${fmtBytes(r.bytes)} / ${fmtBytes(allocated)}${pct}`;
}

/** `value`: null hides the bar, undefined makes it indeterminate, else 0…1. */
function progressText(job: JobView, sample: ProgressSample | undefined): { value: number | null | undefined; text: string } {
  if (job.status !== 'running') return { value: null, text: job.status === 'scheduled' ? 'queued on host' : '' };
  if (!sample?.totalBytes) return { value: undefined, text: 'starting…' };
  const frac = Math.min(1, sample.transferredBytes / sample.totalBytes);
  const eta = sample.etaMs != null ? ` · ETA ${fmtElapsed(sample.etaMs)}` : '';
  return { value: frac, text: `${(frac * 100).toFixed(0)}% · ${fmtRate(sample.bytesPerSec)}${eta}` };
}

function renderProgress(barEl: Element, job: JobView, sample: ProgressSample | undefined): void {
  const progress = barEl.children[0] as HTMLProgressElement;
  const span = barEl.children[1] as HTMLSpanElement;
  const p = progressText(job, sample);
  progress.hidden = p.value === null;
  if (p.value === undefined)
    progress.removeAttribute('value'); // indeterminate
  else if (p.value !== null) progress.value = Math.round(p.value * 1000);
  setText(span, p.text);
}

function updateRow(row: Row, job: JobView): void {
  const { tr, cells } = row;
  const req = job.saveRequest;
  setText(cells.id, job.jobId.slice(0, 12), job.jobId);
  const b = cells.state.firstChild as HTMLSpanElement;
  if (b.textContent !== job.status) {
    b.textContent = job.status;
    b.className = `badge ${job.status}`;
  }
  setText(cells.vm, job.vm ?? '—');
  setText(cells.host, job.host ?? '—');
  setText(cells.format, job.format ?? req?.format ?? '—');
  setText(cells.channels, req ? String(req.channels) : '—');
  setText(cells.dio, req ? (req.directIo ? 'yes' : 'no') : '—');
  renderProgress(cells.progress.firstChild as Element, job, view.progress.get(job.jobId));
  setText(cells.duration, fmtElapsed(durationOf(job)));
  setText(cells.image, imageText(job), job.result?.throughputBytesPerSec ? `average ${fmtRate(job.result.throughputBytesPerSec)}` : '');
  const reason = failureText(job);
  setText(cells.reason, reason, reason);
  setText(cells.requested, fmtWhen(job.requestedAt), job.requestedAt ?? '');
  tr.classList.toggle('selected', detail.jobId === job.jobId);
  if (job.kind === 'drain') updateDrainRow(row, job);
}

function renderPager(): void {
  const from = view.total ? view.offset + 1 : 0;
  const to = Math.min(view.offset + view.rows.length, view.total);
  $('#range').textContent = `${from}–${to} of ${view.total.toLocaleString()}`;
  $<HTMLButtonElement>('#prev').disabled = view.offset === 0;
  $<HTMLButtonElement>('#next').disabled = view.offset + view.limit >= view.total;
}

/** Coalesce row updates into one DOM pass per frame. */
function markDirty(jobId: string): void {
  view.dirty.add(jobId);
  if (view.flushQueued) return;
  view.flushQueued = true;
  const flush = () => {
    if (!view.flushQueued) return;
    view.flushQueued = false;
    const byId = new Map(view.rows.map((j) => [j.jobId, j]));
    for (const id of view.dirty) {
      const r = view.els.get(id);
      const job = byId.get(id);
      if (r && job) updateRow(r, job);
    }
    view.dirty.clear();
  };
  requestAnimationFrame(flush);
  setTimeout(flush, 250); // rAF does not run in a hidden tab
}

/** A job changed (from the live stream): update its row, or add it to the first page. */
function applyJob(job: JobView): void {
  const i = view.rows.findIndex((r) => r.jobId === job.jobId);
  if (i >= 0) {
    if (job.lastSeq < view.rows[i]!.lastSeq) return; // an older view than the one shown
    view.rows[i] = job;
    markDirty(job.jobId);
    return;
  }
  if (view.offset !== 0 || !matches(job)) return;
  // Newest request first; a job older than a full page's last row belongs on a later page.
  const t = requestTime(job);
  let at = view.rows.findIndex((r) => requestTime(r) < t);
  if (at < 0) {
    if (view.rows.length >= view.limit) return;
    at = view.rows.length;
  }
  view.rows.splice(at, 0, job);
  if (view.rows.length > view.limit) view.rows.length = view.limit;
  view.total++; // until the next count from the server
  if (deferRender) renderWanted = true;
  else renderTable();
}

/* ---------- counts, refreshed after activity ---------- */

let countsTimer: ReturnType<typeof setTimeout> | undefined;
function refreshCountsSoon(): void {
  clearTimeout(countsTimer);
  countsTimer = setTimeout(refreshCounts, 300);
}
async function refreshCounts(): Promise<void> {
  try {
    const [page, fleet] = await Promise.all([
      getJson<JobsPage>('api/jobs', { state: wantedStates().join(','), kind: view.kind, vm: view.vm, host: view.host, limit: 1 }),
      view.kind || view.vm || view.host ? getJson<JobsPage>('api/jobs', { limit: 1 }) : undefined,
    ]);
    view.total = page.total;
    renderPager();
    renderTotals(page.totals, (fleet ?? page).totals);
  } catch {
    // Counts catch up on the next refresh.
  }
}

/** Jobs per status (under the filters) beside each status of the state filter; failures and rejections of the fleet on their tab. */
function renderTotals(filtered: Record<string, number> | undefined, fleet = filtered): void {
  if (!filtered) return;
  for (const o of $<HTMLSelectElement>('#filters select[name="state"]').options) {
    if (o.value) o.textContent = `${o.value} (${(filtered[o.value] ?? 0).toLocaleString()})`;
  }
  if (fleet === filtered && (view.kind || view.vm || view.host)) return; // the fleet's problems come with refreshCounts
  const problems = TABS.problems!.reduce((n, s) => n + (fleet?.[s] ?? 0), 0);
  $('#problems-count').textContent = problems ? problems.toLocaleString() : '';
}

/* ---------- job detail ---------- */

async function openDetail(jobId: string): Promise<void> {
  detail.jobId = jobId;
  detail.job = null;
  detail.events = new Map();
  detail.loading = true;
  history.replaceState(null, '', `#job=${encodeURIComponent(jobId)}`);
  for (const [id, r] of view.els) r.tr.classList.toggle('selected', id === jobId);
  $('#detail').hidden = false;
  document.body.classList.add('detail-open');
  $('#detail-title').textContent = `job ${jobId}`;
  $('#detail-body').replaceChildren(h('p', { class: 'empty' }, 'loading…'));
  try {
    const body = await getJson<JobDetail>(`api/jobs/${encodeURIComponent(jobId)}`);
    if (detail.jobId !== jobId) return;
    // Live events may have arrived while loading: keep whichever view is newer.
    for (const e of body.events) detail.events.set(e.seq, e.event);
    const shown = detail.job as JobView | null; // set by the live stream meanwhile, perhaps
    if (!shown || body.job.lastSeq >= shown.lastSeq) detail.job = body.job;
    if (body.job.progress) view.progress.set(jobId, body.job.progress);
    detail.loading = false;
    renderDetail();
  } catch (err) {
    if (detail.jobId === jobId) $('#detail-body').replaceChildren(h('p', { class: 'problem' }, (err as Error).message));
  }
}

function closeDetail(): void {
  detail.jobId = null;
  $('#detail').hidden = true;
  document.body.classList.remove('detail-open');
  history.replaceState(null, '', location.pathname + location.search);
  for (const r of view.els.values()) r.tr.classList.remove('selected');
}

const toneOf = (type: string): string => (/Failed|Rejected|Cancelled/.test(type) ? 'bad' : /Verified|Completed/.test(type) ? 'good' : '');

function renderDetail(): void {
  const job = detail.job;
  if (!job) return;
  const req = job.saveRequest;
  const facts: Array<[string, string | Node]> = [
    ['state', badge(job.status)],
    ['kind', job.kind ?? '—'],
    ['VM', job.vm ?? '—'],
    ['host', job.host ?? '—'],
    ['attempt', String(job.attempt)],
    ['format', job.format ?? req?.format ?? '—'],
    ['channels', req ? String(req.channels) : '—'],
    ['direct IO', req ? (req.directIo ? 'yes' : 'no') : '—'],
    ['image', job.imagePath ?? '—'],
    ['size / allocated', imageText(job)],
    ['duration', fmtElapsed(durationOf(job))],
    ['throughput', job.result?.throughputBytesPerSec ? fmtRate(job.result.throughputBytesPerSec) : '—'],
    ['requested', job.requestedAt ? new Date(job.requestedAt).toLocaleString() : '—'],
  ];
  const body: Node[] = [
    h(
      'dl',
      { class: 'facts' },
      facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
    ),
  ];

  if (job.status === 'running' && job.kind !== 'drain') {
    body.push(h('div', { class: 'bar', id: 'detail-progress' }, h('progress', { max: 1000 }), h('span')));
  }
  if (job.status === 'failed' && job.lastFailure) {
    const f = job.lastFailure;
    body.push(
      h(
        'div',
        { class: 'problem' },
        h('strong', {}, `failed at ${f.stage} (${f.code})`),
        h('div', {}, f.reason),
        h('div', {}, `${f.retryable ? 'retryable' : 'not retryable'}${f.vmResumed === undefined ? '' : ` · VM ${f.vmResumed ? 'resumed' : 'NOT resumed'}`}`),
      ),
    );
  }
  if (overdueText(job)) {
    body.push(
      h(
        'div',
        { class: 'problem', 'data-problem': 'verification-overdue' },
        h('strong', {}, 'verification overdue'),
        h('div', {}, overdueText(job)),
        h('div', {}, 'the image is written but no verifier gave a verdict: check that a verifier runs and reads this host (VMSAVE_VERIFY_HOSTS) and the dead letters'),
      ),
    );
  }
  if (job.status === 'rejected' && job.rejection) {
    const r = job.rejection;
    body.push(h('div', { class: 'problem' }, h('strong', {}, `rejected: ${r.rule}${r.field ? ` (${r.field})` : ''}`), h('div', {}, r.message)));
  }
  if (job.kind === 'drain' && job.drain) {
    body.push(
      h('h3', {}, `VMs (${job.drain.vmCount})`),
      h(
        'table',
        { class: 'grid drain-detail' },
        h('thead', {}, h('tr', {}, h('th', {}, 'VM'), h('th', {}, 'phase'), h('th', {}, 'jobs'), h('th', {}, 'detail'))),
        h(
          'tbody',
          {},
          job.drain.vms.map((v) =>
            h(
              'tr',
              { 'data-vm': v.vm },
              h('td', {}, v.vm),
              h('td', {}, badge(v.phase)),
              h('td', {}, childLink(v.saveJobId, 'save'), ' ', childLink(v.restoreJobId, 'restore')),
              h('td', {}, [v.restoredOn ? `on ${v.restoredOn}` : '', v.error ?? ''].filter(Boolean).join(' · ')),
            ),
          ),
        ),
      ),
    );
  }
  if (job.checks?.length) {
    body.push(
      h('h3', {}, 'Verification'),
      h(
        'table',
        { class: 'grid checks' },
        h('thead', {}, h('tr', {}, h('th', {}, 'check'), h('th', {}, 'status'), h('th', {}, 'detail'))),
        h(
          'tbody',
          {},
          job.checks.map((c) => h('tr', { 'data-check': c.name }, h('td', { class: 'mono' }, c.name), h('td', {}, badge(c.status)), h('td', {}, c.detail))),
        ),
      ),
    );
  }

  const events = [...detail.events.entries()].sort(([a], [b]) => a - b);
  const t0 = events.length ? Date.parse(events[0]![1].at) : 0;
  body.push(
    h('h3', {}, `Timeline (${events.length} events)`),
    h(
      'ol',
      { class: 'timeline' },
      events.map(([seq, e]) =>
        h(
          'li',
          { class: toneOf(e.type), 'data-seq': seq },
          h(
            'div',
            {},
            h('span', { class: 'what' }, e.type),
            ' ',
            h('span', { class: 'when' }, `${fmtClock(e.at)} · +${fmtElapsed(Date.parse(e.at) - t0)} · #${seq} · ${e.source}`),
          ),
          h('div', {}, describeEvent(e)),
          h('details', {}, h('summary', {}, 'event'), h('pre', {}, JSON.stringify(e, null, 2))),
        ),
      ),
    ),
  );

  $('#detail-title').textContent = `${job.kind ?? 'job'} ${job.jobId}`;
  $('#detail-body').replaceChildren(...body);
  renderDetailProgress();
}

function renderDetailProgress(): void {
  const el = document.getElementById('detail-progress');
  if (el && detail.job) renderProgress(el, detail.job, view.progress.get(detail.job.jobId));
}

/* ---------- the live stream ---------- */

function setLive(state: string, text?: string): void {
  const el = $('#live');
  el.dataset.state = state;
  el.textContent = text ?? state;
}

const knownVms = new Set<string>();

/**
 * Live messages are applied once per frame, however fast they come: the latest per job, one
 * table render, so a burst of thousands of events does not stall the tab.
 */
const inbox = { jobs: new Map<string, JobMessage>(), queued: false };
function onJobFrame(m: JobMessage): void {
  // Detail timelines want every event: those of the open job go straight through.
  if (detail.jobId === m.job.jobId) {
    onJobMessage(m);
    return;
  }
  inbox.jobs.delete(m.job.jobId);
  inbox.jobs.set(m.job.jobId, m);
  if (inbox.queued) return;
  inbox.queued = true;
  const flush = () => {
    if (!inbox.queued) return;
    inbox.queued = false;
    const batch = [...inbox.jobs.values()];
    inbox.jobs.clear();
    deferRender = true;
    for (const msg of batch) onJobMessage(msg);
    deferRender = false;
    if (renderWanted) {
      renderWanted = false;
      renderTable();
    }
  };
  requestAnimationFrame(flush);
  setTimeout(flush, 250); // rAF does not run in a hidden tab
}
let deferRender = false;
let renderWanted = false;

/** The stream was too far ahead of this page: reload the page's rows and counts from the API. */
function onSummary(s: SummaryMessage): void {
  view.cursor = Math.max(view.cursor, s.seq);
  inbox.jobs.clear();
  summaries++;
  document.body.dataset.summaries = String(summaries);
  setLive('live', `live · ${s.events.toLocaleString()} events summarised`);
  clearTimeout(summaryTimer);
  summaryTimer = setTimeout(() => {
    reloadPage();
    void refreshCounts();
    refreshHostsSoon();
    if (detail.jobId) void openDetail(detail.jobId);
  }, 200);
}
let summaries = 0;
let summaryTimer: ReturnType<typeof setTimeout> | undefined;

function onJobMessage({ seq, event, job, superseded }: JobMessage): void {
  view.cursor = Math.max(view.cursor, seq);
  if (isTerminalStatus(job.status) || job.status === 'completed') view.progress.delete(job.jobId);
  applyJob(job);
  if (job.vm && !knownVms.has(job.vm) && knownVms.size < 500) {
    knownVms.add(job.vm);
    $('#vm-names').append(h('option', { value: job.vm }));
  }
  if (detail.jobId === job.jobId) {
    detail.events.set(seq, event);
    if (!detail.job || job.lastSeq >= detail.job.lastSeq) detail.job = job;
    // Events left out of the stream: the timeline is read again from the log.
    if (superseded) void openDetail(job.jobId);
    else if (!detail.loading) renderDetail();
  }
  if (event.type === 'SaveCompleted') {
    chartAddCompleted({ t: Math.floor(Date.parse(event.at) / 1000), bytesPerSec: event.data.throughputBytesPerSec, jobId: job.jobId });
  }
  refreshCountsSoon();
  if (!/Requested$/.test(event.type)) refreshHostsSoon();
}

function onProgress(sample: ProgressSample): void {
  view.progress.set(sample.jobId, sample);
  if (view.els.has(sample.jobId)) markDirty(sample.jobId);
  if (detail.jobId === sample.jobId) renderDetailProgress();
}

let source: EventSource | undefined;
function openStream(): void {
  source?.close();
  const es = new EventSource(apiUrl('api/stream', { since: view.cursor }));
  source = es;
  es.addEventListener('open', () => setLive('live'));
  es.addEventListener('error', () => {
    // The EventSource retries by itself, resending the last id it saw; a refused or
    // failed request closes it for good, so start a new one from our own position.
    setLive('reconnecting', 'reconnecting…');
    if (es.readyState === EventSource.CLOSED && source === es) setTimeout(() => source === es && openStream(), 3000);
  });
  es.addEventListener('job', (m) => onJobFrame(JSON.parse(m.data) as JobMessage));
  es.addEventListener('summary', (m) => onSummary(JSON.parse(m.data) as SummaryMessage));
  es.addEventListener('progress', (m) => onProgress(JSON.parse(m.data) as ProgressSample));
  es.addEventListener('throughput', (m) => chartAddLive(JSON.parse(m.data) as ThroughputPoint));
}

/* ---------- controls ---------- */

interface FiltersForm extends HTMLFormElement {
  state: HTMLSelectElement;
  kind: HTMLSelectElement;
  vm: HTMLInputElement;
  host: HTMLInputElement;
}

function selectTab(tab: Tab): void {
  view.tab = tab;
  view.offset = 0;
  for (const b of document.querySelectorAll<HTMLButtonElement>('.tabs button')) b.setAttribute('aria-selected', String(b.dataset.tab === tab));
  if (tab !== 'all') $<FiltersForm>('#filters').state.value = '';
  reloadPage();
}

function wireControls(): void {
  for (const b of document.querySelectorAll<HTMLButtonElement>('.tabs button')) b.addEventListener('click', () => selectTab(b.dataset.tab as Tab));
  const form = $<FiltersForm>('#filters');
  // The state filter offers every status there is, from the one list.
  form.state.append(...JOB_STATUSES.map((s) => h('option', { value: s }, s)));
  form.addEventListener('submit', (e) => e.preventDefault());
  form.kind.addEventListener('change', () => {
    view.kind = form.kind.value;
    view.offset = 0;
    reloadPage();
  });
  form.state.addEventListener('change', () => {
    view.state = form.state.value;
    if (view.state && view.tab !== 'all') selectTab('all');
    else {
      view.offset = 0;
      reloadPage();
    }
  });
  let typing: ReturnType<typeof setTimeout> | undefined;
  for (const name of ['vm', 'host'] as const) {
    form[name].addEventListener('input', () => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        view[name] = form[name].value.trim();
        view.offset = 0;
        reloadPage();
      }, 300);
    });
  }
  $('#prev').addEventListener('click', () => {
    view.offset = Math.max(0, view.offset - view.limit);
    reloadPage();
  });
  $('#next').addEventListener('click', () => {
    view.offset += view.limit;
    reloadPage();
  });
  $<HTMLSelectElement>('#page-size').addEventListener('change', (e) => {
    view.limit = Number((e.target as HTMLSelectElement).value);
    view.offset = 0;
    reloadPage();
  });
  $('#detail-close').addEventListener('click', closeDetail);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && detail.jobId) closeDetail();
  });
  window.addEventListener('hashchange', openFromHash);
}

function openFromHash(): void {
  const m = /^#job=(.+)$/.exec(location.hash);
  if (m && decodeURIComponent(m[1]!) !== detail.jobId) void openDetail(decodeURIComponent(m[1]!));
}

/** Durations of active jobs tick; everything else changes only when an event says so. */
function tick(): void {
  for (const job of view.rows) if (job.status !== 'none' && ACTIVE_STATUSES.has(job.status)) markDirty(job.jobId);
}

export async function start(): Promise<void> {
  wireControls();
  try {
    await loadPage();
  } catch (err) {
    setLive('reconnecting', err instanceof ApiError && err.status === 401 ? 'access token needed (?token=…)' : `failed: ${(err as Error).message}`);
    return;
  }
  openStream();
  void loadLinks();
  void loadHosts();
  void refreshCounts();
  getJson<ThroughputAnswer>('api/throughput').then(initChart, () => initChart({ live: [], completed: [] }));
  openFromHash();
  setInterval(tick, 1000);
}
