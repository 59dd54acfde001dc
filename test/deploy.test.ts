// The deployment files checked with the tools made for them, installed from package registries by
// scripts/ensure-deploy-tools.mjs into .tools/: helm lint and helm template on the chart's ci/
// values files, every rendered manifest validated strictly against the Kubernetes 1.33 JSON
// schemas (kubernetes-validate), ServiceMonitors decoded into prometheus-operator's types,
// docker-compose.yml loaded by compose-go, the Dockerfiles linted by hadolint. The services' own
// configuration code then reads what the chart and the compose file hand them.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer, type AddressInfo, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { envName, flagName, type Schema } from '@strata/config';
import { coordinatorSchema } from '@strata/coordinator';
import { gatewayConfig, gatewaySchema } from '@strata/gateway';
import { DEFAULT_MODEL, evenSplit, formatRange } from '@strata/model';
import { findBinary } from '@strata/local-servers';
import { FenceSigner, FenceVerifier, NATS_ROLES, natsPermissions } from '@strata/wire';
import { workerConfig, workerSchema } from '@strata/worker';

const root = join(import.meta.dirname, '..');
const chart = join(root, 'helm/strata');
const KUBE_VERSION = '1.33.0';
const NAMESPACE = 'strata';
const dir = mkdtempSync(join(tmpdir(), 'strata-deploy-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Tools { helm: string; deployCheck: string; kedaCrd: string; pythonPath: string; hadolint: string }
interface EnvVar { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string }; secretKeyRef?: { name: string; key: string } } }
interface Mount { name: string; mountPath: string; readOnly?: boolean }
interface Probe { httpGet?: { path: string; port: string }; tcpSocket?: { port: string }; exec?: { command: string[] } }
interface Container {
  name: string; args?: string[]; command?: string[]; env?: EnvVar[]; volumeMounts?: Mount[]; ports?: { name: string }[];
  livenessProbe?: Probe; readinessProbe?: Probe; startupProbe?: Probe;
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
}
interface Volume { name: string; secret?: { secretName: string; items?: { key: string; path: string }[] }; persistentVolumeClaim?: { claimName: string } }
interface PodSpec {
  containers: Container[]; initContainers?: Container[]; volumes?: Volume[]; nodeSelector?: Record<string, string>;
  tolerations?: { key?: string }[]; terminationGracePeriodSeconds?: number; securityContext?: { runAsNonRoot?: boolean };
}
interface Manifest {
  apiVersion: string; kind: string; metadata: { name: string };
  spec?: {
    replicas?: number; template?: { spec: PodSpec }; endpoints?: unknown[]; selector?: { matchLabels?: Record<string, string> }; maxUnavailable?: number;
    updateStrategy?: { rollingUpdate?: { maxUnavailable?: number } };
    scaleTargetRef?: { kind: string; name: string }; minReplicaCount?: number; maxReplicaCount?: number;
    triggers?: { type: string; name: string; metricType: string; metadata: { query: string; threshold: string; serverAddress: string } }[];
    advanced?: { horizontalPodAutoscalerConfig: { behavior: Record<'scaleUp' | 'scaleDown', { policies: { type: string; value: number }[] }> } };
  };
  data?: Record<string, string>; stringData?: Record<string, string>;
}

function run(cmd: string, args: string[], env: Record<string, string> = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: root, env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

// The tools: installed on the first run on a machine (minutes), then only looked at.
const ensure = run(process.execPath, [join(root, 'scripts/ensure-deploy-tools.mjs'), '--json']);
assert.equal(ensure.code, 0, ensure.stderr);
const tools = JSON.parse(ensure.stdout) as Tools;

/** Values files of helm/strata/ci, by short name. */
const CASES = { default: 'ci/default-values.yaml', gpu: 'ci/gpu-values.yaml', external: 'ci/external-values.yaml', single: 'ci/single-values.yaml', multi: 'ci/multi-values.yaml' } as const;
type Case = keyof typeof CASES;

function helmTemplate(...args: string[]): { code: number; stdout: string; stderr: string } {
  return run(tools.helm, ['template', 'strata', chart, '--namespace', NAMESPACE, '--kube-version', KUBE_VERSION, ...args]);
}

const rendered = {} as Record<Case, { file: string; docs: Manifest[] }>;
before(() => {
  for (const [name, values] of Object.entries(CASES) as [Case, string][]) {
    const r = helmTemplate('-f', join(chart, values));
    assert.equal(r.code, 0, `helm template -f ${values}: ${r.stderr}`);
    const file = join(dir, `${name}.yaml`);
    writeFileSync(file, r.stdout);
    const json = run(tools.deployCheck, ['json', file]);
    assert.equal(json.code, 0, json.stderr);
    rendered[name] = { file, docs: JSON.parse(json.stdout) as Manifest[] };
  }
});

const find = (c: Case, kind: string, name: string): Manifest => {
  const m = rendered[c].docs.find((d) => d.kind === kind && d.metadata.name === name);
  assert.ok(m, `${c}: no ${kind} ${name}`);
  return m;
};
const podOf = (m: Manifest): PodSpec => m.spec!.template!.spec;
const containerOf = (m: Manifest): Container => podOf(m).containers[0]!;
const envOf = (c: Container, name: string): EnvVar | undefined => c.env?.find((e) => e.name === name);

/**
 * The environment a container sees: literal values with Kubernetes' $(VAR) expansion, the pod's
 * name for metadata.name, `labels` for label fieldRefs (missing labels read as ''), and a
 * placeholder for secretKeyRefs.
 */
function podEnv(c: Container, pod: { name: string; namespace: string; labels: Record<string, string> }): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of c.env ?? []) {
    const path = e.valueFrom?.fieldRef?.fieldPath;
    const label = path && /^metadata\.labels\['(.+)'\]$/.exec(path)?.[1];
    if (e.value !== undefined) out[e.name] = e.value.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v: string) => out[v] ?? m);
    else if (path === 'metadata.name') out[e.name] = pod.name;
    else if (path === 'metadata.namespace') out[e.name] = pod.namespace;
    else if (label) out[e.name] = pod.labels[label] ?? '';
    else if (e.valueFrom?.secretKeyRef) out[e.name] = `secret:${e.valueFrom.secretKeyRef.name}/${e.valueFrom.secretKeyRef.key}`;
  }
  return out;
}

