import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { dashboardPage } from './dashboard.ts';

test('the dashboard is one page with no external resource, its inline script and style allowed by hash only', () => {
  const page = dashboardPage();
  const html = page.body.toString('utf8');
  assert.match(html, /^<!doctype html>/);
  assert.doesNotMatch(html, /\b(src|href)=["']?(https?:)?\/\//i, 'nothing is loaded from elsewhere');
  assert.doesNotMatch(html, /\sstyle=|\son[a-z]+=/i, 'no inline style or handler attributes (the CSP would block them)');
  assert.doesNotMatch(html, /innerHTML|insertAdjacentHTML|document\.write/, 'API values reach the page as text only');
  const script = /<script>([\s\S]*?)<\/script>/.exec(html)![1]!;
  const csp = page.headers['content-security-policy']!;
  assert.ok(csp.includes(`'sha256-${createHash('sha256').update(script).digest('base64')}'`), csp);
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /connect-src 'self'/);
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(page.headers['content-type'], 'text/html; charset=utf-8');
});
