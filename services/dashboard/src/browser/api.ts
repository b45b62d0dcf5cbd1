/** The dashboard's HTTP API as the page calls it. */

// A page opened with ?token= passes it on; the server also remembers it in a cookie.
const token = new URLSearchParams(location.search).get('token');

type Params = Record<string, string | number | undefined | null>;

export function apiUrl(path: string, params: Params = {}): string {
  const u = new URL(path, location.href);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '' && v !== null) u.searchParams.set(k, String(v));
  if (token) u.searchParams.set('token', token);
  return u.toString();
}

/** An answer other than 2xx, with the server's message and the HTTP status. */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

export async function getJson<T>(path: string, params?: Params): Promise<T> {
  const res = await fetch(apiUrl(path, params), { headers: { accept: 'application/json' } });
  const body = (await res.json().catch(() => ({}))) as { message?: string };
  if (!res.ok) throw new ApiError(body.message ?? `${res.status} ${res.statusText}`, res.status);
  return body as T;
}
