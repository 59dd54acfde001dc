// The dashboard page (GET /dashboard): dashboard.html, read once, served with a Content Security
// Policy that lets only its own inline script and style run and only the gateway be fetched. The
// page holds no data (it reads the admin API with the user's key), so it is served without one.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';

/** The page and the headers it is served with. */
export interface DashboardPage {
  body: Buffer;
  headers: Record<string, string>;
}

/** CSP source expressions ('sha256-…') of the contents of every `<tag>…</tag>` in `html`. */
function hashes(html: string, tag: 'script' | 'style'): string[] {
  const re = new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, 'g');
  return [...html.matchAll(re)].map((m) => `'sha256-${createHash('sha256').update(m[1]!, 'utf8').digest('base64')}'`);
}

/** Builds the page from `html` (default: dashboard.html beside this module). */
export function dashboardPage(html = readFileSync(new URL('./dashboard.html', import.meta.url), 'utf8')): DashboardPage {
  const body = Buffer.from(html, 'utf8');
  const csp = [
    "default-src 'none'", `script-src ${hashes(html, 'script').join(' ')}`, `style-src ${hashes(html, 'style').join(' ')}`,
    "connect-src 'self'", 'img-src data:', "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
  ].join('; ');
  return {
    body,
    headers: {
      'content-type': 'text/html; charset=utf-8', 'content-length': String(body.length), 'content-security-policy': csp,
      'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer', 'cache-control': 'no-cache',
    },
  };
}
