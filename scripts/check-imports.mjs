#!/usr/bin/env node
// Dependency walls (STYLE.md habit 1): services import libs, a lib never imports a service, no
// workspace package imports another in a cycle, and only libs/ggml imports koffi.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const pkgs = new Map(); // name -> { dir, kind, deps:Set }
for (const kind of ['libs', 'services']) {
  for (const d of readdirSync(join(root, kind))) {
    const pj = join(root, kind, d, 'package.json');
    try {
      const name = JSON.parse(readFileSync(pj, 'utf8')).name;
      pkgs.set(name, { dir: join(root, kind, d), kind, deps: new Set() });
    } catch { /* not a package */ }
  }
}
const errors = [];
function walk(dir, fn) {
  for (const n of readdirSync(dir)) {
    if (n === 'node_modules') continue;
    const p = join(dir, n);
    if (statSync(p).isDirectory()) walk(p, fn);
    else if (n.endsWith('.ts')) fn(p);
  }
}
for (const [name, pkg] of pkgs) {
  walk(pkg.dir, (file) => {
    const src = readFileSync(file, 'utf8');
    for (const m of src.matchAll(/(?:from|import)\s*\(?\s*'([^']+)'/g)) {
      const spec = m[1];
      const rel = relative(root, file);
      if (spec === 'koffi' && name !== '@strata/ggml') errors.push(`${rel}: imports koffi (only libs/ggml may)`);
      if (spec.startsWith('@strata/')) {
        const target = spec.split('/').slice(0, 2).join('/');
        const t = pkgs.get(target);
        if (!t) errors.push(`${rel}: imports unknown package ${target}`);
        else if (pkg.kind === 'libs' && t.kind === 'services') errors.push(`${rel}: a lib imports the service ${target}`);
        else if (target !== name) pkg.deps.add(target);
      }
      if (spec.startsWith('.') && relative(pkg.dir, join(dirname(file), spec)).startsWith('..')) {
        errors.push(`${rel}: relative import ${spec} leaves its package`);
      }
    }
  });
}
const state = new Map();
function visit(n, path) {
  if (state.get(n) === 'done') return;
  if (state.get(n) === 'active') { errors.push(`import cycle: ${[...path, n].join(' -> ')}`); return; }
  state.set(n, 'active');
  for (const d of pkgs.get(n)?.deps ?? []) visit(d, [...path, n]);
  state.set(n, 'done');
}
for (const n of pkgs.keys()) visit(n, []);
if (errors.length) {
  for (const e of errors) console.error(e);
  process.exit(1);
}
console.log(`import walls hold across ${pkgs.size} packages`);
