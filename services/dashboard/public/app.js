// The vmsave dashboard page: a hand-written ES module, no bundler, no CDN.
//
// Data flow: the page loads one page of jobs (`api/jobs`, which also returns `cursor`, the log
// position it includes), then opens `api/stream?since=<cursor>`. Every `job` message carries the
// job's view as of that event or later, so applying it is idempotent; the browser's EventSource
// resends the last `id` it saw when it reconnects, so nothing is missed. `progress` and
// `throughput` messages are ephemeral and carry no id.
import uPlot from './vendor/uplot.esm.js';

/* ---------- formatting ---------- */

const GiB = 1024 ** 3;
const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

function fmtBytes(n) {
  if (n == null) return '—';
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i === 0 ? 0 : n < 10 ? 2 : 1)} ${UNITS[i]}`;
}
const fmtRate = (bps) => `${(bps / GiB).toFixed(2)} GiB/s`;
function fmtDuration(ms) {
  if (ms == null || !Number.isFinite(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
function fmtWhen(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}
const fmtClock = (iso) => new Date(iso).toISOString().slice(11, 23);
function fmtAgo(iso) {
  if (!iso) return 'never';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}

/* ---------- DOM helpers (text only: job data is never parsed as HTML) ---------- */

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}
const $ = (sel) => document.querySelector(sel);
function setText(el, text, title) {
  if (el.textContent !== text) el.textContent = text;
  if (title !== undefined && el.title !== title) el.title = title;
}
const badge = (status) => h('span', { class: `badge ${status}` }, status);

/* ---------- API ---------- */

// A page opened with ?token= passes it on; the server also remembers it in a cookie.
const token = new URLSearchParams(location.search).get('token');

function apiUrl(path, params = {}) {
  const u = new URL(path, location.href);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '' && v !== null) u.searchParams.set(k, String(v));
  if (token) u.searchParams.set('token', token);
  return u.toString();
}
async function getJson(path, params) {
  const res = await fetch(apiUrl(path, params), { headers: { accept: 'application/json' } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(body.message ?? `${res.status} ${res.statusText}`), { status: res.status });
  return body;
}

/* ---------- jobs: filters, paging, rows updated in place ---------- */

const TABS = {
  all: null,
  active: ['requested', 'scheduled', 'running'],
  problems: ['failed', 'rejected'],
};
const ACTIVE = new Set(TABS.active);
const TERMINAL = new Set(['verified', 'rejected', 'failed', 'cancelled']);

const view = {
  tab: 'all',
  state: '',
  vm: '',
  host: '',
  offset: 0,
  limit: 50,
  /** Job views on the current page, newest request first. */
  rows: [],
  total: 0,
  /** jobId -> { tr, cells } of the rows in the table. */
  els: new Map(),
  /** Latest progress sample per running job. */
  progress: new Map(),
  /** Highest log sequence applied: where a new stream resumes. */
  cursor: 0,
  dirty: new Set(),
  flushQueued: false,
};

function wantedStates() {
  return TABS[view.tab] ?? (view.state ? [view.state] : []);
}
function matches(job) {
  const states = wantedStates();
  return (!states.length || states.includes(job.status)) && (!view.vm || job.vm === view.vm) && (!view.host || job.host === view.host);
}
const requestTime = (job) => Date.parse(job.requestedAt ?? job.updatedAt ?? 0);

async function loadPage() {
  const body = await getJson('api/jobs', { state: wantedStates().join(','), vm: view.vm, host: view.host, limit: view.limit, offset: view.offset });
  $('#filter-error').textContent = '';
  for (const j of body.items) if (j.progress) view.progress.set(j.jobId, j.progress);
  view.rows = body.items;
  view.total = body.total;
  view.cursor = Math.max(view.cursor, body.cursor);
  renderTable();
  return body;
}

function reloadPage() {
  loadPage().catch((err) => { $('#filter-error').textContent = err.message; });
}

function renderTable() {
  const tbody = $('#jobs tbody');
  const keep = new Set(view.rows.map((j) => j.jobId));
  for (const [id, r] of view.els) if (!keep.has(id)) { r.tr.remove(); view.els.delete(id); }
  // Re-append in order: existing rows move, new rows are created once.
  for (const job of view.rows) {
    const r = view.els.get(job.jobId) ?? createRow(job);
    updateRow(r, job);
    tbody.append(r.tr);
  }
  $('#jobs-empty').hidden = view.rows.length > 0;
  renderPager();
}

function createRow(job) {
  const cells = {};
  const td = (name, cls = '') => (cells[name] = h('td', { class: `c-${name} ${cls}` }));
  const tr = h('tr', { 'data-job-id': job.jobId, tabindex: 0 },
    td('id', 'mono'), td('state'), td('vm'), td('host'), td('format'), td('channels', 'num'), td('dio'),
    td('progress'), td('duration', 'num'), td('image', 'num'), td('reason', 'reason'), td('requested'));
  cells.state.append(h('span', { class: 'badge' }));
  const bar = h('div', { class: 'bar' }, h('progress', { max: 1000, hidden: true }), h('span'));
  cells.progress.append(bar);
  tr.addEventListener('click', () => openDetail(job.jobId));
  tr.addEventListener('keydown', (e) => { if (e.key === 'Enter') openDetail(job.jobId); });
  const r = { tr, cells };
  view.els.set(job.jobId, r);
  return r;
}

function failureText(job) {
  if (job.status === 'failed' && job.lastFailure) return `${job.lastFailure.stage} · ${job.lastFailure.code}: ${job.lastFailure.reason}`;
  if (job.status === 'rejected' && job.rejection) return `${job.rejection.rule}: ${job.rejection.message}`;
  return '';
}

function durationOf(job) {
  if (job.result?.durationMs != null) return job.result.durationMs;
  if (!job.requestedAt) return undefined;
  return (TERMINAL.has(job.status) ? Date.parse(job.updatedAt) : Date.now()) - Date.parse(job.requestedAt);
}

function imageText(job) {
  const r = job.result;
  if (r?.bytes == null) return '—';
  if (r.blocks == null) return fmtBytes(r.bytes);
  const allocated = r.blocks * 512;
  const pct = r.bytes > 0 ? ` (${Math.round((100 * allocated) / r.bytes)}%)` : '';
  return `${fmtBytes(r.bytes)} / ${fmtBytes(allocated)}${pct}`;
}

function progressText(job, sample) {
  if (job.status !== 'running') return { value: null, text: job.status === 'scheduled' ? 'queued on host' : '' };
  if (!sample || !sample.totalBytes) return { value: undefined, text: 'starting…' };
  const frac = Math.min(1, sample.transferredBytes / sample.totalBytes);
  const eta = sample.etaMs != null ? ` · ETA ${fmtDuration(sample.etaMs)}` : '';
  return { value: frac, text: `${(frac * 100).toFixed(0)}% · ${fmtRate(sample.bytesPerSec)}${eta}` };
}

function renderProgress(barEl, job, sample) {
  const [progress, span] = barEl.children;
  const p = progressText(job, sample);
  progress.hidden = p.value === null;
  if (p.value === undefined) progress.removeAttribute('value'); // indeterminate
  else if (p.value !== null) progress.value = Math.round(p.value * 1000);
  setText(span, p.text);
}

function updateRow({ tr, cells }, job) {
  const req = job.saveRequest;
  setText(cells.id, job.jobId.slice(0, 12), job.jobId);
  const b = cells.state.firstChild;
  if (b.textContent !== job.status) { b.textContent = job.status; b.className = `badge ${job.status}`; }
  setText(cells.vm, job.vm ?? '—');
  setText(cells.host, job.host ?? '—');
  setText(cells.format, job.format ?? req?.format ?? '—');
  setText(cells.channels, req ? String(req.channels) : '—');
  setText(cells.dio, req ? (req.directIo ? 'yes' : 'no') : '—');
  renderProgress(cells.progress.firstChild, job, view.progress.get(job.jobId));
  setText(cells.duration, fmtDuration(durationOf(job)));
  setText(cells.image, imageText(job), job.result?.throughputBytesPerSec ? `average ${fmtRate(job.result.throughputBytesPerSec)}` : '');
  const reason = failureText(job);
  setText(cells.reason, reason, reason);
  setText(cells.requested, fmtWhen(job.requestedAt), job.requestedAt ?? '');
  tr.classList.toggle('selected', detail.jobId === job.jobId);
}

function renderPager() {
  const from = view.total ? view.offset + 1 : 0;
  const to = Math.min(view.offset + view.rows.length, view.total);
  $('#range').textContent = `${from}–${to} of ${view.total.toLocaleString()}`;
  $('#prev').disabled = view.offset === 0;
  $('#next').disabled = view.offset + view.limit >= view.total;
}

/** Coalesce row updates into one DOM pass per frame. */
function markDirty(jobId) {
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
function applyJob(job) {
  const i = view.rows.findIndex((r) => r.jobId === job.jobId);
  if (i >= 0) {
    if (job.lastSeq < view.rows[i].lastSeq) return; // an older view than the one shown
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
  renderTable();
}

/* ---------- counts, refreshed after activity ---------- */

let countsTimer;
function refreshCountsSoon() {
  clearTimeout(countsTimer);
  countsTimer = setTimeout(refreshCounts, 300);
}
async function refreshCounts() {
  try {
    const [page, problems] = await Promise.all([
      getJson('api/jobs', { state: wantedStates().join(','), vm: view.vm, host: view.host, limit: 1 }),
      getJson('api/jobs', { state: TABS.problems.join(','), limit: 1 }),
    ]);
    view.total = page.total;
    renderPager();
    $('#problems-count').textContent = problems.total ? String(problems.total) : '';
  } catch {
    // Counts catch up on the next refresh.
  }
}

/* ---------- hosts ---------- */

let hostsTimer;
function refreshHostsSoon() {
  clearTimeout(hostsTimer);
  hostsTimer = setTimeout(loadHosts, 300);
}
async function loadHosts() {
  clearTimeout(hostsTimer);
  try {
    const { hosts, unscheduled } = await getJson('api/hosts');
    renderHosts(hosts, unscheduled);
  } catch {
    // Shown as stale until the next refresh.
  } finally {
    hostsTimer = setTimeout(loadHosts, 5000);
  }
}

function renderHosts(hosts, unscheduled) {
  const rows = hosts.map((x) => {
    const a = x.announcement;
    const used = x.running + x.queued;
    const load = x.limit
      ? h('span', { class: `load${used >= x.limit ? ' full' : ''}` }, h('i', { style: `width:${Math.min(100, (100 * used) / x.limit)}%` }))
      : null;
    const seen = x.lastHeartbeatAt ?? a?.at;
    const stale = !seen || Date.now() - Date.parse(seen) > 60_000;
    return h('tr', { 'data-host': x.host },
      h('td', {}, x.host),
      h('td', { class: 'mono' }, a?.executorId ?? '—'),
      h('td', {}, a ? `${a.qemu.version} (${a.qemu.accel})` : '—'),
      h('td', {}, a ? [a.qemu.mappedRam ? 'sparse' : 'legacy only', a.qemu.directIo ? ', direct IO' : ''].join('') : '—'),
      h('td', { class: 'num' }, a ? fmtBytes(a.freeBytes) : '—'),
      h('td', { class: 'c-load' }, load, `${x.running} running + ${x.queued} queued / ${x.limit ?? '∞'}`),
      h('td', { class: 'num' }, a ? String(a.vms.length) : '—'),
      h('td', { class: stale ? 'stale' : '' }, fmtAgo(seen)));
  });
  $('#hosts tbody').replaceChildren(...rows);
  $('#hosts-empty').hidden = hosts.length > 0;
  $('#unscheduled').textContent = unscheduled ? `${unscheduled} job(s) waiting for a host` : '';
  const running = hosts.reduce((n, x) => n + x.running, 0);
  const queued = hosts.reduce((n, x) => n + x.queued, 0);
  $('#summary').textContent = `${running} running · ${queued} queued · ${unscheduled} waiting · ${hosts.length} host(s)`;
  $('#host-names').replaceChildren(...hosts.map((x) => h('option', { value: x.host })));
}

/* ---------- throughput chart ---------- */

const chart = { u: null, live: [], completed: [], windowS: 3600 };

function chartData() {
  const cutoff = Date.now() / 1000 - chart.windowS;
  const points = new Map();
  for (const p of chart.live) if (p.t >= cutoff) points.set(p.t, [p.bytesPerSec / GiB, null]);
  for (const c of chart.completed) {
    if (c.t < cutoff) continue;
    const e = points.get(c.t) ?? [null, null];
    e[1] = Math.max(e[1] ?? 0, c.bytesPerSec / GiB);
    points.set(c.t, e);
  }
  const xs = [...points.keys()].sort((a, b) => a - b);
  return [xs, xs.map((t) => points.get(t)[0]), xs.map((t) => points.get(t)[1])];
}

function initChart({ live, completed }) {
  chart.live = live;
  chart.completed = completed;
  const el = $('#chart');
  const gib = (u, v) => (v == null ? '—' : `${v.toFixed(2)} GiB/s`);
  chart.u = new uPlot({
    width: Math.max(300, el.clientWidth),
    height: 220,
    scales: {
      // At least the last ten minutes, so a fresh dashboard's axis reads in minutes, not milliseconds.
      x: { time: true, range: (u, min, max) => { const now = Date.now() / 1000; return [Math.min(min ?? now, now - 600), Math.max(max ?? now, now)]; } },
      y: { range: (u, min, max) => [0, Math.max(0.5, (max ?? 0) * 1.1)] },
    },
    series: [
      {},
      { label: 'fleet (live)', stroke: '#2563eb', fill: 'rgba(37,99,235,0.08)', width: 1.5, value: gib },
      { label: 'completed saves', stroke: '#7c3aed', width: 0, paths: () => null, points: { show: true, size: 7, fill: '#7c3aed' }, value: gib },
    ],
    axes: [{}, { label: 'GiB/s', values: (u, vals) => vals.map((v) => v.toFixed(1)) }],
  }, chartData(), el);
  window.addEventListener('resize', () => chart.u.setSize({ width: Math.max(300, el.clientWidth), height: 220 }));
}

function chartAddLive(point) {
  chart.live.push(point);
  if (chart.live.length > chart.windowS) chart.live.splice(0, chart.live.length - chart.windowS);
  chart.u?.setData(chartData());
}

/* ---------- job detail ---------- */

const detail = { jobId: null, job: null, events: new Map(), loading: false };

async function openDetail(jobId) {
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
    const body = await getJson(`api/jobs/${encodeURIComponent(jobId)}`);
    if (detail.jobId !== jobId) return;
    // Live events may have arrived while loading: keep whichever view is newer.
    for (const e of body.events) detail.events.set(e.seq, e.event);
    if (!detail.job || body.job.lastSeq >= detail.job.lastSeq) detail.job = body.job;
    if (body.job.progress) view.progress.set(jobId, body.job.progress);
    detail.loading = false;
    renderDetail();
  } catch (err) {
    if (detail.jobId === jobId) $('#detail-body').replaceChildren(h('p', { class: 'problem' }, err.message));
  }
}

function closeDetail() {
  detail.jobId = null;
  $('#detail').hidden = true;
  document.body.classList.remove('detail-open');
  history.replaceState(null, '', location.pathname + location.search);
  for (const r of view.els.values()) r.tr.classList.remove('selected');
}

function summarize(e) {
  const d = e.data;
  switch (e.type) {
    case 'SaveRequested': return `VM ${d.request.vm}, format ${d.request.format}, ${d.request.channels} channel(s)${d.request.directIo ? ', direct IO' : ''}, then ${d.request.after}, priority ${d.request.priority}`;
    case 'RestoreRequested': return `image ${d.request.image}${d.request.host ? ` on ${d.request.host}` : ''}, then ${d.request.after}`;
    case 'SaveScheduled': case 'RestoreScheduled': return `host ${d.host}, attempt ${d.attempt}, deadline ${fmtWhen(d.deadlineAt)}`;
    case 'SaveStarted': return `${d.format}, ${d.channels} channel(s), direct IO ${d.directIo ? 'on' : 'off'}, RAM ${fmtBytes(d.ramBytes)}, VM was ${d.wasRunning ? 'running' : 'paused'} → ${d.imagePath}`;
    case 'RestoreStarted': return `${d.format} image ${d.imagePath} → VM ${d.vm.name}`;
    case 'SaveCompleted': return `${fmtBytes(d.bytes)} written, ${fmtBytes(d.blocks * 512)} allocated, ${fmtDuration(d.durationMs)} at ${fmtRate(d.throughputBytesPerSec)}, VM left ${d.vmState}${d.afterError ? ` (not as asked: ${d.afterError})` : ''}`;
    case 'RestoreCompleted': return `VM ${d.vm} ${d.vmState} after ${fmtDuration(d.durationMs)}${d.gate ? `, ${d.gate === 'quick' ? 'quick gate (unchanged since verified)' : 'full verification gate'}` : ''}`;
    case 'SaveFailed': case 'RestoreFailed': return `${d.stage} · ${d.code}: ${d.reason}${d.retryable ? ' (retryable)' : ''}${'vmResumed' in d ? `, VM ${d.vmResumed ? 'resumed' : 'not resumed'}` : ''}`;
    case 'SaveRejected': case 'RestoreRejected': return `${d.rule}${d.field ? ` (${d.field})` : ''}: ${d.message}`;
    case 'SaveRetrying': case 'RestoreRetrying': return `attempt ${d.attempt} in ${fmtDuration(d.delayMs)} after ${d.lastCode}`;
    case 'SaveCancelRequested': case 'RestoreCancelRequested': return d.reason;
    case 'SaveCancelled': case 'RestoreCancelled': return `${d.reason}${d.stage ? ` at ${d.stage}` : ''}`;
    case 'ImageVerified': case 'ImageRejected': {
      const n = (s) => d.checks.filter((c) => c.status === s).length;
      return `${d.checks.length} checks: ${n('pass')} pass, ${n('warn')} warn, ${n('fail')} fail, ${n('skip')} skip`;
    }
    default: return '';
  }
}
const toneOf = (type) => (/Failed|Rejected|Cancelled/.test(type) ? 'bad' : /Verified|Completed/.test(type) ? 'good' : '');

function renderDetail() {
  const job = detail.job;
  if (!job) return;
  const req = job.saveRequest;
  const facts = [
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
    ['duration', fmtDuration(durationOf(job))],
    ['throughput', job.result?.throughputBytesPerSec ? fmtRate(job.result.throughputBytesPerSec) : '—'],
    ['requested', job.requestedAt ? new Date(job.requestedAt).toLocaleString() : '—'],
  ];
  const body = [h('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))];

  if (job.status === 'running') {
    body.push(h('div', { class: 'bar', id: 'detail-progress' }, h('progress', { max: 1000 }), h('span')));
  }
  if (job.status === 'failed' && job.lastFailure) {
    const f = job.lastFailure;
    body.push(h('div', { class: 'problem' }, h('strong', {}, `failed at ${f.stage} (${f.code})`), h('div', {}, f.reason),
      h('div', {}, `${f.retryable ? 'retryable' : 'not retryable'}${f.vmResumed === undefined ? '' : ` · VM ${f.vmResumed ? 'resumed' : 'NOT resumed'}`}`)));
  }
  if (job.status === 'rejected' && job.rejection) {
    const r = job.rejection;
    body.push(h('div', { class: 'problem' }, h('strong', {}, `rejected: ${r.rule}${r.field ? ` (${r.field})` : ''}`), h('div', {}, r.message)));
  }
  if (job.checks?.length) {
    body.push(h('h3', {}, 'Verification'),
      h('table', { class: 'grid checks' },
        h('thead', {}, h('tr', {}, h('th', {}, 'check'), h('th', {}, 'status'), h('th', {}, 'detail'))),
        h('tbody', {}, job.checks.map((c) => h('tr', { 'data-check': c.name }, h('td', { class: 'mono' }, c.name), h('td', {}, badge(c.status)), h('td', {}, c.detail))))));
  }

  const events = [...detail.events.entries()].sort(([a], [b]) => a - b);
  const t0 = events.length ? Date.parse(events[0][1].at) : 0;
  body.push(h('h3', {}, `Timeline (${events.length} events)`),
    h('ol', { class: 'timeline' }, events.map(([seq, e]) =>
      h('li', { class: toneOf(e.type), 'data-seq': seq },
        h('div', {}, h('span', { class: 'what' }, e.type), ' ', h('span', { class: 'when' }, `${fmtClock(e.at)} · +${fmtDuration(Date.parse(e.at) - t0)} · #${seq} · ${e.source}`)),
        h('div', {}, summarize(e)),
        h('details', {}, h('summary', {}, 'event'), h('pre', {}, JSON.stringify(e, null, 2)))))));

  $('#detail-title').textContent = `${job.kind ?? 'job'} ${job.jobId}`;
  $('#detail-body').replaceChildren(...body);
  renderDetailProgress();
}

