#!/usr/bin/env node
// postinstall: build ggml/libllama natively from the llama.cpp source node-llama-cpp ships, once
// per machine (cached by version and CPU), and extract the tokenizer vocabularies. Never fails the
// install: without a toolchain Strata falls back to the prebuilt portable binaries.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const r = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'libs/ggml/src/native-build.ts'), ...args], {
  stdio: 'inherit',
  cwd: root,
});
if (r.status !== 0 && args.includes('--strict')) process.exit(r.status ?? 1);
