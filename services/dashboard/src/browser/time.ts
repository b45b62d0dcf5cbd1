/** Times for people, in the browser's own locale and clock (the shared formatters are `@vmsave/jobs/view`'s). */

export function fmtWhen(iso: string | undefined): string {
  if (!iso) return '—';
  const d = new Date(iso);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

export const fmtClock = (iso: string): string => new Date(iso).toISOString().slice(11, 23);

export function fmtAgo(iso: string | undefined): string {
  if (!iso) return 'never';
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
}