/** Every STRATA_* variable and --flag a service gets must be one its schema knows (unknown environment variables are otherwise ignored). */
function assertKnownSettings(where: string, schema: Schema, env: Record<string, string>, args: string[]): void {
  const envNames = new Set(Object.keys(schema).map(envName));
  // STRATA_<KEY>_FILE: the setting read from a file (@strata/config)
  for (const k of Object.keys(env)) if (k.startsWith('STRATA_')) assert.ok(envNames.has(k) || envNames.has(k.replace(/_FILE$/, '')), `${where}: ${k} is no setting of the service`);
  // --metrics-port and --metrics-host come with the telemetry work; a schema without them has not got it yet
  const flags = new Set([...Object.keys(schema).map(flagName), ...(schema.metricsPort ? [] : ['metrics-port', 'metrics-host'])]);
  for (const a of args) if (a.startsWith('--')) assert.ok(flags.has(a.slice(2).split('=')[0]!), `${where}: ${a} is no flag of the service`);
}

describe('helm chart', () => {
  it('helm lint --strict passes with every values file', () => {
    for (const values of Object.values(CASES)) {
      const r = run(tools.helm, ['lint', '--strict', '--kube-version', KUBE_VERSION, chart, '-f', join(chart, values)]);
      assert.equal(r.code, 0, `helm lint -f ${values}: ${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
    }
  });

  it('every rendered manifest validates strictly against the Kubernetes schemas; ServiceMonitors against prometheus-operator\'s types', () => {
    const validate = (file: string) => run('python3', ['-m', 'kubernetes_validate', '--strict', '-k', KUBE_VERSION, file], { PYTHONPATH: tools.pythonPath });
    for (const [name, { file, docs }] of Object.entries(rendered)) {
      const r = validate(file);
      assert.equal(r.code, 0, `${name}: ${r.stdout}${r.stderr}`);
      const passed = r.stdout.split('\n').filter((l) => l.startsWith('INFO') && l.includes('passed')).length;
      const monitors = docs.filter((d) => d.kind === 'ServiceMonitor').length;
      const scaled = docs.filter((d) => d.kind === 'ScaledObject').length;
      assert.equal(passed + monitors + scaled, docs.length, `${name}: every document is checked:\n${r.stdout}`);
      const sm = run(tools.deployCheck, ['servicemonitor', file]);
      assert.equal(sm.code, 0, sm.stderr);
      assert.match(sm.stdout, new RegExp(`^${monitors} ServiceMonitor`));
      // KEDA's ScaledObjects against the schema of KEDA's own definition, closed to unknown fields
      const so = run(tools.deployCheck, ['crd', tools.kedaCrd, file]);
      assert.equal(so.code, 0, so.stderr);
      assert.match(so.stdout, new RegExp(`^${scaled} ScaledObject`));
    }
    assert.equal(rendered.multi.docs.filter((d) => d.kind === 'ScaledObject').length, 1);
    const badScaler = join(dir, 'bad-scaler.yaml');
    writeFileSync(badScaler, readFileSync(rendered.multi.file, 'utf8').replace('minReplicaCount:', 'minReplicaCont:'));
    const rs = run(tools.deployCheck, ['crd', tools.kedaCrd, badScaler]);
    assert.notEqual(rs.code, 0);
    assert.match(rs.stderr, /minReplicaCont/);
    assert.equal(rendered.external.docs.filter((d) => d.kind === 'ServiceMonitor').length, 1);
    // strict really is strict: a field Kubernetes does not know fails
    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, readFileSync(rendered.default.file, 'utf8').replace('podManagementPolicy: Parallel', 'podManagementPolicy: Parallel\n  podManagmentPolicy: Parallel'));
    const r = validate(bad);
    assert.notEqual(r.code, 0);
    assert.match(r.stdout, /podManagmentPolicy/);
  });

  it('refuses values the schema or the stage check rejects', () => {
    const refused = (re: RegExp, ...args: string[]) => {
      const r = helmTemplate(...args);
      assert.notEqual(r.code, 0, `helm template ${args.join(' ')} passed`);
      assert.match(r.stderr, re);
    };
    refused(/does not match pattern/, '--set', 'worker.stages[0]=0-4');
    refused(/additional properties 'sttages'/, '--set', 'worker.sttages=1');
    refused(/must start where the previous one ends/, '--set', 'worker.stages={0:4,5:8}');
    refused(/pipeline b: stages 0:4,3:8/, '--set', 'pipelines[0].name=a', '--set', 'pipelines[1].name=b', '--set', 'pipelines[1].stages={0:4,3:8}');
    refused(/the name a is given twice/, '--set', 'pipelines[0].name=a', '--set', 'pipelines[1].name=a');
    refused(/does not match pattern/, '--set', 'pipelines[0].name=Big_Model');
    refused(/additional properties 'kvTyp'/, '--set', 'pipelines[0].name=a', '--set', 'pipelines[0].kvTyp=q8_0');
    refused(/the model id m names two files/, '--set', 'pipelines[0].name=a', '--set', 'pipelines[0].model.file=a.gguf', '--set', 'pipelines[0].model.id=m',
      '--set', 'pipelines[1].name=b', '--set', 'pipelines[1].model.file=b.gguf', '--set', 'pipelines[1].model.id=m');
    refused(/autoscaling reads Strata's metrics from Prometheus: it needs metrics.enabled/, '--set', 'worker.autoscaling.enabled=true');
    refused(/minReplicas \(5\) is above maxReplicas \(4\)/, '--set', 'metrics.enabled=true', '--set', 'worker.autoscaling.enabled=true', '--set', 'worker.autoscaling.minReplicas=5');
    refused(/nats.url is required/, '--set', 'nats.enabled=false');
    refused(/tls.existingSecret/, '--set', 'worker.tls.enabled=true');
    refused(/serviceMonitor.enabled needs metrics.enabled/, '--set', 'metrics.serviceMonitor.enabled=true');
    refused(/pipeline main: kvStreams makes nSeqMax \(48\) equal streams of ctxSize \(4096\)/, '--set', 'worker.kvStreams=true', '--set', 'worker.nSeqMax=48');
    refused(/pipeline a: kvStreams makes nSeqMax \(512\)/, '--set', 'pipelines[0].name=a', '--set', 'pipelines[0].kvStreams=true', '--set', 'pipelines[0].nSeqMax=512', '--set', 'pipelines[0].ctxSize=32768');
  });

  it('each worker pod computes its layer range from its ordinal, with or without the pod-index label', () => {
    const expected: Record<Exclude<Case, 'multi'>, string[]> = {
      default: ['0:4', '4:8'],
      gpu: ['0:8', '8:16', '16:24', '24:32'],
      external: evenSplit(12, 3).map(formatRange),
      single: ['0:4', '4:8'],
    };
    for (const c of Object.keys(expected) as (keyof typeof expected)[]) {
      const sts = find(c, 'StatefulSet', 'strata-worker-main');
      assert.equal(sts.spec!.replicas, expected[c].length, `${c}: one pod per stage`);
      const container = containerOf(sts);
      for (let i = 0; i < expected[c].length; i++) {
        const name = `strata-worker-main-${i}`;
        for (const labels of [{ 'apps.kubernetes.io/pod-index': String(i) }, {}] as Record<string, string>[]) {
          const env = { ...podEnv(container, { name, namespace: NAMESPACE, labels }), HOSTNAME: name };
          const w = workerConfig({ argv: [], env });
          assert.equal(w.layers, expected[c][i], `${c}: ${name} with labels ${JSON.stringify(labels)}`);
          assert.equal(w.id, name);
          assert.equal(w.group, 'main#0');
          assert.equal(w.grpcAdvertise, `${name}.strata-worker.${NAMESPACE}.svc.cluster.local:50051`);
          assert.equal(w.grpcHost, '0.0.0.0');
          assertKnownSettings(`${c} worker`, workerSchema, env, container.args!.slice(1));
        }
      }
      assert.deepEqual(container.args!.slice(0, 1), ['worker']);
    }
  });

  it('several pipeline groups and models: one StatefulSet per group, each pod a stage of a whole pipeline replica; the gateway serves every model', () => {
    const groups = [
      { name: 'llama-70b', stages: ['0:20', '20:40', '40:60', '60:80'], pipelines: undefined, model: ['/models/llama-3.1-70b-instruct-q4_k_m.gguf', 'llama-70b'], kvType: 'q8_0', role: 'both', gpu: true, pdb: 2 },
      { name: 'llama-8b', stages: ['0:32'], pipelines: 2, model: ['/models/llama-3.1-8b-instruct-q8_0.gguf', 'llama-8b'], kvType: 'q8_0', role: 'decode', gpu: true, pdb: 1, streams: [65536, 16] },
      { name: 'llama-8b-prefill', stages: ['0:16', '16:32'], pipelines: 1, model: ['/models/llama-3.1-8b-instruct-q8_0.gguf', 'llama-8b'], kvType: 'q8_0', role: 'prefill', gpu: true, pdb: 1 },
      { name: 'llama-8b-cpu', stages: ['0:16', '16:32'], pipelines: 1, model: ['/models/llama-3.1-8b-instruct-q8_0.gguf', 'llama-8b'], kvType: 'f16', role: 'both', gpu: false, pdb: 1 },
    ];
    const pods: Record<string, string[]> = {};
    for (const g of groups) {
      const sts = find('multi', 'StatefulSet', `strata-worker-${g.name}`);
      // autoscaled: the StatefulSet leaves replicas to KEDA's HPA (a helm upgrade must not undo it)
      assert.equal(sts.spec!.replicas, g.pipelines && g.pipelines * g.stages.length, `${g.name}: pipelines × stages`);
      assert.equal(sts.spec!.updateStrategy!.rollingUpdate!.maxUnavailable, g.stages.length, `${g.name}: a whole pipeline at a time`);
      assert.equal(sts.spec!.selector!.matchLabels!['strata/pipeline'], g.name);
      const c = containerOf(sts);
      assert.equal(c.resources!.requests!['nvidia.com/gpu'], g.gpu ? 1 : undefined, `${g.name}: GPU`);
      assert.equal(podOf(sts).initContainers, undefined, 'models from the claim: nothing to write');
      pods[g.name] = [];
      for (let i = 0; i < (g.pipelines ?? 16) * g.stages.length; i++) {
        const name = `strata-worker-${g.name}-${i}`;
        pods[g.name]!.push(name);
        const env = { ...podEnv(c, { name, namespace: NAMESPACE, labels: { 'apps.kubernetes.io/pod-index': String(i) } }), HOSTNAME: name };
        const w = workerConfig({ argv: [], env });
        assert.equal(w.layers, g.stages[i % g.stages.length], `${name}: its stage`);
        assert.equal(w.group, `${g.name}#${Math.floor(i / g.stages.length)}`, `${name}: chains with its replica's pods only`);
        assert.deepEqual([w.model, w.modelId, w.kvTypeName, w.role], [...g.model, g.kvType, g.role], `${name}: model, KV type and role`);
        assert.deepEqual([w.kvStreams, w.ctxSize, w.nSeqMax], g.streams ? [true, ...g.streams] : [false, g.name === 'llama-70b' ? 32768 : 16384, 64], `${name}: KV layout`);
        if (i === 0) assertKnownSettings(`multi ${g.name}`, workerSchema, env, c.args!.slice(1));
      }
      const pdb = find('multi', 'PodDisruptionBudget', `strata-worker-${g.name}`);
      assert.equal(pdb.spec!.maxUnavailable, g.pdb);
      assert.deepEqual(pdb.spec!.selector!.matchLabels, sts.spec!.selector!.matchLabels, `${g.name}: the budget covers exactly the group`);
    }
    const gw = containerOf(find('multi', 'Deployment', 'strata-gateway'));
    const gc = gatewayConfig({ argv: [], env: podEnv(gw, { name: 'strata-gateway-x', namespace: NAMESPACE, labels: {} }) });
    assert.deepEqual(gc.models, [{ id: 'llama-70b', path: '/models/llama-3.1-70b-instruct-q4_k_m.gguf' }, { id: 'llama-8b', path: '/models/llama-3.1-8b-instruct-q8_0.gguf' }]);

    // The autoscaler: whole pipelines of the 70B group (4 to 16), queries over exactly its pods.
    const so = find('multi', 'ScaledObject', 'strata-worker-llama-70b');
    assert.deepEqual(so.spec!.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'StatefulSet', name: 'strata-worker-llama-70b' });
    assert.deepEqual([so.spec!.minReplicaCount, so.spec!.maxReplicaCount], [16, 64]);
    const behavior = so.spec!.advanced!.horizontalPodAutoscalerConfig.behavior;
    for (const dir of ['scaleUp', 'scaleDown'] as const) assert.deepEqual(behavior[dir].policies.map((p) => [p.type, p.value]), [['Pods', 4]], `${dir}: one pipeline at a time`);
    const [load, kv] = so.spec!.triggers!;
    for (const t of [load!, kv!]) {
      assert.deepEqual([t.type, t.metricType, t.metadata.threshold], ['prometheus', 'AverageValue', '1'], 'a pod per unit of the query: the query counts pods');
      assert.match(t.metadata.query, /^4 \* ceil\(/, 'pods wanted are 4 × whole pipelines');
    }
    assert.match(load!.metadata.query, /sum\(strata_pipeline_load\{pipeline=~".*"\}\) or vector\(0\)\) \/ 16\)$/);
    assert.match(kv!.metadata.query, /sum\(strata_kv_cells_used\{worker=~".*"\}\) or vector\(0\)\) \/ 104857\.6\)$/, 'cells of 4 stages × 32768 at 0.8');
    // PromQL regexes match whole values: the group's pods and the pipelines made of them, no other group's
    const selector = (q: string) => new RegExp(`^(?:${/=~"(.*?)"\}/.exec(q)![1]!.replaceAll('\\\\', '\\')})$`);
    const [byPipeline, byWorker] = [selector(load!.metadata.query), selector(kv!.metadata.query)];
    for (const [name, list] of Object.entries(pods)) {
      for (const pod of list) {
        assert.equal(byWorker.test(pod), name === 'llama-70b', `kv trigger on ${pod}`);
        assert.equal(byPipeline.test(`${pod}~${pod}`), name === 'llama-70b', `load trigger on a pipeline of ${pod}`);
      }
    }
  });

  it('GPU workers request nvidia.com/gpu, select GPU nodes and tolerate their taint; CPU workers do not', () => {
    const gpu = find('gpu', 'StatefulSet', 'strata-worker-main');
    const c = containerOf(gpu);
    assert.equal(c.resources!.requests!['nvidia.com/gpu'], 1);
    assert.equal(c.resources!.limits!['nvidia.com/gpu'], 1);
    assert.equal(c.resources!.requests!.cpu, '4');
    assert.equal(envOf(c, 'STRATA_DEVICE')!.value, 'CUDA0');
    assert.deepEqual(podOf(gpu).nodeSelector, { 'node.kubernetes.io/instance-type': 'gpu-h100', 'nvidia.com/gpu.present': 'true' });
    assert.deepEqual(podOf(gpu).tolerations!.map((t) => t.key), ['dedicated', 'nvidia.com/gpu']);
    // a model from a claim: no init container, mounted read-only
    assert.equal(podOf(gpu).initContainers, undefined);
    assert.equal(podOf(gpu).volumes!.find((v) => v.name === 'models')!.persistentVolumeClaim!.claimName, 'strata-models');
    assert.equal(envOf(c, 'STRATA_MODEL')!.value, '/models/llama-3-8b-instruct-q8_0.gguf');
    const cpu = containerOf(find('default', 'StatefulSet', 'strata-worker-main'));
    assert.equal(cpu.resources!.requests!['nvidia.com/gpu'], undefined);
    assert.equal(podOf(find('default', 'StatefulSet', 'strata-worker-main')).nodeSelector, undefined);
  });

  it('every container has liveness and readiness probes on ports it opens; workers drain before they stop', () => {
    for (const c of Object.keys(CASES) as Case[]) {
      for (const m of rendered[c].docs.filter((d) => d.kind === 'Deployment' || d.kind === 'StatefulSet')) {
        const pod = podOf(m);
        assert.equal(pod.securityContext?.runAsNonRoot, true, `${c} ${m.metadata.name} runs as non-root`);
        for (const k of pod.containers) {
          const ports = new Set((k.ports ?? []).map((p) => p.name));
          for (const probe of [k.livenessProbe, k.readinessProbe]) {
            assert.ok(probe, `${c} ${m.metadata.name}/${k.name} has liveness and readiness probes`);
            const port = probe.httpGet?.port ?? probe.tcpSocket?.port;
            if (port) assert.ok(ports.has(port), `${c} ${m.metadata.name}: probe port ${port} is a container port`);
            const script = probe.exec?.command.find((a) => a.startsWith('/app/'));
            if (script) assert.ok(existsSync(join(root, script.slice('/app/'.length))), `${script} is in the image`);
          }
        }
      }
      const gw = containerOf(find(c, 'Deployment', 'strata-gateway'));
      assert.deepEqual([gw.livenessProbe!.httpGet!.path, gw.readinessProbe!.httpGet!.path], ['/healthz', '/readyz']);
      assert.deepEqual(containerOf(find(c, 'Deployment', 'strata-coordinator')).readinessProbe!.exec!.command, ['node', '/app/deploy/probe.mjs', 'connected']);
      const sts = find(c, 'StatefulSet', c === 'multi' ? 'strata-worker-llama-70b' : 'strata-worker-main');
      const w = containerOf(sts);
      assert.equal(w.startupProbe!.tcpSocket!.port, 'grpc');
      assert.match(w.lifecycle!.preStop!.exec!.command.join(' '), /node \/app\/bin\/strata\.mjs drain --force "\$STRATA_ID"/);
      assert.ok(podOf(sts).terminationGracePeriodSeconds! > 600, 'the grace period covers the drain\'s 600 s');
      assert.equal(find(c, 'Deployment', 'strata-coordinator').spec!.replicas, 2);
      for (const comp of ['gateway', 'coordinator', c === 'multi' ? 'worker-llama-70b' : 'worker-main']) find(c, 'PodDisruptionBudget', `strata-${comp}`);
      for (const comp of ['gateway', 'coordinator', 'worker']) find(c, 'NetworkPolicy', `strata-${comp}`);
    }
    const drain = readFileSync(join(root, 'services/cli/src/main.ts'), 'utf8');
    assert.match(drain, /case 'drain':/, 'the CLI has the drain command the preStop hook runs');
  });

  it('secrets reach the services as the files and variables their configuration reads', () => {
    /** The Secret and key behind a file path, through the container's mounts and the pod's volumes. */
    const secretFile = (m: Manifest, c: Container, path: string): string => {
      const mount = c.volumeMounts!.find((v) => path.startsWith(`${v.mountPath}/`));
      assert.ok(mount, `${path} is on a mounted volume`);
      const vol = podOf(m).volumes!.find((v) => v.name === mount.name)!;
      assert.ok(vol.secret, `${path} comes from a Secret`);
      const item = vol.secret.items!.find((i) => i.path === path.slice(mount.mountPath.length + 1));
      assert.ok(item, `${path} is an item of ${vol.secret.secretName}`);
      return `${vol.secret.secretName}/${item.key}`;
    };
    const gwDeploy = find('external', 'Deployment', 'strata-gateway');
    const gw = containerOf(gwDeploy);
    assert.equal(secretFile(gwDeploy, gw, envOf(gw, 'STRATA_API_KEYS_FILE')!.value!), 'strata-api-keys/keys.txt');
    const sts = find('external', 'StatefulSet', 'strata-worker-main');
    const w = containerOf(sts);
    assert.equal(secretFile(sts, w, envOf(w, 'STRATA_TRANSFER_TOKEN_FILE')!.value!), 'strata-transfer/token');
    for (const [k, key] of [['STRATA_GRPC_TLS_CERT', 'tls.crt'], ['STRATA_GRPC_TLS_KEY', 'tls.key'], ['STRATA_GRPC_TLS_CA', 'ca.crt']] as const) {
      assert.equal(secretFile(sts, w, envOf(w, k)!.value!), `strata-worker-tls/${key}`);
    }
    const wc = workerConfig({ argv: [], env: { ...podEnv(w, { name: 'strata-worker-main-0', namespace: NAMESPACE, labels: {} }), HOSTNAME: 'strata-worker-main-0' } });
    assert.equal(wc.grpcTlsMutual, true);
    assert.equal(wc.natsUrl, [0, 1, 2].map((i) => `nats://nats-${i}.nats.messaging.svc.cluster.local:4222`).join(','), 'a NATS cluster is every server\'s URL');
    const co = containerOf(find('external', 'Deployment', 'strata-coordinator'));
    assert.deepEqual(envOf(co, 'STRATA_REDIS_URL')!.valueFrom!.secretKeyRef, { name: 'strata-redis-url', key: 'url' });
    assert.deepEqual(co.args, ['coordinator', '--metrics-port', '9464', '--metrics-host', '0.0.0.0']);
    // external secrets are not made by the chart; the defaults make a random transfer token
    assert.equal(rendered.external.docs.filter((d) => d.kind === 'Secret').length, 0);
    const token = find('default', 'Secret', 'strata-transfer-token');
    assert.ok(Buffer.from(token.data!.token!, 'base64').length >= 16);
    const dsts = find('default', 'StatefulSet', 'strata-worker-main');
    assert.equal(secretFile(dsts, containerOf(dsts), envOf(containerOf(dsts), 'STRATA_TRANSFER_TOKEN_FILE')!.value!), 'strata-transfer-token/token');
    // Term keys: the private key to coordinators only, the certificate to workers and gateways.
    for (const c of ['default', 'external'] as const) {
      const secret = 'strata-term-keys'; // the chart's (default), the operator's of that name (external)
      const cod = find(c, 'Deployment', 'strata-coordinator');
      assert.equal(secretFile(cod, containerOf(cod), envOf(containerOf(cod), 'STRATA_TERM_KEY_FILE')!.value!), `${secret}/term.key`);
      for (const [kind, name] of [['StatefulSet', 'strata-worker-main'], ['Deployment', 'strata-gateway']] as const) {
        const m = find(c, kind, name);
        assert.equal(secretFile(m, containerOf(m), envOf(containerOf(m), 'STRATA_TERM_PUBLIC_KEY_FILE')!.value!), `${secret}/term.crt`);
        assert.ok(!podOf(m).volumes!.some((v) => v.secret?.items?.some((i) => i.key === 'term.key')), `${name} gets no private key`);
      }
    }
    const keys = find('default', 'Secret', 'strata-term-keys').stringData!;
    const signer = FenceSigner.fromPem(keys['term.key']!);
    assert.ok(FenceVerifier.fromPem(keys['term.crt']!).fence(4n, 2n, signer.fence(4n, 2n)), 'the chart\'s certificate verifies what its key signs');
    // The built-in Redis: an ACL file and the coordinators' URL from one Secret; the default user
    // off (one server here; with replicas, see below).
    const auth = find('single', 'Secret', 'strata-redis-auth').stringData!;
    const pw = auth.password!;
    assert.ok(pw.length >= 32);
    assert.equal(auth.url, `redis://strata-coordinator:${pw}@strata-redis:6379`);
    assert.equal(auth['users.acl'], `user default off ~* &* +@all\nuser strata-coordinator on >${pw} ~strata:* &* +@all -@dangerous +info\n`);
    assert.deepEqual(envOf(containerOf(find('default', 'Deployment', 'strata-coordinator')), 'STRATA_REDIS_URL')!.valueFrom!.secretKeyRef, { name: 'strata-redis-auth', key: 'url' });
    const rs = find('default', 'StatefulSet', 'strata-redis');
    const rargs = containerOf(rs).args!;
    assert.equal(secretFile(rs, containerOf(rs), rargs[rargs.indexOf('--aclfile') + 1]!), 'strata-redis-auth/users.acl');
    assert.deepEqual(rargs.slice(rargs.indexOf('--maxmemory-policy'), rargs.indexOf('--maxmemory-policy') + 2), ['--maxmemory-policy', 'volatile-lru']);
    assert.equal(envOf(containerOf(find('default', 'Deployment', 'strata-gateway')), 'STRATA_API_KEYS_FILE'), undefined);
    // keys given as values become a Secret the gateway reads
    const r = helmTemplate('--set', 'gateway.apiKeys.keys[0]=sk-one admin', '--set', 'gateway.apiKeys.keys[1]=sk-two user', '--show-only', 'templates/secrets.yaml');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /name: strata-api-keys[\s\S]*api-keys: \|\n {4}sk-one admin\n {4}sk-two user\n/);
  });

  it('the built-in NATS gives each role its own user, held to the subjects @strata/wire allows it; nats-server enforces them', async () => {
    const conf = find('default', 'ConfigMap', 'strata-nats-config').data!['nats.conf']!;
    const list = (xs: readonly string[]) => `[${xs.map((x) => JSON.stringify(x)).join(', ')}]`;
    for (const role of NATS_ROLES) {
      const line = conf.split('\n').find((l) => l.includes(`user: "strata-${role}"`));
      assert.ok(line, `a user for ${role}`);
      const p = natsPermissions(role);
      assert.ok(line.includes(`password: $${role.toUpperCase()}_PASSWORD,`), `${role}: the password comes from the environment`);
      assert.ok(line.includes(`publish: { allow: ${list(p.publish.allow)}, deny: ${list(p.publish.deny)} }`), `${role}: publish as in @strata/wire`);
      assert.ok(line.includes(`subscribe: { allow: ${list(p.subscribe.allow)}, deny: ${list(p.subscribe.deny)} }`), `${role}: subscribe as in @strata/wire`);
      assert.ok(line.includes(`allow_responses: ${p.allowResponses}`), `${role}: responses as in @strata/wire`);
    }
    assert.deepEqual(Object.keys(find('default', 'Secret', 'strata-nats-users').data!).sort(), [...NATS_ROLES].sort());
    for (const [kind, name, role] of [['Deployment', 'strata-gateway', 'gateway'], ['Deployment', 'strata-coordinator', 'coordinator'], ['StatefulSet', 'strata-worker-main', 'worker']] as const) {
      const env = podEnv(containerOf(find('default', kind, name)), { name: `${name}-0`, namespace: NAMESPACE, labels: {} });
      const servers = [0, 1, 2].map((i) => `nats://strata-${role}:secret:strata-nats-users/${role}@strata-nats-${i}.strata-nats-headless:4222`);
      assert.equal(env.STRATA_NATS_URL, servers.join(','), `${name} logs in as ${role} on every server of the cluster`);
    }
    // the cluster: each server routes to all three
    assert.match(conf, /cluster \{\n\s+name: strata\n\s+port: 6222\n\s+routes: \["nats-route:\/\/strata-nats-0\.strata-nats-headless\.strata\.svc:6222", "nats-route:\/\/strata-nats-1[^\]]+strata-nats-2[^\]]+\]/);
    // The real nats-server takes the rendered file (on a free port, without the monitoring port).
    const port = await new Promise<number>((resolve) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const p = (srv.address() as AddressInfo).port;
        srv.close(() => resolve(p));
      });
    });
    const confFile = join(dir, 'nats.conf');
    // (the route port too, on loopback: the routes to other servers only fail to resolve here)
    writeFileSync(confFile, conf.replace(/^port: .*$/m, `port: ${port}`).replace(/^http_port: .*$/m, '').replace(/^( +)port: 6222$/m, `$1listen: "127.0.0.1:${port + 1}"`).replace(/^/, 'host: "127.0.0.1"\n'));
    const passwords = Object.fromEntries(NATS_ROLES.map((r) => [`${r.toUpperCase()}_PASSWORD`, `pw-${r}-0123456789`]));
    const server = spawn(findBinary('nats-server'), ['-c', confFile], { env: { ...process.env, ...passwords }, stdio: 'ignore' });
    try {
      const { connect: natsConnect } = await import('nats');
      const login = async (role: string, password: string) => {
        for (let i = 0; ; i++) {
          try {
            return await natsConnect({ servers: `nats://127.0.0.1:${port}`, user: `strata-${role}`, pass: password, maxReconnectAttempts: 0 });
          } catch (err) {
            if (i > 50 || /Authorization/i.test((err as Error).message)) throw err;
            await new Promise((r) => setTimeout(r, 100));
          }
        }
      };
      const nc = await login('gateway', 'pw-gateway-0123456789');
      let error = '';
      void (async () => {
        for await (const st of nc.status()) if (st.type === 'error') error = String(st.data);
      })();
      nc.publish('strata.v1.worker.step.w0', new Uint8Array(1));
      await nc.flush();
      await new Promise((r) => setTimeout(r, 300));
      assert.match(error, /Permissions Violation|PERMISSIONS_VIOLATION/i, 'a gateway may not send a worker a step');
      await nc.close();
      await assert.rejects(login('worker', 'pw-gateway-0123456789'), /Authorization/i, 'each role has its own password');
    } finally {
      server.kill();
    }
  });

  it('runs NATS as a cluster and Redis with replicas behind sentinels by default; single servers on request', () => {
    const replicas = (c: Case, name: string) => find(c, 'StatefulSet', name).spec!.replicas;
    assert.deepEqual([replicas('default', 'strata-nats'), replicas('default', 'strata-redis'), replicas('default', 'strata-sentinel')], [3, 3, 3]);
    assert.deepEqual([replicas('single', 'strata-nats'), replicas('single', 'strata-redis')], [1, 1]);
    assert.equal(rendered.single.docs.some((d) => d.metadata.name === 'strata-sentinel'), false);
    // coordinators find the primary through the sentinels, with their own ACL user
    const auth = find('default', 'Secret', 'strata-redis-auth');
    const text = (k: string) => auth.stringData?.[k] ?? Buffer.from(auth.data![k]!, 'base64').toString();
    assert.match(text('url'), /^redis-sentinel:\/\/strata-coordinator:[A-Za-z0-9]{32}@strata-sentinel-0\.strata-sentinel-headless:26379,strata-sentinel-1\.strata-sentinel-headless:26379,strata-sentinel-2\.strata-sentinel-headless:26379\/strata$/);
    assert.match(text('users.acl'), /^user strata-replication on >[A-Za-z0-9]{32} \+psync \+replconf \+ping$/m);
    assert.match(text('users.acl'), /^user strata-sentinel on >[A-Za-z0-9]{32} allchannels .*\+role/m);
    // every server and sentinel asks the sentinels for the primary before it starts
    const start = find('default', 'ConfigMap', 'strata-redis-start').data!;
    for (const script of ['redis-start.sh', 'sentinel-start.sh']) assert.match(start[script]!, /SENTINEL get-master-addr-by-name strata/, script);
    assert.match(start['sentinel-start.sh']!, /sentinel monitor strata \$PRIMARY 6379 2/);
    assert.deepEqual(containerOf(find('default', 'StatefulSet', 'strata-redis')).command, ['sh', '/etc/redis-start/redis-start.sh']);
    // one unavailable at a time for each
    for (const name of ['strata-nats', 'strata-redis', 'strata-sentinel']) assert.equal(find('default', 'PodDisruptionBudget', name).spec!.maxUnavailable, 1, name);
  });

  it('the gateway and coordinator get only settings they know, and the gateway listens on its probed port', () => {
    for (const c of Object.keys(CASES) as Case[]) {
      const gw = containerOf(find(c, 'Deployment', 'strata-gateway'));
      const genv = podEnv(gw, { name: 'strata-gateway-x', namespace: NAMESPACE, labels: {} });
      assertKnownSettings(`${c} gateway`, gatewaySchema, genv, gw.args!.slice(1));
      assert.equal(genv.STRATA_HOST, '0.0.0.0');
      const co = containerOf(find(c, 'Deployment', 'strata-coordinator'));
      const cenv = podEnv(co, { name: 'strata-coordinator-x', namespace: NAMESPACE, labels: {} });
      assertKnownSettings(`${c} coordinator`, coordinatorSchema, cenv, co.args!.slice(1));
      assert.equal(cenv.STRATA_ID, 'strata-coordinator-x');
    }
  });
});

