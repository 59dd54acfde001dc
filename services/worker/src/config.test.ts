import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError } from '@strata/config';
import { workerConfig } from './config.ts';

const STAGES = '0:4,4:8,8:12,12:16';
const layersOf = (argv: string[], env: Record<string, string> = {}) => workerConfig({ argv: ['--model', '/models/m.gguf', '--id', 'w', ...argv], env }).layers;

test('--stages gives a StatefulSet pod the range at the ordinal that ends its host name', () => {
  for (let i = 0; i < 4; i++) assert.equal(layersOf(['--stages', STAGES], { HOSTNAME: `strata-worker-${i}` }), STAGES.split(',')[i]);
  assert.equal(layersOf([], { STRATA_STAGES: STAGES, HOSTNAME: 'my-release-strata-worker-3' }), '12:16');
});

test('--ordinal (or STRATA_ORDINAL) wins over the host name; without --stages --layers is kept', () => {
  assert.equal(layersOf(['--stages', STAGES, '--ordinal', '1'], { HOSTNAME: 'strata-worker-3' }), '4:8');
  assert.equal(layersOf(['--stages', STAGES], { STRATA_ORDINAL: '2', HOSTNAME: 'strata-worker-0' }), '8:12');
  assert.equal(layersOf(['--layers', '2:6'], { HOSTNAME: 'strata-worker-1' }), '2:6');
  assert.equal(layersOf([], { HOSTNAME: 'strata-worker-1' }), undefined);
});

test('one StatefulSet holds several pipelines: pod N holds range N mod S of replica N div S, chaining only within it', () => {
  const place = (host: string, group?: string) => {
    const c = workerConfig({ argv: ['--model', '/models/m.gguf', '--id', 'w', '--stages', STAGES, ...(group ? ['--group', group] : [])], env: { HOSTNAME: host } });
    return `${c.layers} ${c.group}`;
  };
  assert.equal(place('strata-worker-main-0'), '0:4 #0');
  assert.equal(place('strata-worker-main-3'), '12:16 #0');
  assert.equal(place('strata-worker-main-4'), '0:4 #1');
  assert.equal(place('strata-worker-main-9', 'big'), '4:8 big#2');
  assert.equal(workerConfig({ argv: ['--model', '/m.gguf', '--id', 'w', '--layers', '0:4', '--group', 'g'], env: {} }).group, 'g', 'without --stages the group is kept');
});

test('bad stages, a negative ordinal or none at all, and --layers with --stages are refused', () => {
  const refused = (re: RegExp) => (e: unknown) => e instanceof ConfigError && re.test(e.message);
  assert.throws(() => layersOf(['--stages', '0:4,5:8'], { HOSTNAME: 'w-0' }), refused(/follow each other/));
  assert.throws(() => layersOf(['--stages', '1:4,4:8'], { HOSTNAME: 'w-0' }), refused(/from layer 0/));
  assert.throws(() => layersOf(['--stages', '0:4,4:4'], { HOSTNAME: 'w-0' }), refused(/follow each other/));
  assert.throws(() => layersOf(['--stages', STAGES, '--ordinal', '-1'], { HOSTNAME: 'x' }), refused(/ordinal -1/));
  assert.throws(() => layersOf(['--stages', STAGES], { HOSTNAME: 'worker' }), refused(/host name ending in -N, got 'worker'/));
  assert.throws(() => layersOf(['--stages', STAGES, '--layers', '0:4'], { HOSTNAME: 'w-0' }), refused(/not both/));
});

test('--kv-streams splits --ctx-size into --n-seq-max equal streams, or is refused', () => {
  const conf = (argv: string[]) => workerConfig({ argv: ['--model', '/models/m.gguf', '--id', 'w', ...argv], env: {} });
  const c = conf(['--kv-streams', 'true', '--ctx-size', '8192', '--n-seq-max', '16']);
  assert.equal(c.kvStreams, true);
  assert.equal(conf([]).kvStreams, false, 'one shared stream by default');
  assert.equal(conf(['--n-seq-max', '7']).nSeqMax, 7, 'any count without streams');
  const refused = (e: unknown) => e instanceof ConfigError && /equal streams/.test(e.message);
  assert.throws(() => conf(['--kv-streams', 'true', '--ctx-size', '4096', '--n-seq-max', '7']), refused);
  assert.throws(() => conf(['--kv-streams', 'true', '--ctx-size', '4096', '--n-seq-max', '512']), refused);
});
