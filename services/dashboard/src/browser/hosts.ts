/** The hosts panel: each executor, what its QEMU can do, its load and when it was last heard from. */
import { fmtBytes } from '@vmsave/jobs/view';
import { getJson } from './api.ts';
import { $, h } from './dom.ts';
import { fmtAgo } from './time.ts';
import type { HostRow, HostsAnswer } from './types.ts';

let hostsTimer: ReturnType<typeof setTimeout> | undefined;

export function refreshHostsSoon(): void {
  clearTimeout(hostsTimer);
  hostsTimer = setTimeout(loadHosts, 300);
}

export async function loadHosts(): Promise<void> {
  clearTimeout(hostsTimer);
  try {
    const { hosts, unscheduled } = await getJson<HostsAnswer>('api/hosts');
    renderHosts(hosts, unscheduled);
  } catch {
    // Shown as stale until the next refresh.
  } finally {
    hostsTimer = setTimeout(loadHosts, 5000);
  }
}

function renderHosts(hosts: HostRow[], unscheduled: number): void {
  const rows = hosts.map((x) => {
    const a = x.announcement;
    const used = x.running + x.queued;
    const load = x.limit ? h('span', { class: `load${used >= x.limit ? ' full' : ''}` }, h('i', { style: `width:${Math.min(100, (100 * used) / x.limit)}%` })) : null;
    const seen = x.lastHeartbeatAt ?? a?.at;
    const stale = !seen || Date.now() - Date.parse(seen) > 60_000;
    return h(
      'tr',
      { 'data-host': x.host },
      h('td', {}, x.host),
      h('td', { class: 'mono' }, a?.executorId ?? '—'),
      h('td', {}, a ? `${a.qemu.version} (${a.qemu.accel})` : '—'),
      h('td', {}, a ? [a.qemu.mappedRam ? 'sparse' : 'legacy only', a.qemu.directIo ? ', direct IO' : ''].join('') : '—'),
      h('td', { class: 'num' }, a ? fmtBytes(a.freeBytes) : '—'),
      h('td', { class: 'c-load' }, load, `${x.running} running + ${x.queued} queued / ${x.limit ?? '∞'}`),
      h('td', { class: 'num' }, a ? String(a.vms.length) : '—'),
      h('td', { class: stale ? 'stale' : '' }, fmtAgo(seen)),
    );
  });
  $('#hosts tbody').replaceChildren(...rows);
  $('#hosts-empty').hidden = hosts.length > 0;
  $('#unscheduled').textContent = unscheduled ? `${unscheduled} job(s) waiting for a host` : '';
  const running = hosts.reduce((n, x) => n + x.running, 0);
  const queued = hosts.reduce((n, x) => n + x.queued, 0);
  $('#summary').textContent = `${running} running · ${queued} queued · ${unscheduled} waiting · ${hosts.length} host(s)`;
  $('#host-names').replaceChildren(...hosts.map((x) => h('option', { value: x.host })));
}