describe('docker-compose.yml', () => {
  interface ComposeService {
    image?: string; command?: string[] | null; entrypoint?: string[] | null; environment?: Record<string, string | null>;
    healthcheck?: { test: string[] }; depends_on?: Record<string, { condition: string }>; volumes?: { source: string; target: string; read_only?: boolean; volume?: { subpath?: string } }[];
    ports?: { target: number; published: string }[];
  }
  let services: Record<string, ComposeService>;

  it('is a valid Compose project (compose-go: the spec\'s schema and the services\' references)', () => {
    const r = run(tools.deployCheck, ['compose', join(root, 'docker-compose.yml')]);
    assert.equal(r.code, 0, r.stderr);
    services = (JSON.parse(r.stdout) as { services: Record<string, ComposeService> }).services;
    assert.deepEqual(Object.keys(services).sort(), ['coordinator', 'gateway', 'model', 'nats', 'redis', 'secrets', 'worker-0', 'worker-1']);
  });

  it('runs persistent Redis, health checks, and two workers splitting the default model that the model service writes', () => {
    const redis = services.redis!;
    assert.deepEqual(redis.command, ['redis-server', '/etc/redis/redis.conf', '--appendonly', 'yes', '--appendfsync', 'everysec', '--maxmemory', '512mb', '--maxmemory-policy', 'volatile-lru']);
    assert.deepEqual(redis.volumes!.map((v) => `${v.source}:${v.target}`), ['redis-data:/data', 'secrets:/etc/redis']);
    for (const [name, s] of Object.entries(services)) if (name !== 'model' && name !== 'secrets') assert.ok(s.healthcheck?.test.length, `${name} has a health check`);
    // the model service writes exactly what ensureDefaultModel would, under the same name
    const m = DEFAULT_MODEL;
    const file = `/models/default-${m.arch}-${m.nLayer}x${m.nEmbd}-s${m.seed}-${m.type}.gguf`;
    const script = services.model!.command!.join(' ');
    const flags = Object.fromEntries([...script.matchAll(/--([a-z-]+) (\S+)/g)].map((x) => [x[1]!, x[2]!]));
    assert.deepEqual(flags, {
      out: '"$STRATA_MODEL.tmp"', arch: m.arch, 'n-layer': String(m.nLayer), 'n-embd': String(m.nEmbd), 'n-head': String(m.nHead),
      'n-head-kv': String(m.nHeadKv), 'n-ff': String(m.nFf), 'n-ctx-train': String(m.nCtxTrain), seed: String(m.seed), type: m.type,
    });
    assert.match(script, /^test -f "\$STRATA_MODEL" \|\|/);
    const layers: string[] = [];
    for (const name of ['model', 'coordinator', 'worker-0', 'worker-1', 'gateway']) {
      const s = services[name]!;
      const reads = name !== 'coordinator';
      assert.equal(s.environment!.STRATA_MODEL, reads ? file : undefined, `${name} reads the default model`);
      assert.deepEqual((s.volumes ?? []).filter((v) => v.source !== 'secrets').map((v) => `${v.source}:${v.target}`), reads ? ['models:/models'] : []);
      const schema = name.startsWith('worker') ? workerSchema : name === 'gateway' ? gatewaySchema : name === 'coordinator' ? coordinatorSchema : null;
      const env = Object.fromEntries(Object.entries(s.environment!).map(([k, v]) => [k, v ?? '']));
      if (schema) assertKnownSettings(`compose ${name}`, schema, env, []);
      // (the secret files exist only in the containers: read without them)
      if (name.startsWith('worker')) layers.push(workerConfig({ argv: [], env: Object.fromEntries(Object.entries(env).filter(([k]) => !k.endsWith('_URL_FILE'))) }).layers!);
    }
    assert.deepEqual(layers, evenSplit(m.nLayer, 2).map(formatRange));
    const after = (name: string) => Object.fromEntries(Object.entries(services[name]!.depends_on ?? {}).map(([k, v]) => [k, v.condition]));
    const workerDeps = { nats: 'service_healthy', model: 'service_completed_successfully' };
    assert.deepEqual(after('nats'), { secrets: 'service_completed_successfully' });
    assert.deepEqual(after('redis'), { secrets: 'service_completed_successfully' });
    assert.deepEqual(after('coordinator'), { nats: 'service_healthy', redis: 'service_healthy' });
    assert.deepEqual([after('worker-0'), after('worker-1')], [workerDeps, workerDeps]);
    assert.deepEqual(after('gateway'), { coordinator: 'service_healthy', model: 'service_completed_successfully' });
    assert.deepEqual(services.gateway!.ports!.map((p) => [p.published, p.target]), [['8080', 8080]]);
  });
  it('makes its credentials once and gives each service only its own part: NATS users, Redis\'s ACL user, the term keys', () => {
    assert.deepEqual(services.secrets!.command, ['secrets', '--dir', '/secrets', '--nats-host', 'nats:4222', '--redis-host', 'redis:6379']);
    const part = (name: string) => services[name]!.volumes!.filter((v) => v.source === 'secrets').map((v) => `${v.volume?.subpath ?? '/'}:${v.target}:${v.read_only ? 'ro' : 'rw'}`);
    assert.deepEqual(part('nats'), ['nats:/etc/nats:ro']);
    assert.deepEqual(part('redis'), ['redis:/etc/redis:ro']);
    assert.deepEqual(part('coordinator'), ['coordinator:/run/strata:ro']);
    for (const w of ['worker-0', 'worker-1']) assert.deepEqual(part(w), ['worker:/run/strata:ro']);
    assert.deepEqual(part('gateway'), ['gateway:/run/strata:ro']);
    assert.deepEqual(services.nats!.command, ['-c', '/etc/nats/nats.conf']);
    const env = (name: string) => services[name]!.environment!;
    for (const name of ['coordinator', 'worker-0', 'worker-1', 'gateway']) {
      assert.equal(env(name).STRATA_NATS_URL_FILE, '/run/strata/nats-url', `${name} logs in to NATS as its role`);
      assert.equal(env(name).STRATA_NATS_URL, undefined, `${name}: no URL in the file itself`);
    }
    assert.equal(env('coordinator').STRATA_REDIS_URL_FILE, '/run/strata/redis-url');
    assert.equal(env('coordinator').STRATA_TERM_KEY_FILE, '/run/strata/term.key');
    for (const name of ['worker-0', 'worker-1', 'gateway']) assert.equal(env(name).STRATA_TERM_PUBLIC_KEY_FILE, '/run/strata/term.pub');
  });
});

