#!/usr/bin/env node
// Lints proto/ with buf and regenerates it into a scratch folder: fails when the committed
// libs/wire/src/gen differs from what buf generates (STYLE habit 6: generated code is never edited).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (args) => {
  const r = spawnSync('npx', ['--no-install', 'buf', ...args], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
const files = (dir) => {
  const out = [];
  const walk = (d) => {
    for (const n of readdirSync(d)) {
      const p = join(d, n);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
};

run(['lint', 'proto']);
const scratch = mkdtempSync(join(tmpdir(), 'strata-proto-'));
try {
  run(['generate', '--output', scratch]);
  const fresh = join(scratch, 'libs/wire/src/gen');
  const committed = join(root, 'libs/wire/src/gen');
  const a = files(fresh), b = files(committed);
  const differ = [...new Set([...a, ...b])].filter((f) => !a.includes(f) || !b.includes(f) || !readFileSync(join(fresh, f)).equals(readFileSync(join(committed, f))));
  if (differ.length > 0) {
    console.error(`libs/wire/src/gen is not what buf generates from proto/ (run npm run proto): ${differ.join(', ')}`);
    process.exit(1);
  }
  console.log(`proto: buf lint clean, ${a.length} generated files up to date`);
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
