/** DOM helpers. Text only: job data is never parsed as HTML. */

type Child = Node | string | number | null | undefined | false | Child[];
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

/** `h('td', { class: 'num' }, '42')`: an element with attributes (`on…` adds a listener) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = String(v);
    else if (typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of (children as unknown[]).flat(Infinity as 1)) {
    if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** The one element a selector names; the page's own markup, so its absence is a bug. */
export function $<E extends Element = HTMLElement>(sel: string): E {
  const el = document.querySelector<E>(sel);
  if (!el) throw new Error(`the page has no ${sel}`);
  return el;
}

/** Change text (and title) only when it differs, so unchanged cells cause no layout work. */
export function setText(el: HTMLElement, text: string, title?: string): void {
  if (el.textContent !== text) el.textContent = text;
  if (title !== undefined && el.title !== title) el.title = title;
}

export const badge = (status: string): HTMLSpanElement => h('span', { class: `badge ${status}` }, status);