describe('Dockerfiles', () => {
  const files = ['deploy/Dockerfile', 'deploy/Dockerfile.cuda'];

  it('pass hadolint', () => {
    const r = run(tools.hadolint, ['--config', join(root, 'deploy/.hadolint.yaml'), ...files.map((f) => join(root, f))]);
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
  });

  it('are multi-stage, run as a non-root user and start the strata command', () => {
    for (const f of files) {
      const text = readFileSync(join(root, f), 'utf8').replace(/\\\n/g, ' ');
      const stages = text.split(/^FROM /m).slice(1);
      assert.ok(stages.length >= 2, `${f} has a build stage`);
      const last = stages.at(-1)!;
      assert.match(last, /^USER 1000:1000$/m, `${basename(f)} runs as uid 1000`);
      assert.match(last, /^ENTRYPOINT \["node", "\/app\/bin\/strata\.mjs"\]$/m);
      assert.doesNotMatch(last, /apt-get install[^&]*\b(g\+\+|cmake|git)\b/, `${f}: no toolchain in the runtime image`);
    }
    // what the images copy and run is in the build context
    const ignore = readFileSync(join(root, '.dockerignore'), 'utf8');
    for (const p of ['!bin/', '!libs/', '!services/', '!scripts/', '!package-lock.json', '!deploy/probe.mjs']) assert.ok(ignore.includes(p), `.dockerignore keeps ${p}`);
  });
});