function renderDetailProgress() {
  const el = document.getElementById('detail-progress');
  if (el && detail.job) renderProgress(el, detail.job, view.progress.get(detail.job.jobId));
}

/* ---------- the live stream ---------- */

function setLive(state, text) {
  const el = $('#live');
  el.dataset.state = state;
  el.textContent = text ?? state;
}

const knownVms = new Set();

function onJobMessage({ seq, event, job }) {
  view.cursor = Math.max(view.cursor, seq);
  if (TERMINAL.has(job.status) || job.status === 'completed') view.progress.delete(job.jobId);
  applyJob(job);
  if (job.vm && !knownVms.has(job.vm) && knownVms.size < 500) {
    knownVms.add(job.vm);
    $('#vm-names').append(h('option', { value: job.vm }));
  }
  if (detail.jobId === job.jobId) {
    detail.events.set(seq, event);
    if (!detail.job || job.lastSeq >= detail.job.lastSeq) detail.job = job;
    if (!detail.loading) renderDetail();
  }
  if (event.type === 'SaveCompleted') {
    chart.completed.push({ t: Math.floor(Date.parse(event.at) / 1000), bytesPerSec: event.data.throughputBytesPerSec, jobId: job.jobId });
  }
  refreshCountsSoon();
  if (!/Requested$/.test(event.type)) refreshHostsSoon();
}

