#!/usr/bin/env node
// Makes sure nats-server and redis-server (Debian's packages) are installed before the tests and
// `strata up` start private ones: as root it installs what is missing with apt-get; otherwise it
// says which command to run.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/local/sbin', '/usr/bin', '/usr/local/bin']);
const has = (bin) => dirs.some((d) => d && existsSync(`${d}/${bin}`));
const missing = [['nats-server', 'nats-server'], ['redis-server', 'redis-server']].filter(([bin]) => !has(bin)).map(([, pkg]) => pkg);
if (missing.length === 0) process.exit(0);
if (process.getuid?.() !== 0) {
  console.error(`strata needs ${missing.join(' and ')}: sudo apt-get install -y ${missing.join(' ')}`);
  process.exit(1);
}
console.error(`installing ${missing.join(' ')} with apt-get…`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
for (const args of [['update', '-qq'], ['install', '-y', '-qq', '--no-install-recommends', ...missing]]) {
  const r = spawnSync('apt-get', args, { stdio: 'inherit', env });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
