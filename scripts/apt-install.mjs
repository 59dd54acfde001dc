// Installs Debian packages a script found missing: with apt-get as root, otherwise it says which
// command to run and exits 1. Shared by ensure-servers.mjs and ensure-browser.mjs.
import { spawnSync } from 'node:child_process';

/** Installs `missing` (nothing to do when empty); `what` names who needs them in the message. */
export function aptInstall(missing, what) {
  if (missing.length === 0) return;
  if (process.getuid?.() !== 0) {
    console.error(`${what} needs ${missing.join(' and ')}: sudo apt-get install -y ${missing.join(' ')}`);
    process.exit(1);
  }
  console.error(`installing ${missing.join(' ')} with apt-get…`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  for (const args of [['update', '-qq'], ['install', '-y', '-qq', '--no-install-recommends', ...missing]]) {
    const r = spawnSync('apt-get', args, { stdio: 'inherit', env });
    if (r.status !== 0) process.exit(r.status ?? 1);
  }
}