function onProgress(sample) {
  view.progress.set(sample.jobId, sample);
  if (view.els.has(sample.jobId)) markDirty(sample.jobId);
  if (detail.jobId === sample.jobId) renderDetailProgress();
}

let source;
function openStream() {
  source?.close();
  const es = (source = new EventSource(apiUrl('api/stream', { since: view.cursor })));
  es.addEventListener('open', () => setLive('live'));
  es.addEventListener('error', () => {
    // The EventSource retries by itself, resending the last id it saw; a refused or
    // failed request closes it for good, so start a new one from our own position.
    setLive('reconnecting', 'reconnecting…');
    if (es.readyState === EventSource.CLOSED && source === es) setTimeout(() => source === es && openStream(), 3000);
  });
  es.addEventListener('job', (m) => onJobMessage(JSON.parse(m.data)));
  es.addEventListener('progress', (m) => onProgress(JSON.parse(m.data)));
  es.addEventListener('throughput', (m) => chartAddLive(JSON.parse(m.data)));
}

/* ---------- controls ---------- */

function selectTab(tab) {
  view.tab = tab;
  view.offset = 0;
  for (const b of document.querySelectorAll('.tabs button')) b.setAttribute('aria-selected', String(b.dataset.tab === tab));
  if (tab !== 'all') $('#filters').state.value = '';
  reloadPage();
}