describe('deploy/probe.mjs', () => {
  const probe = (...args: string[]) => run(process.execPath, [join(root, 'deploy/probe.mjs'), ...args], { STRATA_NATS_URL: '', STRATA_REDIS_URL: '' });
  let tcp: Server;
  let port = 0;
  before(async () => {
    tcp = createServer(() => undefined);
    await new Promise<void>((resolve) => tcp.listen(0, '127.0.0.1', resolve));
    port = (tcp.address() as AddressInfo).port;
  });
  after(() => tcp.close());

  it('tcp and http say whether something listens and answers 2xx', async () => {
    assert.equal(probe('tcp', String(port)).code, 0);
    const http = createHttpServer((req, res) => res.writeHead(req.url === '/healthz' ? 200 : 503).end());
    await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
    const hport = String((http.address() as AddressInfo).port);
    try {
      const [ok, down] = await Promise.all([probeAsync('http', hport, '/healthz'), probeAsync('http', hport, '/readyz')]);
      assert.deepEqual([ok, down], [0, 1]);
    } finally {
      http.close();
    }
    tcp.close();
    assert.equal(probe('tcp', String(port)).code, 1);
    assert.equal(probe('http').code, 2);
  });

  it('connected holds when a connection to each URL\'s port is established', async () => {
    const server = createServer(() => undefined);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const p = (server.address() as AddressInfo).port;
    const sock = connect(p, '127.0.0.1');
    await new Promise((resolve) => sock.once('connect', resolve));
    try {
      assert.equal(await probeAsync('connected', `nats://user:pw@a:${p},nats://b:1`, `redis://:pw@c:${p}/0`), 0);
      assert.equal(await probeAsync('connected', `nats://a:${p}`, 'redis://c:1'), 1);
    } finally {
      sock.destroy();
      server.close();
    }
  });

  /** The probe in a child process while this one keeps serving (spawnSync would block the servers); its exit code. */
  function probeAsync(...args: string[]): Promise<number> {
    return new Promise((resolve) => {
      spawn(process.execPath, [join(root, 'deploy/probe.mjs'), ...args], { stdio: 'ignore' }).on('exit', (code) => resolve(code ?? -1));
    });
  }
});
