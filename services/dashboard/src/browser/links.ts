/** The header's links to the services' `/metrics` endpoints and to Grafana (`GET api/links`). */
import { getJson } from './api.ts';
import { $, h } from './dom.ts';

export interface LinksAnswer {
  grafana?: string;
  metrics: { name: string; url: string }[];
}

export async function loadLinks(): Promise<void> {
  const nav = $('#links');
  const links = await getJson<LinksAnswer>('api/links').catch(() => undefined);
  if (!links) return;
  const items: HTMLElement[] = [];
  if (links.grafana) items.push(h('a', { href: links.grafana, target: '_blank', rel: 'noopener noreferrer', title: 'the vmsave dashboard in Grafana' }, 'Grafana'));
  if (links.metrics.length) {
    items.push(
      h(
        'span',
        { class: 'metrics-links', title: 'Prometheus /metrics of each service' },
        'metrics:',
        ...links.metrics.map((m) => h('a', { href: m.url, target: '_blank', rel: 'noopener noreferrer' }, m.name)),
      ),
    );
  }
  nav.replaceChildren(...items);
}