function wireControls() {
  for (const b of document.querySelectorAll('.tabs button')) b.addEventListener('click', () => selectTab(b.dataset.tab));
  const form = $('#filters');
  form.addEventListener('submit', (e) => e.preventDefault());
  form.state.addEventListener('change', () => {
    view.state = form.state.value;
    if (view.state && view.tab !== 'all') selectTab('all');
    else { view.offset = 0; reloadPage(); }
  });
  let typing;
  for (const name of ['vm', 'host']) {
    form[name].addEventListener('input', () => {
      clearTimeout(typing);
      typing = setTimeout(() => {
        view[name] = form[name].value.trim();
        view.offset = 0;
        reloadPage();
      }, 300);
    });
  }
  $('#prev').addEventListener('click', () => { view.offset = Math.max(0, view.offset - view.limit); reloadPage(); });
  $('#next').addEventListener('click', () => { view.offset += view.limit; reloadPage(); });
  $('#page-size').addEventListener('change', (e) => { view.limit = Number(e.target.value); view.offset = 0; reloadPage(); });
  $('#detail-close').addEventListener('click', closeDetail);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && detail.jobId) closeDetail(); });
  window.addEventListener('hashchange', openFromHash);
}

function openFromHash() {
  const m = /^#job=(.+)$/.exec(location.hash);
  if (m && decodeURIComponent(m[1]) !== detail.jobId) openDetail(decodeURIComponent(m[1]));
}

/** Durations of active jobs tick; everything else changes only when an event says so. */
function tick() {
  for (const job of view.rows) if (ACTIVE.has(job.status)) markDirty(job.jobId);
}

async function start() {
  wireControls();
  try {
    await loadPage();
  } catch (err) {
    setLive('reconnecting', err.status === 401 ? 'access token needed (?token=…)' : `failed: ${err.message}`);
    return;
  }
  openStream();
  loadHosts();
  refreshCounts();
  getJson('api/throughput').then(initChart, () => initChart({ live: [], completed: [] }));
  openFromHash();
  setInterval(tick, 1000);
}

start();
