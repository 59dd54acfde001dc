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

test('bad stages, an ordinal outside them or none at all, and --layers with --stages are refused', () => {
  const refused = (re: RegExp) => (e: unknown) => e instanceof ConfigError && re.test(e.message);
  assert.throws(() => layersOf(['--stages', '0:4,5:8'], { HOSTNAME: 'w-0' }), refused(/follow each other/));
  assert.throws(() => layersOf(['--stages', '1:4,4:8'], { HOSTNAME: 'w-0' }), refused(/from layer 0/));
  assert.throws(() => layersOf(['--stages', '0:4,4:4'], { HOSTNAME: 'w-0' }), refused(/follow each other/));
  assert.throws(() => layersOf(['--stages', STAGES], { HOSTNAME: 'strata-worker-4' }), refused(/ordinal 4 is outside the 4 stages/));
  assert.throws(() => layersOf(['--stages', STAGES, '--ordinal', '-1'], { HOSTNAME: 'x' }), refused(/ordinal -1/));
  assert.throws(() => layersOf(['--stages', STAGES], { HOSTNAME: 'worker' }), refused(/host name ending in -N, got 'worker'/));
  assert.throws(() => layersOf(['--stages', STAGES, '--layers', '0:4'], { HOSTNAME: 'w-0' }), refused(/not both/));
});
